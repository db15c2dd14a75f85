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
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy import ndimage

BINS_A = (8, 12, 18, 27, 40, 70)


def sphere_excess(dataset: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(radius_A, equivalent radius - radius in Å) of every isolated whole sphere, and the dataset's blur sigma."""
    cols = ["instance_mask", "condition_index", "pixel_size_A", "particle_shape", "particle_radius_A",
            "particle_cut_by_border", "mask_blur_sigma_A"]
    radii, excess, sigma = [], [], set()
    for path in sorted((dataset / "data").glob("*.parquet")):
        table = pq.read_table(path, columns=cols)
        table = table.filter(pc.equal(table["condition_index"], 0))
        for row in table.to_pylist():
            inst = np.asarray(row["instance_mask"], np.uint8)
            blobs, _ = ndimage.label(inst > 0)
            sigma.add(row["mask_blur_sigma_A"])
            for k, (shape, r, cut) in enumerate(zip(row["particle_shape"], row["particle_radius_A"],
                                                      row["particle_cut_by_border"]), start=1):
                own = inst == k
                if shape != "sphere" or cut or not own.any():
                    continue
                blob = np.isin(blobs, np.unique(blobs[own]))
                if (inst[blob] != k).any():   # touches another particle's label: area shared, not its own
                    continue
                radii.append(r)
                excess.append(np.sqrt(own.sum() / np.pi) * row["pixel_size_A"] - r)
    if len(sigma) != 1:
        raise SystemExit(f"{dataset}: masks of several blur sigmas {sorted(sigma)}")
    return np.asarray(radii), np.asarray(excess), sigma.pop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print("| dataset | mask.blur_sigma_A | " + " | ".join(f"r {a}-{b} Å" for a, b in zip(BINS_A, BINS_A[1:]))
          + " | all |")
    print("|---" * (len(BINS_A) + 2) + "|")
    for ds in args.datasets:
        r, e, sigma = sphere_excess(ds)
        cells = []
        for a, b in zip(BINS_A, BINS_A[1:]):
            sel = (r >= a) & (r < b)
            cells.append(f"{np.median(e[sel]):+.2f} Å (n={sel.sum()})" if sel.any() else "-")
        print(f"| {ds} | {sigma} | " + " | ".join(cells) + f" | {np.median(e):+.2f} Å (n={len(e)}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
