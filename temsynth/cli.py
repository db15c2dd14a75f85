"""`temsynth` command line: parse, call a library function, print.

The top layer: it imports `generators/` and `training/`; neither imports it. Every error meant for the user
derives from `generators.errors.TemsynthError`, the one class caught here.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from typing import Callable

from generators.cluster import add_cluster_arguments, cluster_from_args, job_script
from generators.config import default_config, from_dict, load_config, load_preset, preset_names
from generators.dataset import DatasetFolder
from generators.errors import exit_status
from generators.files import source_digest
from generators.info import report
from generators.run import RunError, generate, regenerate_records
from generators.subsets import query_summary, save_named_subset, trace, write_subset


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
    folder = DatasetFolder.open(args.dataset)
    summary = query_summary(folder, args.expr)
    print(json.dumps(summary, indent=2))
    if args.save_as:
        save_named_subset(folder, args.save_as, args.expr)
        print(f'saved as config {args.save_as!r}: load_dataset("{args.dataset}", "{args.save_as}")')
    if args.out:
        m = write_subset(folder, args.expr, args.out)
        print(f"wrote {m['n_records']} records to {args.out} (parent fingerprint {m['parent']['fingerprint'][:12]}…)")
    return 0


def cmd_trace(args) -> int:
    print(json.dumps(trace(DatasetFolder.open(args.dataset), args.record_id), indent=2, default=str))
    return 0


def cmd_regenerate(args) -> int:
    ids = None if args.all else args.record_ids
    if not ids and not args.all:
        raise RunError("name one or more record ids (e.g. s000003-c001), or pass --all")
    folder = DatasetFolder.open(args.dataset)
    n = differ = 0
    for r in regenerate_records(folder, ids):
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
        made_by = folder.raw.get("versions", {}).get("temsynth_source_sha256")
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


def cmd_gallery(args) -> int:
    from generators.gallery import write_gallery

    r = write_gallery(args.dataset, args.out, args.query, args.limit)
    print(f"wrote {r['records']} of the {r['selected']} selected records to {r['out']} (open it in a browser)")
    return 0


def cmd_materials(args) -> int:
    """Every material a config can draw: the built-in ones and, with --config, the config's own."""
    cfg = load_config(args.config) if args.config else default_config()
    rows = []
    for name, m in cfg.material_registry().items():
        rows.append({"name": name, "source": m.source, "lattice": m.lattice_text(),
                     "nearest_neighbour_A": round(m.nearest_neighbour_A, 4), "defects": list(m.defect_types),
                     "shapes": list(m.shapes), "description": m.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<14} {r['source']}: {r['description']}\n  {r['lattice']}  nn {r['nearest_neighbour_A']} Å\n"
              f"  defects: {', '.join(r['defects'])}\n  shapes:  {', '.join(r['shapes'])}")
    return 0


def cmd_calibrate(args) -> int:
    from generators.calibration.run import calibrate

    segment = None
    if args.model:
        from training.predict import segmenter  # torch: see cmd_predict

        segment = segmenter(args.model)
    calibrate(args.micrographs, args.out, pixel_size_A=args.pixel_size_A, pixel_sizes_csv=args.pixel_sizes,
              preset=args.from_preset, config=args.from_config, cs_mm=args.cs_mm, energy_keV=args.energy_keV,
              segment=segment, report_dir=args.report, strict=args.strict, dose_e_per_A2=args.dose_e_per_A2)
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


def _materials_args(ma):
    ma.add_argument("--config", help="YAML generation config whose materials: section is listed too")
    ma.add_argument("--json", action="store_true", help="one JSON list instead of text")


def _calibrate_args(c):
    c.add_argument("micrographs", nargs="+", help="micrograph files or folders (masks *_mask.* are skipped)")
    px = c.add_mutually_exclusive_group()
    px.add_argument("--pixel-size-A", type=float, help="one pixel size for every micrograph (else the files' own)")
    px.add_argument("--pixel-sizes", help="CSV with columns file,pixel_size_A")
    c.add_argument("--out", required=True, help="the proposed generation config (.yaml); measurements go beside "
                   "it as .calibration.json")
    base = c.add_mutually_exclusive_group()
    base.add_argument("--from-preset", default="realistic", help="preset whose other fields the config keeps")
    base.add_argument("--from-config", help="a generation YAML to start from instead of a preset")
    c.add_argument("--model", help="model folder: particle sizes and coverage from a first segmentation")
    c.add_argument("--report", help="folder for an HTML report (fits over spectra, real beside simulated)")
    c.add_argument("--cs-mm", type=float, help="the microscope's Cs for the fit (default: the base config's)")
    c.add_argument("--energy-keV", type=float, help="beam energy (default: the base config's)")
    c.add_argument("--dose-e-per-A2", type=float, nargs="+", metavar="DOSE", help="the exposure the acquisition "
                   "recorded, one value or LOW HIGH (display files do not show it; default: measured from counts, "
                   "else the base config's)")
    c.add_argument("--strict", action="store_true", help="stop at a micrograph that cannot be fitted instead "
                   "of leaving it out")


@dataclass(frozen=True)
class Verb:
    """One verb of the command line. Either `add` (its arguments) and `run` (called with the parsed arguments),
    or `delegate`, "module:function": a verb with its own parser in its module, called with the remaining argv,
    `prog` and `epilog` (the example), imported only when run (the training modules load torch). To add a verb,
    add a row to VERBS."""
    name: str
    help: str
    example: str
    add: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace], int] | None = None
    delegate: str | None = None


def _generate_args(g):
    g.add_argument("--preset", help="built-in config: see `temsynth presets`")
    g.add_argument("--config", help="YAML generation config")
    g.add_argument("--out", required=True, help="output dataset folder (re-running the same command resumes)")
    g.add_argument("--structures", type=int, help="override n_structures")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cluster_arguments(g, "2")


def _info_args(i):
    i.add_argument("dataset")
    i.add_argument("--verify", action="store_true", help="check every shard's SHA-256 against the manifest")


def _query_args(q):
    q.add_argument("dataset")
    q.add_argument("expr", help="e.g. \"defect_type in ('twin', 'mixed') and -20 <= defocus_nm <= 20\"")
    q.add_argument("--out", help="write the subset as its own dataset folder")
    q.add_argument("--save-as", help="store the query as a named config of the dataset card")


def _trace_args(t):
    t.add_argument("dataset")
    t.add_argument("record_id")


def _regenerate_args(r):
    r.add_argument("dataset")
    r.add_argument("record_ids", nargs="*", metavar="record_id")
    r.add_argument("--all", action="store_true", help="every record of the folder")


def _gallery_args(g):
    g.add_argument("dataset")
    g.add_argument("query", nargs="?", help="metadata query narrowing the records, as `temsynth query`")
    g.add_argument("--out", required=True, help="folder for index.html and img/ (open index.html in a browser)")
    g.add_argument("--limit", type=_positive_int, default=500, help="at most this many records (default 500)")


def _predict_args(pr):
    pr.add_argument("model", help="model folder, e.g. runs/demo/model")
    pr.add_argument("image")
    pr.add_argument("--out", help="mask file: .png or .tif (0/255) or .npy (0/1)")
    pr.add_argument("--pixel-size-A", type=float, help="pixel size of the image if the file carries none "
                    "(it is resampled to the model's)")
    pr.add_argument("--tta", action="store_true", help="average over the field's 8 rotations and mirror images "
                    "(8x slower; about +0.01 Dice on the real set)")


def _measure_args(me):
    me.add_argument("model", help="model folder (an instance model separates touching particles)")
    me.add_argument("images", nargs="+", metavar="MICROGRAPH")
    px = me.add_mutually_exclusive_group()
    px.add_argument("--pixel-size-A", type=float, help="one pixel size for every micrograph (else the files' own)")
    px.add_argument("--pixel-sizes", help="CSV with columns file,pixel_size_A: one row per micrograph")
    me.add_argument("--out", required=True, help="new folder for the tables and figures")
    me.add_argument("--include-border", action="store_true", help="count particles touching the field's border "
                    "in the size statistics")
    me.add_argument("--tta", action="store_true", help="average over the field's 8 rotations and mirror images")


def _evaluate_args(ev):
    ev.add_argument("model")
    ev.add_argument("dataset")
    ev.add_argument("query", nargs="?", help="metadata query narrowing the records")
    ev.add_argument("--split", default="test")
    ev.add_argument("--batch-size", type=_positive_int, default=16)
    ev.add_argument("--tables", metavar="DIR", help="also write the per-particle and per-record tables of "
                    "`measure` into this new folder, the predicted particles beside the true ones")


# Workflow order: what `temsynth --help` lists. Make data, look at it, select from it, bring in real micrographs,
# train, score on real data, use the model, run studies.
VERBS = [
    Verb("presets", "list the built-in generation configs", "temsynth presets", run=cmd_presets),
    Verb("materials", "list the materials (lattice, planar defects, faceted shapes) a config can draw: the "
         "built-in ones and, with --config, the config's own", "temsynth materials --config my.yaml",
         _materials_args, cmd_materials),
    Verb("calibrate", "measure defocus, astigmatism, information limit and noise on your micrographs and write "
         "a generation config that spans them (docs/calibration.md)",
         "temsynth calibrate my_micrographs/ --pixel-sizes my_micrographs/index.csv --out my.yaml "
         "--report my_report/", _calibrate_args, cmd_calibrate),
    Verb("generate", "build a dataset folder from a preset or a YAML config",
         "temsynth generate --preset demo --out tem_au_np", _generate_args, cmd_generate),
    Verb("info", "summary of a dataset folder", "temsynth info tem_au_np --verify", _info_args, cmd_info),
    Verb("gallery", "a static HTML page of thumbnails with mask outlines and metadata, filterable in the browser",
         "temsynth gallery tem_au_np \"n_particles >= 2\" --out gallery/", _gallery_args, cmd_gallery),
    Verb("query", "count and describe the records a metadata query selects",
         "temsynth query tem_au_np \"n_particles >= 2 and defocus_nm < 0\" --out tem_au_np_underfocus",
         _query_args, cmd_query),
    Verb("trace", "full provenance of one record", "temsynth trace tem_au_np s000003-c001", _trace_args, cmd_trace),
    Verb("regenerate", "rebuild records and compare them with the stored ones, bit for bit",
         "temsynth regenerate tem_au_np s000003-c001", _regenerate_args, cmd_regenerate),
    Verb("import", "import real micrographs with hand-drawn masks as a dataset folder (finetune/benchmark halves)",
         "temsynth import temsynth/data/real/hrtem_generalization --pixel-sizes "
         "temsynth/data/real/hrtem_generalization/index.csv --target-pixel-size-A 0.7 --tile-px 144 --out real_exp",
         delegate="dataset_scripts.import_experimental:main"),
    Verb("train", "train a segmentation network on dataset folders (a training YAML)",
         "temsynth train --config training/examples/demo.yaml --set epochs=3", delegate="training.train:main"),
    Verb("finetune", "fine-tune a trained model (a training YAML with init_from)",
         "temsynth finetune --config training/examples/realistic_finetune.yaml",
         delegate="training.finetune:main"),
    Verb("ensemble", "one model folder from several trainings of one config, their logits averaged: steadier "
         "than any one training (docs/particles.md)",
         "temsynth ensemble runs/realistic_instances/model runs/realistic_instances_s1/model --out runs/ensemble",
         delegate="training.ensemble:main"),
    Verb("evaluate", "Dice/IoU of a model on a dataset folder, as JSON",
         "temsynth evaluate runs/demo/model tem_au_np \"n_particles >= 2\" --split test", _evaluate_args,
         cmd_evaluate),
    Verb("score", "score a model on real micrographs: pooled and per-class Dice, bare-carbon false positives",
         "temsynth score runs/realistic/model", delegate="training.score:main"),
    Verb("predict", "segment one micrograph (TIFF, PNG, NumPy, DM3/DM4, EMD, MRC) with a model",
         "temsynth predict runs/demo/model micrograph.dm4 --out mask.png", _predict_args, cmd_predict),
    Verb("measure", "particle sizes, counts and coverage of micrographs: tables, summary, histogram, outlined "
         "overlays (docs/particles.md)", "temsynth measure runs/realistic_instances/model my.dm4 --out sizes/",
         _measure_args, cmd_measure),
    Verb("study", "`study run STUDY.yaml` (subsets x seeds x fine-tuning on Dask), `study report STUDY_DIR`",
         "temsynth study run training/examples/study_demo.yaml", delegate="training.study:main"),
]


def _example(verb: Verb) -> str:
    return f"example:\n  {verb.example}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="temsynth", description="Synthetic HRTEM nanoparticle datasets, segmentation "
                                "models trained on them, and their scores on real micrographs.",
                                epilog="Each verb has its own --help with an example. See README.md and docs/.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        if verb.delegate:  # its own parser answers `temsynth VERB --help` (see main)
            sub.add_parser(verb.name, help=verb.help, add_help=False).add_argument("rest", nargs=argparse.REMAINDER)
            continue
        v = sub.add_parser(verb.name, help=verb.help, description=verb.help, epilog=_example(verb),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if verb.add:
            verb.add(v)
        v.set_defaults(func=verb.run)
    return p


def _run_delegate(verb: Verb, argv: list[str]) -> int:
    module, func = verb.delegate.split(":")
    return getattr(importlib.import_module(module), func)(argv, prog=f"temsynth {verb.name}", epilog=_example(verb))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    delegated = {v.name: v for v in VERBS if v.delegate}
    if argv[:1] and argv[0] in delegated:  # its own parser, so that `temsynth study run --help` reaches it
        return _run_delegate(delegated[argv[0]], argv[1:])
    args = build_parser().parse_args(argv)
    return exit_status(f"temsynth {args.verb}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
