"""benchmarks/real_errors.py: errors split between the labels' outlines and whole objects, on hand-worked masks."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from real_errors import field_errors  # noqa: E402


def test_outline_errors_and_whole_objects_are_told_apart():
    y, x = np.mgrid[:100, :100]
    truth = (x - 30) ** 2 + (y - 30) ** 2 <= 15 ** 2           # a labelled particle
    truth |= (x - 75) ** 2 + (y - 75) ** 2 <= 8 ** 2           # a second one the model misses
    pred = (x - 31) ** 2 + (y - 30) ** 2 <= 15 ** 2            # the first, outlined one pixel off
    pred |= (x - 75) ** 2 + (y - 25) ** 2 <= 6 ** 2            # a particle the labels do not hold
    e = field_errors(pred, truth, edge_px=3)
    objects = ("labelled_objects", "labelled_missed", "predicted_objects", "predicted_unlabelled")
    assert tuple(e[k] for k in objects) == (2, 1, 2, 1)
    claimed = int(((x - 75) ** 2 + (y - 25) ** 2 <= 6 ** 2).sum())
    assert e["false_away"] == claimed                            # the whole claimed object, none of the shift
    # the missed particle: its rim lies in the band around its own outline, its core away from it
    core = int(((x - 75) ** 2 + (y - 75) ** 2 <= 5 ** 2).sum())
    assert abs(e["missed_away"] - core) <= 8
    # the one-pixel shift costs only pixels at the first particle's outline
    shift = int((pred & ~truth).sum()) - claimed
    assert e["false_at_outline"] == shift and shift > 0
