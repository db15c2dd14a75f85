"""How far a dataset's masks reach beyond its particles: per isolated, whole sphere, the radius of the circle of
its mask's area against the sphere's own (czone) radius, binned by radius.

    python benchmarks/mask_geometry.py DATASET [DATASET...]

The excess is the phase threshold's reach past the outermost atom columns plus the label margin (mask.blur_sigma_A);
the preset's margin should be read against it and against real labels, never set by a score alone. One condition
per structure is read: the masks come from the particle-only exit wave, not from the imaging conditions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from generators.dataset import DatasetFolder  # noqa: E402
from generators.errors import TemsynthError  # noqa: E402

BINS_A = (8, 12, 18, 27, 40, 70)


def sphere_excess(dataset: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(radius_A, equivalent radius - radius in Å) of every isolated whole sphere, and the dataset's blur sigma."""
    folder = DatasetFolder.open(dataset)
    with folder.reading():
        table = pads.dataset(folder.files("parquet"), format="parquet").to_table(
            columns=["instance_mask", "pixel_size_A", "particle_shape", "particle_radius_A", "particle_cut_by_border",
                     "particle_area_px", "mask_blur_sigma_A"],
            filter=pads.field("condition_index") == 0)
    radii, excess = [], []
    for row in table.to_pylist():
        inst = np.asarray(row["instance_mask"], np.uint8)
        blobs, _ = ndimage.label(inst > 0)
        for k, (shape, r, cut, area) in enumerate(zip(row["particle_shape"], row["particle_radius_A"],
                                                      row["particle_cut_by_border"], row["particle_area_px"]), 1):
            if shape != "sphere" or cut or area == 0:
                continue
            blob = np.isin(blobs, np.unique(blobs[inst == k]))
            if (inst[blob] != k).any():   # touches another particle's label: area shared, not its own
                continue
            radii.append(r)
            excess.append(np.sqrt(area / np.pi) * row["pixel_size_A"] - r)
    sigma = set(table.column("mask_blur_sigma_A").to_pylist())
    if len(sigma) != 1:
        raise TemsynthError(f"{dataset}: masks of several blur sigmas {sorted(sigma)}; measure one at a time")
    return np.asarray(radii), np.asarray(excess), sigma.pop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        measured = [(ds, *sphere_excess(ds)) for ds in args.datasets]
    except TemsynthError as err:
        print(f"mask_geometry: {err}", file=sys.stderr)
        return 2
    print("| dataset | mask.blur_sigma_A | " + " | ".join(f"r {a}-{b} Å" for a, b in zip(BINS_A, BINS_A[1:]))
          + " | all |")
    print("|---" * (len(BINS_A) + 2) + "|")
    for ds, r, e, sigma in measured:
        cells = []
        for a, b in zip(BINS_A, BINS_A[1:]):
            sel = (r >= a) & (r < b)
            cells.append(f"{np.median(e[sel]):+.2f} Å (n={sel.sum()})" if sel.any() else "-")
        total = f"{np.median(e):+.2f} Å (n={len(e)})" if len(e) else "no isolated whole sphere"
        print(f"| {ds} | {sigma} | " + " | ".join(cells) + f" | {total} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
