"""Where a model's pixel errors on the real set lie, per class: at the labels' outlines (within a few pixels of
them: where the particle's edge is drawn) or away from them (whole regions the model and the labels disagree on:
a particle missed or claimed), and how many labelled particles are missed and predicted ones unmatched.

    python benchmarks/real_errors.py MODEL [--real DIR] [--edge-px 3]

A class's Dice is 1 - (false + missed pixels) / (predicted + labelled pixels): the columns say which part of
that loss better outlines could recover, and which needs the model to decide differently about a whole object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def field_errors(pred: np.ndarray, truth: np.ndarray, edge_px: int) -> dict:
    """Pixel and object errors of one field (boolean masks of one shape)."""
    from scipy import ndimage

    band = ndimage.binary_dilation(truth, iterations=edge_px) & ~ndimage.binary_erosion(truth, iterations=edge_px)
    fp, fn = pred & ~truth, ~pred & truth
    lt, nt = ndimage.label(truth)
    lp, npred = ndimage.label(pred)
    # an object is missed (claimed) when under a fifth of it is covered by the other side
    cover_t = ndimage.mean(pred, lt, np.arange(1, nt + 1)) if nt else np.zeros(0)
    cover_p = ndimage.mean(truth, lp, np.arange(1, npred + 1)) if npred else np.zeros(0)
    return {"both": int((pred & truth).sum()), "predicted": int(pred.sum()), "labelled": int(truth.sum()),
            "false_at_outline": int((fp & band).sum()), "false_away": int((fp & ~band).sum()),
            "missed_at_outline": int((fn & band).sum()), "missed_away": int((fn & ~band).sum()),
            "labelled_objects": int(nt), "labelled_missed": int((np.asarray(cover_t) < 0.2).sum()),
            "predicted_objects": int(npred), "predicted_unlabelled": int((np.asarray(cover_p) < 0.2).sum())}


def main(argv=None) -> int:
    import torch

    from training.models import load_model
    from training.score import default_real_dir, fields, predict_field, read_pair

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--real", type=Path, default=None)
    p.add_argument("--edge-px", type=int, default=3, help="half-width of the band around the labels' outlines")
    args = p.parse_args(argv)
    real = args.real or default_real_dir()
    model, config = load_model(args.model)
    classes: dict[str, dict] = {}
    for f in fields(real):
        image, truth = read_pair(real, f)
        with torch.no_grad():
            pred = predict_field(model, config, image, float(f["pixel_size_A"])) > 0
        e = field_errors(pred, truth, args.edge_px)
        key = f"{f['material']} {float(f['nominal_diameter_nm']):g} nm"
        acc = classes.setdefault(key, dict.fromkeys(e, 0))
        for k, v in e.items():
            acc[k] += v
    header = ("class", "Dice", "error px", "at outline", "away", "labelled missed", "predicted unlabelled")
    print(" | ".join(header))
    for key, c in sorted(classes.items()):
        err = c["false_at_outline"] + c["false_away"] + c["missed_at_outline"] + c["missed_away"]
        away = c["false_away"] + c["missed_away"]
        dice = 2 * c["both"] / max(c["predicted"] + c["labelled"], 1)
        print(f"{key} | {dice:.3f} | {err} | {err - away} ({(err - away) / max(err, 1):.0%}) | {away} "
              f"(false {c['false_away']}, missed {c['missed_away']}) | {c['labelled_missed']} of "
              f"{c['labelled_objects']} | {c['predicted_unlabelled']} of {c['predicted_objects']}")
    print(json.dumps(classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
