"""How much fine-tuning on half the real micrographs can give on the other half, and what bounds it.

    python benchmarks/bench_finetune_real.py runs/realistic/model --split-from real_exp
    python benchmarks/bench_finetune_real.py MODEL --split-from real_exp \
        --config training/examples/realistic_finetune.yaml

With one fine-tuning recipe (the config; its data and benchmarks are replaced), scores on both halves of an
imported real set (whole fields, as benchmarks/bench_real.py):
  parent           the model as given (simulation only)
  A->B, B->A       fine-tuned on one half, scored on the other: the figure the issue asks for, both ways round
  all->B, all->A   fine-tuned on all fields, the scored half included: the same recipe's score on fields it was
                   trained on, which a model fine-tuned on the other half alone would have to match
Each fine-tuning takes about 40 s on 2 cores (12 epochs of 32 tiles). Writes its runs under --work (removed
unless --keep) and prints one table; --out writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.score import default_real_dir, score, split_of  # noqa: E402  (after the sys.path line above: runs from a checkout)

HALVES = ("finetune", "benchmark")


def finetune(parent: str, config: Path, out: Path, train: list[dict], seed: int) -> str:
    """The recipe from `parent` on the `train` halves; the best epoch is chosen on the first one's tiles."""
    from training.finetune import finetune_config
    from training.train import run

    bench = [{"name": f"real_{d['split']}", **d} for d in train]
    cfg = finetune_config(config, {"init_from": parent, "output_dir": str(out), "data": train, "benchmarks": bench,
                                   "monitor": bench[0]["name"], "seed": seed})
    return run(cfg, progress=False)["model_dir"]


def pooled(result: dict, files: set[str]) -> float:
    """Pooled Dice over some of the fields of a bench_real result."""
    px = [f["pixels"] for f in result["fields"] if f["file"] in files]
    both, total = sum(p["both"] for p in px), sum(p["predicted"] + p["labelled"] for p in px)
    return 2 * both / total if total else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="the parent model folder (simulation only)")
    p.add_argument("--split-from", required=True, help="imported real folder with finetune and benchmark halves")
    p.add_argument("--config", default=str(ROOT / "training/examples/realistic_finetune.yaml"),
                   help="fine-tuning recipe (its init_from, data and benchmarks are replaced)")
    p.add_argument("--real", default=None, help="folder with index.csv and the whole fields (default: the bundled set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="folder for the fine-tuned runs (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the fine-tuned runs")
    p.add_argument("--out", default=None, help="write the JSON here too")
    args = p.parse_args(argv)
    imported, real = Path(args.split_from), Path(args.real or default_real_dir())
    splits = split_of(imported)
    halves = {h: {f for f, s in splits.items() if s == h} for h in HALVES}
    if not all(halves.values()):
        print(f"bench_finetune_real.py: error: {imported} needs fields in both halves {HALVES}", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_ft_"))
    work.mkdir(parents=True, exist_ok=True)
    a, b = ({"path": str(imported), "split": h} for h in HALVES)
    runs = {"parent": args.model}
    try:
        runs["A->B"] = finetune(args.model, Path(args.config), work / "a", [a], args.seed)
        runs["B->A"] = finetune(args.model, Path(args.config), work / "b", [b], args.seed)
        runs["all"] = finetune(args.model, Path(args.config), work / "all", [a, b], args.seed)
        results = {}
        for name, model in runs.items():
            r = score(model, real)
            results[name] = {"A (finetune half)": pooled(r, halves["finetune"]),
                             "B (benchmark half)": pooled(r, halves["benchmark"]), "all 16": r["pooled_dice"]}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"pooled Dice on whole real fields; halves of {imported} ({len(halves['finetune'])} + "
          f"{len(halves['benchmark'])} fields); recipe {args.config}")
    print(f"{'model':<34}{'on A':>8}{'on B':>8}")
    labels = {"parent": "parent (simulation only)", "A->B": "fine-tuned on A", "B->A": "fine-tuned on B",
              "all": "fine-tuned on A and B"}
    for name, r in results.items():
        print(f"{labels[name]:<34}{r['A (finetune half)']:>8.4f}{r['B (benchmark half)']:>8.4f}")
    held = {"A->B (held out)": results["A->B"]["B (benchmark half)"],
            "B->A (held out)": results["B->A"]["A (finetune half)"],
            "all->B (trained on)": results["all"]["B (benchmark half)"],
            "all->A (trained on)": results["all"]["A (finetune half)"]}
    print("held out: A->B %.4f, B->A %.4f; the same recipe on fields it was trained on: B %.4f, A %.4f" %
          tuple(held.values()))
    out = {"split_from": str(imported), "config": args.config, "seed": args.seed,
           "halves": {h: sorted(v) for h, v in halves.items()}, "scores": results, "summary": held}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
