"""`temsynth measure`: micrographs -> particles -> tables, summaries, a size histogram and outlined overlays.

    temsynth measure MODEL A.tif B.dm4 --pixel-size-A 0.2 --out sizes/
    temsynth measure MODEL fields/*.npy --pixel-sizes index.csv --out sizes/

Each field is resampled to the model's pixel size and segmented tile by tile (as `predict`); its particles are
the instance model's watershed or, for a binary model, the mask's connected components (training/instances.py),
measured at the model's pixel size (the segmentation's own resolution: the file's finer pixels add nothing to a
mask made at the model's). Centroids are given in the file's pixels. Particles touching the field's border are
in the tables, flagged, and left out of the size statistics unless --include-border.

Written to DIR (built in a temporary folder beside it and renamed when complete: a failed run leaves nothing):
  particles.parquet / particles.csv   one row per particle of every micrograph
  summary.parquet / summary.csv       one row per micrograph and one for all of them ("ALL")
  summary.json                        the same, with the model and the options
  size_histogram.png                  equivalent-circle diameters (border particles left out unless asked)
  overlays/STEM.png                   each micrograph with its particles outlined and numbered
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from generators.micrographs import MicrographError, given_pixel_sizes, pixel_size_of, read_micrograph

from .instances import PARTICLE_COLUMNS, measure, particles_from_logits, summary
from .models import load_model
from .predict import field_logits

SUMMARY_COLUMNS = ("micrograph", "pixel_size_A", "model_pixel_size_A", "width_px", "height_px", "n_particles",
                   "n_touching_border", "n_measured", "coverage", "mean_diameter_nm", "median_diameter_nm",
                   "std_diameter_nm", "iqr_diameter_nm", "note")


class MeasureError(MicrographError):
    pass


def measure_field(model, config, image: np.ndarray, pixel_size_A: float, tta: bool = False,
                  name: str = "micrograph"):
    """(particle table, labels, confidence, image at the model's pixels, the model's pixel size) of one field."""
    from generators.micrographs import resample

    logits, model_px = field_logits(model, config, image, pixel_size_A, tta, name)
    labels = particles_from_logits(logits)
    confidence = 1.0 / (1.0 + np.exp(-logits[0]))
    del logits
    table = measure(labels, model_px, confidence, origin_scale=model_px / pixel_size_A)
    shown = image if labels.shape == image.shape else resample(image, pixel_size_A, model_px, order=1)
    return table, labels, confidence, shown, model_px


def run(model_dir: str, images: list[str], out: str, pixel_size_A: float | None = None,
        pixel_sizes_csv: str | None = None, include_border: bool = False, tta: bool = False,
        figures: bool = True) -> dict:
    """Measure every micrograph into `out` (see the module's docstring); returns the summary."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MeasureError(f"--out {out}: exists and is not empty; choose a new folder or delete it")
    if not images:
        raise MeasureError("name at least one micrograph")
    paths = [Path(p) for p in images]
    for p in paths:
        if not p.is_file():
            raise MeasureError(f"{p}: no such file")
    if len({p.name for p in paths}) != len(paths):
        raise MeasureError("two micrographs share a file name; their rows and overlays would collide: rename one")
    given = given_pixel_sizes(paths, pixel_size_A, pixel_sizes_csv)
    model, config = load_model(model_dir)
    with _folder_in_place(out) as tmp:
        result = _measure_all(model, config, paths, given, tmp, include_border, tta, figures)
        result.update(model=str(model_dir), include_border=include_border, tta=tta)
        (tmp / "summary.json").write_text(json.dumps(result, indent=2, default=_json))
    result["out"] = str(out)
    return result


def _json(v):
    return v.item() if hasattr(v, "item") else str(v)


def _measure_all(model, config, paths, given, tmp: Path, include_border: bool, tta: bool, figures: bool) -> dict:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    per_field, diam, fields_px, tables = [], [], 0, []
    for p in paths:
        image, file_px, fmt = read_micrograph(p)
        px = pixel_size_of(p, given[p], file_px)
        if float(image.max()) == float(image.min()):
            raise MeasureError(f"{p.name}: every pixel is {float(image.min()):g}; a constant image holds nothing "
                               "to measure")
        table, labels, confidence, shown, model_px = measure_field(model, config, image, px, tta, p.name)
        s = summary(table, labels.size, include_border)
        if s["n_particles"] == 0:
            s["note"] = "no particle found in this field"
        per_field.append({"micrograph": p.name, "pixel_size_A": px, "model_pixel_size_A": model_px,
                          "width_px": image.shape[1], "height_px": image.shape[0], **s})
        table = {"micrograph": np.full(len(table["particle"]), p.name, dtype=object),
                 "pixel_size_A": np.full(len(table["particle"]), px), **table}
        tables.append(table)
        keep = np.ones(len(table["particle"]), bool) if include_border else ~table["touches_border"]
        diam.append(table["diameter_nm"][keep])
        fields_px += labels.size
        if figures:
            (tmp / "overlays").mkdir(exist_ok=True)
            draw_overlay(shown, labels, table, tmp / "overlays" / f"{p.stem}.png", f"{p.name}: {s['n_particles']} "
                         f"particles, {s['n_touching_border']} on the border")
        del image, labels, confidence, shown
    columns = ("micrograph", "pixel_size_A", *PARTICLE_COLUMNS)
    particles = pa.table({c: pa.array(np.concatenate([t[c] for t in tables]) if tables else [],
                                      type=_arrow_type(c)) for c in columns})
    whole = {c: np.concatenate([t[c] for t in tables]) for c in PARTICLE_COLUMNS}
    overall = {"micrograph": "ALL", "pixel_size_A": None, "model_pixel_size_A": None, "width_px": None,
               "height_px": None, **summary(whole, fields_px, include_border)}
    if overall["n_particles"] == 0:
        overall["note"] = "no particle found in any field"
    summaries = per_field + [overall]
    summary_table = pa.Table.from_pylist([{c: s.get(c) for c in SUMMARY_COLUMNS} for s in summaries],
                                         schema=_summary_schema())
    pq.write_table(particles, tmp / "particles.parquet")
    pacsv.write_csv(particles, tmp / "particles.csv")
    pq.write_table(summary_table, tmp / "summary.parquet")
    pacsv.write_csv(summary_table, tmp / "summary.csv")
    if figures:
        draw_histogram(np.concatenate(diam) if diam else np.zeros(0), tmp / "size_histogram.png", include_border)
    return {"fields": per_field, "overall": overall}


def _arrow_type(c: str):
    import pyarrow as pa

    return {"micrograph": pa.string(), "particle": pa.int32(), "area_px": pa.int64(),
            "touches_border": pa.bool_()}.get(c, pa.float64())


def _summary_schema():
    import pyarrow as pa

    ints = {"width_px", "height_px", "n_particles", "n_touching_border", "n_measured"}
    return pa.schema([(c, pa.string() if c in ("micrograph", "note") else pa.int64() if c in ints else pa.float64())
                      for c in SUMMARY_COLUMNS])


# ---------------------------------------------------------------- evaluate: predicted beside true
@contextlib.contextmanager
def _folder_in_place(out: Path):
    """A sibling temporary folder to fill, renamed onto `out` (absent or empty) only when the block finishes: a
    crash or kill leaves no half-written output."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def truth_tables(ids: list[str], records: list[tuple], out: str | Path) -> dict:
    """`temsynth evaluate --tables DIR`: the measure tables of a simulated split, the predicted particles beside
    the true ones. records: per record (predicted table, true table, predicted -> true match, true -> predicted
    match, field pixels). Writes particles.{parquet,csv} (a `side` column: predicted / true, and `matched` the
    other side's particle at IoU >= 0.5, 0 for none) and summary.{parquet,csv} (per record, predicted_* beside
    true_*), atomically like `measure`."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MeasureError(f"--tables {out}: exists and is not empty; choose a new folder or delete it")
    parts, rows = [], []
    for rid, (pt, tt, pm, tm, n_px) in zip(ids, records):
        for side, t, m in (("predicted", pt, pm), ("true", tt, tm)):
            n = len(t["particle"])
            parts.append({"record_id": np.full(n, rid, dtype=object), "side": np.full(n, side, dtype=object),
                          **t, "matched": np.asarray(m[t["particle"] - 1] if n else [], np.int32)})
        row = {"record_id": rid}
        for side, t in (("predicted", pt), ("true", tt)):
            row.update({f"{side}_{k}": v for k, v in summary(t, n_px).items() if k != "note"})
        rows.append(row)
    cols = ("record_id", "side", *PARTICLE_COLUMNS, "matched")
    types = {"record_id": pa.string(), "side": pa.string(), "matched": pa.int32()}
    particles = pa.table({c: pa.array(np.concatenate([p[c] for p in parts]) if parts else [],
                                      type=types.get(c) or _arrow_type(c)) for c in cols})
    summary_table = pa.Table.from_pylist(rows) if rows else pa.table({"record_id": pa.array([], pa.string())})
    with _folder_in_place(out) as tmp:
        pq.write_table(particles, tmp / "particles.parquet")
        pacsv.write_csv(particles, tmp / "particles.csv")
        pq.write_table(summary_table, tmp / "summary.parquet")
        pacsv.write_csv(summary_table, tmp / "summary.csv")
    return {"out": str(out), "n_records": len(rows), "n_particles": int(len(particles))}


# ---------------------------------------------------------------- figures
def outlines(labels: np.ndarray) -> np.ndarray:
    """Pixels of each particle that border another label or the background."""
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    return edge & (labels > 0)


def draw_overlay(image: np.ndarray, labels: np.ndarray, table: dict, path: Path, title: str) -> None:
    """The field in grey, each particle outlined (yellow; cyan if it touches the border) and numbered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - lo) / max(float(hi - lo), 1e-6), 0, 1).astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    edge = outlines(labels)
    border = np.zeros(int(labels.max(initial=0)) + 1, bool)
    border[table["particle"][table["touches_border"]]] = True
    rgb[edge & ~border[labels]] = (1.0, 0.85, 0.0)
    rgb[edge & border[labels]] = (0.0, 0.9, 0.9)
    h, w = labels.shape
    inches = min(12.0, max(4.0, max(h, w) / 100))
    fig, ax = plt.subplots(figsize=(inches * w / max(h, w), inches * h / max(h, w)))
    ax.imshow(rgb, interpolation="nearest")
    fs = float(np.clip(inches * 72 / max(h, w) * 12, 4, 9))
    ids = table["particle"]
    if len(ids):
        from scipy import ndimage

        # the table's centroids are in the file's pixels; the overlay is drawn at the labels' (the model's)
        centres = ndimage.center_of_mass(np.ones(labels.shape), labels, ids)
        for k, (cy, cx) in zip(ids, centres):
            ax.text(cx, cy, str(k), color="red", fontsize=fs, ha="center", va="center", fontweight="bold")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_histogram(diameters_nm: np.ndarray, path: Path, include_border: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    if len(diameters_nm):
        ax.hist(diameters_nm, bins=max(5, min(40, int(np.sqrt(len(diameters_nm)) * 2))), color="0.35")
        med = float(np.median(diameters_nm))
        ax.axvline(med, color="red", lw=1)
        ax.set_title(f"{len(diameters_nm)} particles, median {med:.2f} nm", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no particle to measure", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("equivalent-circle diameter (nm)" + ("" if include_border else ", border particles left out"))
    ax.set_ylabel("particles")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
