"""`temsynth` command line: parse, call a library function, print.

The top layer: it imports `generators/` and `training/`; neither imports it. Every error meant for the user
derives from `temsynth.errors.TemsynthError`, the one class caught here.
"""
from __future__ import annotations

import argparse
import json
import sys

from generators.cluster import add_cluster_arguments, cluster_from_args, job_script
from generators.config import from_dict, load_config, load_preset, preset_names
from generators.info import report
from generators.files import source_digest
from generators.run import RunError, generate, load_manifest, regenerate_records
from generators.subsets import query_summary, save_named_subset, trace, write_subset
from .errors import TemsynthError


def _load_cfg(args):
    if bool(args.preset) == bool(args.config):
        raise SystemExit("temsynth generate: give exactly one of --preset NAME or --config FILE")
    return load_preset(args.preset) if args.preset else load_config(args.config)


def cmd_generate(args) -> int:
    cfg = _load_cfg(args)
    if args.structures is not None:
        cfg = cfg.model_copy(update={"n_structures": args.structures})
        cfg = from_dict(cfg.model_dump(mode="json"), "command line")
    cluster = cluster_from_args(args, {"workers": 2})
    if args.job_script:
        print(job_script(cluster))
        return 0
    generate(cfg, args.out, progress=not args.quiet, cluster=cluster)
    return 0


def cmd_info(args) -> int:
    text, intact = report(args.dataset, args.verify)
    print(text)
    return 0 if intact else 1


def cmd_query(args) -> int:
    summary = query_summary(args.dataset, args.expr)
    print(json.dumps(summary, indent=2))
    if args.save_as:
        save_named_subset(args.dataset, args.save_as, args.expr)
        print(f'saved as config {args.save_as!r}: load_dataset("{args.dataset}", "{args.save_as}")')
    if args.out:
        m = write_subset(args.dataset, args.expr, args.out)
        print(f"wrote {m['n_records']} records to {args.out} (parent fingerprint {m['parent']['fingerprint'][:12]}…)")
    return 0


def cmd_trace(args) -> int:
    print(json.dumps(trace(args.dataset, args.record_id), indent=2, default=str))
    return 0


def cmd_regenerate(args) -> int:
    ids = None if args.all else args.record_ids
    if not ids and not args.all:
        raise RunError("name one or more record ids (e.g. s000003-c001), or pass --all")
    n = differ = 0
    for r in regenerate_records(args.dataset, ids):
        n += 1
        same = r["image_identical"] and r["mask_identical"]
        differ += not same
        if len(ids or []) == 1:
            print(json.dumps(r, indent=2))
        print(f"{r['record_id']}: identical: image and mask match the stored record bit for bit" if same else
              f"{r['record_id']}: DIFFERENT: largest image difference {r['image_max_abs_diff']} counts, "
              f"{r['mask_pixels_differing']} mask pixels")
    if n > 1:
        print(f"{n - differ} of {n} records identical" + (f", {differ} DIFFERENT" if differ else ""))
    if differ:
        made_by = load_manifest(args.dataset).get("versions", {}).get("temsynth_source_sha256")
        if made_by != source_digest():
            print(f"note: {args.dataset} was made by other generator code (source {str(made_by)[:12]}, this is "
                  f"{source_digest()[:12]}): changed code, not chance, may explain the differences")
    return 0 if differ == 0 else 1


# The training verbs import `training/` when they run, not at start-up: it loads torch (about 1.5 s), which the
# generation verbs (`generate`, `info`, `query`, ...) never need. A start-up cost, not a cycle: nothing below imports
# this module.
def cmd_predict(args) -> int:
    from training.predict import predict_file

    print(json.dumps(predict_file(args.model, args.image, args.out, args.pixel_size_A, args.tta), indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from training.predict import evaluate

    print(json.dumps(evaluate(args.model, args.dataset, args.query, args.split, args.batch_size, args.tables),
                     indent=2))
    return 0


def cmd_measure(args) -> int:
    from training.measure import run

    result = run(args.model, args.images, args.out, args.pixel_size_A, args.pixel_sizes, args.include_border,
                 args.tta)
    print(json.dumps({"out": result["out"], "overall": result["overall"]}, indent=2, default=str))
    return 0


def cmd_presets(args) -> int:
    print("\n".join(preset_names()))
    return 0


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="temsynth", description="Synthetic HRTEM nanoparticle datasets")
    sub = p.add_subparsers(dest="verb", required=True)
    g = sub.add_parser("generate", help="build a dataset folder from a preset or a YAML config")
    g.add_argument("--preset", help="built-in config: see `temsynth presets`")
    g.add_argument("--config", help="YAML generation config")
    g.add_argument("--out", required=True, help="output dataset folder (re-running the same command resumes)")
    g.add_argument("--structures", type=int, help="override n_structures")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cluster_arguments(g, "2")
    g.set_defaults(func=cmd_generate)
    i = sub.add_parser("info", help="summary of a dataset folder")
    i.add_argument("dataset")
    i.add_argument("--verify", action="store_true", help="check every shard's SHA-256 against the manifest")
    i.set_defaults(func=cmd_info)
    sub.add_parser("presets", help="list built-in configs").set_defaults(func=cmd_presets)
    q = sub.add_parser("query", help="count and describe the records a metadata query selects")
    q.add_argument("dataset")
    q.add_argument("expr", help="e.g. \"defect_type in ('twin', 'mixed') and -20 <= defocus_nm <= 20\"")
    q.add_argument("--out", help="write the subset as its own dataset folder")
    q.add_argument("--save-as", help="store the query as a named config of the dataset card")
    q.set_defaults(func=cmd_query)
    t = sub.add_parser("trace", help="full provenance of one record")
    t.add_argument("dataset")
    t.add_argument("record_id")
    t.set_defaults(func=cmd_trace)
    r = sub.add_parser("regenerate", help="rebuild records and compare them with the stored ones, bit for bit")
    r.add_argument("dataset")
    r.add_argument("record_ids", nargs="*", metavar="record_id")
    r.add_argument("--all", action="store_true", help="every record of the folder")
    r.set_defaults(func=cmd_regenerate)
    pr = sub.add_parser("predict", help="segment one micrograph (TIFF, PNG, NumPy, DM3/DM4, EMD, MRC) with a model")
    pr.add_argument("model", help="model folder, e.g. runs/demo/model")
    pr.add_argument("image")
    pr.add_argument("--out", help="mask file: .png or .tif (0/255) or .npy (0/1)")
    pr.add_argument("--pixel-size-A", type=float, help="pixel size of the image if the file carries none "
                    "(it is resampled to the model's)")
    pr.add_argument("--tta", action="store_true", help="average over the field's 8 rotations and mirror images "
                    "(8x slower; about +0.01 Dice on the real set)")
    pr.set_defaults(func=cmd_predict)
    me = sub.add_parser("measure", help="particle sizes, counts and coverage of micrographs: tables, summary, "
                        "histogram, outlined overlays")
    me.add_argument("model", help="model folder (an instance model separates touching particles)")
    me.add_argument("images", nargs="+", metavar="MICROGRAPH")
    px = me.add_mutually_exclusive_group()
    px.add_argument("--pixel-size-A", type=float, help="one pixel size for every micrograph (else the files' own)")
    px.add_argument("--pixel-sizes", help="CSV with columns file,pixel_size_A: one row per micrograph")
    me.add_argument("--out", required=True, help="new folder for the tables and figures")
    me.add_argument("--include-border", action="store_true", help="count particles touching the field's border "
                    "in the size statistics")
    me.add_argument("--tta", action="store_true", help="average over the field's 8 rotations and mirror images")
    me.set_defaults(func=cmd_measure)
    ev = sub.add_parser("evaluate", help="Dice/IoU of a model on a dataset folder, as JSON")
    ev.add_argument("model")
    ev.add_argument("dataset")
    ev.add_argument("query", nargs="?", help="metadata query narrowing the records")
    ev.add_argument("--split", default="test")
    ev.add_argument("--batch-size", type=_positive_int, default=16)
    ev.add_argument("--tables", metavar="DIR", help="also write the per-particle and per-record tables of "
                    "`measure` into this new folder, the predicted particles beside the true ones")
    ev.set_defaults(func=cmd_evaluate)
    st = sub.add_parser("study", help="`study run STUDY.yaml` (subsets x seeds x fine-tuning on Dask), "
                        "`study report STUDY_DIR`", add_help=False)
    st.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["study"]:  # its own parser, so that `temsynth study run --help` reaches it
        from training.study import main as study_main  # torch: see cmd_predict

        return study_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TemsynthError as err:
        print(f"temsynth {args.verb}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
