"""The watershed's seed threshold, the neck ratio that joins a cut particle, the smallest particle and the
particle confidence floor, chosen on a simulated VALIDATION split (never on the test split or the real set):
particle F1 for each combination, from one pass of the model.

    python benchmarks/tune_instances.py MODEL DATASET [--split validation]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from training.config import Benchmark
    from training.data import benchmark_set
    from training.instances import aggregate, match, particles_from_logits, relabel
    from training.models import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("dataset")
    p.add_argument("--split", default="validation")
    p.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7")
    p.add_argument("--min-px", default="0,50,100,200")
    p.add_argument("--necks", default="inf,1.2", help="neck ratios (training/instances.py NECK_RATIO; inf: no join)")
    p.add_argument("--confidences", default="0,0.8", help="particle confidence floors (MIN_CONFIDENCE; 0: none)")
    args = p.parse_args(argv)
    model, config = load_model(args.model)
    data = benchmark_set(Benchmark(name="tune", path=args.dataset, split=args.split), config.augment, "dataset",
                         instances=True)
    fields = []
    with torch.no_grad():
        for i in range(len(data)):
            s = data[i]
            fields.append((model(s["image"][None])[0].numpy(), relabel(s["instances"].numpy()),
                           float(s["pixel_size_A"])))
    rows = []
    for t in (float(x) for x in args.thresholds.split(",")):
        for m in (int(x) for x in args.min_px.split(",")):
            for neck in (float(x) for x in args.necks.split(",")):
                for conf in (float(x) for x in args.confidences.split(",")):
                    agg = aggregate([match(particles_from_logits(lg, m, t, neck, conf), true, px)
                                     for lg, true, px in fields])
                    rows.append({"seed_threshold": t, "min_px": m, "neck_ratio": neck, "min_confidence": conf,
                                 **{k: agg[k] for k in ("particle_f1", "count_error", "median_diameter_error",
                                                        "touching_pairs_separated")}})
                    print(json.dumps(rows[-1]))
    best = max(rows, key=lambda r: r["particle_f1"] or 0)
    print("best on", args.split, json.dumps(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
