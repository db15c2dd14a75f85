"""How close are a dataset's simulated fields to real micrographs in their power spectrum's shape?

    python benchmarks/psd_distance.py tem_np_realistic tem_np_calibrated [--real DIR] [--records 96]

Real fields (index.csv pixel sizes) and each dataset's first records are brought to the dataset's pixel size,
scaled to unit variance, and their mean radially averaged spectra compared: the RMS of the log10 difference
over 0.05 1/Å .. 0.9 Nyquist (0 the same shape, 0.30 a factor of 2 everywhere). `temsynth calibrate --report`
draws the same comparison.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generators.calibration.spectrum import psd_distance  # noqa: E402  (after the sys.path line above: runs from a checkout)
from generators.micrographs.tiles import resample  # noqa: E402  (after the sys.path line above: runs from a checkout)
from temsynth.resources import real_set_dir  # noqa: E402  (after the sys.path line above: runs from a checkout)


def dataset_fields(folder: Path, n: int) -> tuple[list[np.ndarray], float]:
    import pyarrow.dataset as pads

    ds = pads.dataset(sorted(str(p) for p in (folder / "data").glob("*.parquet")), format="parquet")
    t = ds.head(n, columns=["image", "pixel_size_A"])
    px = float(t["pixel_size_A"][0].as_py())
    return [np.asarray(v, np.float32) for v in t["image"].to_pylist()], px


def real_fields(real: Path, px: float) -> list[np.ndarray]:
    with open(real / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [resample(np.load(real / r["file"]).astype(np.float32), float(r["pixel_size_A"]), px) for r in rows]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("datasets", nargs="+")
    p.add_argument("--real", default=str(real_set_dir()), help="folder with index.csv (default: the bundled set)")
    p.add_argument("--records", type=int, default=96)
    a = p.parse_args()
    out = {}
    for d in a.datasets:
        sim, px = dataset_fields(Path(d), a.records)
        dist, *_ = psd_distance(real_fields(Path(a.real), px), sim, px)
        out[d] = round(dist, 4)
        print(f"{d}: {len(sim)} records at {px:g} Å, spectrum-shape distance to the real fields {dist:.3f}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
