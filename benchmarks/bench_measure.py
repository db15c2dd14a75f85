"""`temsynth measure` on one large field: wall time and peak memory (issue 23's target: a 4096 x 4096
micrograph at 0.2 Å/px in under a minute on 2 cores, memory bounded).

    python benchmarks/bench_measure.py MODEL DATASET [--size 4096] [--pixel-size-A 0.2] [--out bench_out/measure]

The field is made of DATASET's simulated fields (at their 0.7 Å) enlarged to 0.2 Å/px and laid side by side,
so that it holds as many particles as real fields of that size would. Then `temsynth measure` runs in a child
process under /usr/bin/time -v: the time it reports is the whole command (start-up, reading, resampling,
tiled inference, labels, measurements, tables and figures); the peak resident memory is the child's.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_field(dataset: Path, size: int, pixel_size_A: float) -> np.ndarray:
    import pyarrow.dataset as pads

    from generators.micrographs import resample

    t = pads.dataset(dataset / "data", format="parquet").to_table(
        columns=["record_id", "image", "n_particles", "pixel_size_A", "image_size_px"]).sort_by("record_id")
    busy = [i for i, n in enumerate(t["n_particles"].to_pylist()) if n >= 4]
    src_px = t["pixel_size_A"][0].as_py()
    tiles = []
    for i in busy:
        n = t["image_size_px"][i].as_py()
        img = np.asarray(t["image"][i].as_py(), np.float32).reshape(n, n)
        img = (img - img.mean()) / max(float(img.std()), 1e-6)  # one grey scale across the mosaic
        tiles.append(resample(img, src_px, pixel_size_A, order=1))
        if len(tiles) * tiles[0].shape[0] ** 2 >= 1.2 * size * size:
            break
    side = tiles[0].shape[0]
    per_row = -(-size // side)
    rows = [np.concatenate([tiles[(r * per_row + c) % len(tiles)] for c in range(per_row)], axis=1)
            for r in range(per_row)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("dataset")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--pixel-size-A", type=float, default=0.2)
    p.add_argument("--out", default="bench_out/measure")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    field = out / f"field_{args.size}.npy"
    np.save(field, make_field(Path(args.dataset), args.size, args.pixel_size_A))
    result_dir = out / "result"
    shutil.rmtree(result_dir, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "temsynth", "measure", args.model, str(field),
           "--pixel-size-A", str(args.pixel_size_A), "--out", str(result_dir)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        print(r.stderr[-2000:], file=sys.stderr)
        return r.returncode
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", r.stderr)
    h, m, s = (float(g) if g else 0.0 for g in wall.groups())
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    overall = json.loads((result_dir / "summary.json").read_text())["overall"]
    report = {"field_px": args.size, "pixel_size_A": args.pixel_size_A, "wall_s": round(3600 * h + 60 * m + s, 1),
              "peak_rss_MiB": round(rss_kb / 1024), "field_MiB_float32": round(args.size ** 2 * 4 / 2 ** 20),
              "n_particles": overall["n_particles"], "median_diameter_nm": overall["median_diameter_nm"]}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
