"""Are a dataset's particles as visible as the real ones? Per real size class, the contrast of whole, isolated
labelled particles in the real micrographs against simulated particles of the same sizes in a dataset.

    python benchmarks/particle_contrast.py DATASET [--real DIR] [--max-records N] [--by COLUMN --edges A,B,...]

Per particle (a connected piece of a mask, off the border, with carbon around it), on the dataset's pixel size:
- contrast: (median of the carbon in a ring 3-8 px outside any label - mean of the particle's core) / the
  carbon's standard deviation. It needs no grey-level calibration, so display renderings compare with counts.
- texture: the core's standard deviation over the carbon's (lattice fringes raise it; a fringe-less particle
  sits near 1).
The core is the label eroded by 2 px, so the outline, where labels disagree most, is left out. Simulated particles
are taken where their equivalent diameter lies within the real class's 10-90 % range. Quartiles are printed: the
simulation should span the real ones, not match their median. --by splits the simulated particles by a record
column (dose_e_per_A2, output_blur_A, substrate_thickness_A, ...) at the given edges: which conditions of a
config make particles as visible as the real ones.
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
from generators.micrographs.tiles import resample, resample_mask  # noqa: E402
from training.instances import connected_components, diameters_nm, touching_border  # noqa: E402
from training.score import default_real_dir, fields, read_pair  # noqa: E402

RING_PX = (3, 8)
CORE_ERODE_PX = 2


def particle_contrast(image: np.ndarray, mask: np.ndarray, pixel_size_A: float) -> np.ndarray:
    """(contrast, texture, equivalent diameter in nm) of every whole particle of `mask` with carbon around it."""
    mask = np.asarray(mask, bool)
    image = np.asarray(image, np.float64)
    labels = connected_components(mask)  # the package's particles: 4-connected pieces (training/instances.py)
    near_any = ndimage.binary_dilation(mask, iterations=RING_PX[0])
    rows = []
    for k in np.flatnonzero(~touching_border(labels)) + 1:  # a cut particle's size and surroundings are not whole
        own = labels == k
        ring = ndimage.binary_dilation(own, iterations=RING_PX[1]) & ~near_any
        core = ndimage.binary_erosion(own, iterations=CORE_ERODE_PX)
        carbon = image[ring]
        if ring.sum() < 50 or core.sum() < 10 or carbon.std() == 0:
            continue
        spread = carbon.std()
        rows.append(((np.median(carbon) - image[core].mean()) / spread, image[core].std() / spread,
                     diameters_nm(own.astype(np.int32), pixel_size_A, include_border=True)[0]))
    return np.asarray(rows, float).reshape(-1, 3)


def real_classes(real_dir: Path, pixel_size_A: float) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for f in fields(real_dir):
        image, truth = read_pair(real_dir, f)
        px = float(f["pixel_size_A"])
        image = resample(image, px, pixel_size_A, order=1)
        truth = resample_mask(truth, px, pixel_size_A)
        key = f"{f['material']} {float(f['nominal_diameter_nm']):g} nm"
        out.setdefault(key, []).append(particle_contrast(image, truth, pixel_size_A))
    return {k: np.concatenate(v) for k, v in out.items()}


def simulated(dataset: Path, max_records: int, blur_px: float = 0.0, by: str | None = None
              ) -> tuple[np.ndarray, float]:
    """(contrast, texture, diameter[, the record's `by` value]) of the dataset's particles, and its pixel size."""
    folder = DatasetFolder.open(dataset)
    px = folder.pixel_size_A
    with folder.reading():
        data = pads.dataset(folder.files("parquet"), format="parquet")
        numeric = [f.name for f in data.schema if _numeric(f.type)]
        if by is not None and by not in numeric:
            raise TemsynthError(f"--by {by}: no numeric column of that name in {dataset}; numeric record columns: "
                                + ", ".join(numeric))
        table = data.to_table(columns=["image", "mask"] + ([by] if by else []))
    if table.num_rows == 0:
        raise TemsynthError(f"{dataset}: no records")
    rows = []
    for r in table.slice(0, max_records).to_pylist():
        image = np.asarray(r["image"], np.float32)
        found = particle_contrast(ndimage.gaussian_filter(image, blur_px) if blur_px else image,
                                  np.asarray(r["mask"], np.uint8), px)
        if by:
            found = np.column_stack([found, np.full(len(found), float(r[by] or 0.0))])
        rows.append(found)
    return np.concatenate(rows), px


def _numeric(t) -> bool:
    import pyarrow.types as pt

    return pt.is_integer(t) or pt.is_floating(t)


def _quartiles(a: np.ndarray) -> str:
    return " / ".join(f"{v:.2f}" for v in np.percentile(a, [25, 50, 75])) if len(a) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--real", type=Path, default=None, help="real set (index.csv); default: the bundled one")
    parser.add_argument("--max-records", type=int, default=2000)
    parser.add_argument("--by", help="split the simulated particles by this record column")
    parser.add_argument("--edges", help="comma-separated bin edges for --by (default: its quartiles)")
    parser.add_argument("--blur-px", type=float, default=0.0,
                        help="Gaussian blur on the simulated images first (a training config's augment.blur_sigma_px)")
    args = parser.parse_args(argv)
    try:
        sim, px = simulated(args.dataset, args.max_records, args.blur_px, args.by)
        real = real_classes(args.real or default_real_dir(), px)
    except TemsynthError as err:
        print(f"particle_contrast: {err}", file=sys.stderr)
        return 2
    print(f"at {px:g} Å per pixel; quartiles 25 / 50 / 75 %")
    print("| class | diameters (nm, 10-90 %) | particles real / simulated | contrast real | contrast simulated "
          "| texture real | texture simulated |")
    print("|---|---|---|---|---|---|---|")
    for key, r in real.items():
        if len(r) < 3:
            print(f"| {key} | | {len(r)} / - | too few whole, isolated particles | | | |")
            continue
        lo, hi = np.percentile(r[:, 2], [10, 90])
        s = sim[(sim[:, 2] >= lo) & (sim[:, 2] <= hi)]
        print(f"| {key} | {lo:.1f}-{hi:.1f} | {len(r)} / {len(s)} | {_quartiles(r[:, 0])} | {_quartiles(s[:, 0])} "
              f"| {_quartiles(r[:, 1])} | {_quartiles(s[:, 1])} |")
        if args.by and len(s):
            edges = (np.asarray([float(v) for v in args.edges.split(",")]) if args.edges
                     else np.unique(np.percentile(s[:, 3], [0, 25, 50, 75, 100])))
            for a, b in zip(edges[:-1], edges[1:]):
                part = s[(s[:, 3] >= a) & ((s[:, 3] < b) | ((b == edges[-1]) & (s[:, 3] == b)))]
                print(f"| {key}, {args.by} {a:g}-{b:g} | | - / {len(part)} | | {_quartiles(part[:, 0])} | "
                      f"| {_quartiles(part[:, 1])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
