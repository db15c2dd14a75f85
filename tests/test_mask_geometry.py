"""benchmarks/mask_geometry.py: how far a dataset's masks reach past its spheres, read from the records."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mask_geometry import main, sphere_excess  # noqa: E402


def test_phase_threshold_masks_stop_about_an_atomic_radius_inside_the_sphere(built, capsys):
    radii, excess, sigma = sphere_excess(built)
    # the tiny dataset: one whole sphere of radius 8-11 Å per structure, no label margin
    assert sigma == 0.0 and len(radii) >= 4 and np.all((radii >= 7.9) & (radii <= 11.1))
    # short columns at a sphere's rim carry under pi/12 of phase: the outline lies 0.3-1.5 Å inside its radius
    assert -1.5 < np.median(excess) < -0.3, excess
    assert main([str(built)]) == 0
    assert f"| {built} | 0.0 |" in capsys.readouterr().out
