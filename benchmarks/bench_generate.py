"""Throughput of `temsynth generate` on a preset: structures/min and images/min on this machine.

    python benchmarks/bench_generate.py [--preset demo] [--workers 2] [--structures N]
"""
import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main():
    from generators.config import from_dict, load_preset
    from generators.run import generate

    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--structures", type=int)
    args = ap.parse_args()
    cfg = load_preset(args.preset)
    if args.structures:
        cfg = from_dict({**cfg.model_dump(mode="json"), "n_structures": args.structures})
    out = Path(tempfile.mkdtemp()) / "bench"
    try:
        t = time.perf_counter()
        m = generate(cfg, out, workers=args.workers, progress=False)
        dt = time.perf_counter() - t
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    print(f"{args.preset}: {cfg.n_structures} structures, {m['n_records']} images in {dt:.1f} s with "
          f"{args.workers} workers -> {60 * cfg.n_structures / dt:.1f} structures/min, {60 * m['n_records'] / dt:.1f} "
          f"images/min (cluster start-up, shard writing and card included)")


if __name__ == "__main__":
    main()
