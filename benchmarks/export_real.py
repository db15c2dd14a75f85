"""A simulated split written out as a labelled real set (the bundled set's layout: one .npy image and one .npy
mask per field, and index.csv with file, mask, material, nominal_diameter_nm, pixel_size_A), so that
`temsynth calibrate` reads its images as a user's micrographs and `temsynth score --real` scores models on it.

    python benchmarks/export_real.py DATASET OUT [--split test]
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import pyarrow.dataset as pads

    from generators.dataset import DatasetFolder

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset")
    p.add_argument("out")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    folder = DatasetFolder.open(args.dataset)
    ds = pads.dataset(folder.files("parquet", args.split), format="parquet")
    table = ds.to_table(columns=["record_id", "image", "mask", "pixel_size_A", "particle_material",
                                 "particle_radius_A"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    rows = []
    for r in table.to_pylist():
        image, mask = np.asarray(r["image"], np.float32), np.asarray(r["mask"], np.uint8)
        name = r["record_id"]
        np.save(out / f"{name}.npy", image)
        np.save(out / f"{name}_mask.npy", mask)
        materials = r["particle_material"] or ["C"]
        radii = r["particle_radius_A"] or [0.0]
        rows.append({"file": f"{name}.npy", "mask": f"{name}_mask.npy",
                     "material": max(set(materials), key=materials.count),
                     "nominal_diameter_nm": round(2 * float(np.median(radii)) / 10, 1),
                     "pixel_size_A": r["pixel_size_A"]})
    with open(out / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} fields of {args.dataset} ({args.split}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
