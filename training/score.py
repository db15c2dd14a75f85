"""Score a model on real, hand-labelled micrographs: the number this package exists for.

    temsynth score runs/realistic/model                                  # the bundled real set
    temsynth score runs/realistic_ft/model --fields benchmark --split-from real_exp
    temsynth score MODEL --real my_micrographs/ --json                   # any folder with the same index.csv

Each whole field is read at its own pixel size (index.csv), resampled to the model's pixel size, segmented
(tiled inference, as `temsynth predict`), and its mask resampled back and compared with the hand-drawn one
at the file's pixels. Reported: pooled Dice over the fields (2 sum TP / (sum predicted + sum labelled)), the
same per particle class (material, nominal size), the false-positive area on the bare-carbon fields
(labelled particle fraction <= 0.5 %), and Dice per field. `--fields` restricts the fields to one split of an
imported folder (`--split-from`), so a fine-tuned model is scored only on the half it never saw.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from generators.dataset import DatasetFolder
from generators.errors import TemsynthError, exit_status
from generators.folder import RunError
from temsynth.resources import real_set_dir

BARE_FRACTION = 0.005
INDEX_COLUMNS = ("file", "mask", "material", "nominal_diameter_nm", "pixel_size_A")
# The fields `--figure` draws when it may (one of each class, the hardest first).
FIGURE_FIELDS = ["hparam_cell61_Au2p2nm_row0_unblended.npy", "traintest_cell30_Au2p2nm_row2.npy",
                 "traintest_cell31_Au5nm_row1.npy", "traintest_cell32_Au10nm_row0.npy",
                 "traintest_cell32_Au10nm_row2.npy", "dscreate_cell10_Ag5nm_330kx_patch15.npy"]


class ScoreError(TemsynthError, ValueError):
    """A real-set folder or split that cannot be scored; the message names the file and the fix."""


def default_real_dir() -> Path:
    return real_set_dir()


def fields(real_dir: Path) -> list[dict]:
    """The rows of a real set's index.csv (one per field), checked for the columns scoring reads."""
    index = Path(real_dir) / "index.csv"
    if not index.is_file():
        raise ScoreError(f"{real_dir} has no index.csv; give a folder laid out as the bundled real set "
                         f"({default_real_dir()})")
    with open(index, newline="") as f:
        rows = [dict(r) for r in csv.DictReader(f)]
    missing = [c for c in INDEX_COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise ScoreError(f"{index}: needs the columns {', '.join(INDEX_COLUMNS)}; missing {', '.join(missing)}")
    return rows


def split_of(imported: Path) -> dict[str, str]:
    """source file -> split in an imported experimental folder, read through the folder object: its manifest
    read and checked once, its shards as the manifest lists them."""
    import pyarrow.dataset as pads

    try:
        folder = DatasetFolder.open(imported)
    except RunError as err:
        raise ScoreError(f"--split-from {err}; give the folder `temsynth import` made") from None
    if not folder.experimental:
        raise ScoreError(f"--split-from {imported}: a {folder.kind} folder, not an imported one (its records have no "
                         "source file); give the folder `temsynth import` made")
    with folder.reading():
        t = pads.dataset(folder.files("parquet"), format="parquet").to_table(columns=["source_file", "split"])
    return dict(zip(t["source_file"].to_pylist(), t["split"].to_pylist()))


def fields_of_split(imported: Path, split: str) -> set[str]:
    chosen = {f for f, s in split_of(imported).items() if s == split}
    if not chosen:
        raise ScoreError(f"--split-from {imported}: no field is in the {split!r} split")
    return chosen


def predict_field(model, config, image: np.ndarray, pixel_size_A: float, tta: bool = False) -> np.ndarray:
    from generators.micrographs import resample, resample_mask

    from .predict import predict_array

    model_px = config.pixel_size_A or pixel_size_A
    work = resample(image, pixel_size_A, model_px, order=1) if abs(pixel_size_A / model_px - 1) > 0.01 else image
    mask = predict_array(model, work, config.augment.normalise, tta)
    if work is not image:
        mask = resample_mask(mask, model_px, pixel_size_A)
    h, w = image.shape
    return np.pad(mask, ((0, max(0, h - mask.shape[0])), (0, max(0, w - mask.shape[1]))))[:h, :w]


def read_pair(real_dir: Path, f: dict) -> tuple[np.ndarray, np.ndarray]:
    try:
        return (np.load(real_dir / f["file"]).astype(np.float32), np.load(real_dir / f["mask"]).astype(bool))
    except (OSError, ValueError) as err:
        raise ScoreError(f"{real_dir}: cannot read the field {f['file']} or its mask {f['mask']} "
                         f"({' '.join(str(err).split())[:160]})") from None


def score(model_dir: str, real_dir: Path | None = None, only: set[str] | None = None, tta: bool = False) -> dict:
    from .models import load_model
    from .real_particles import field_row, predict_particles, score_field, summarise_both

    real_dir = Path(real_dir) if real_dir is not None else default_real_dir()
    index = fields(real_dir)
    model, config = load_model(model_dir)
    model.eval()
    rows, pool, classes, bare, particles = [], np.zeros(3), {}, [], []
    for f in index:
        if only is not None and f["file"] not in only:
            continue
        image, truth = read_pair(real_dir, f)
        pred, labels = predict_particles(model, config, image, float(f["pixel_size_A"]), tta)
        pred = pred.astype(bool)
        # Particle scores: the labels' connected components are the particles (touching labelled particles
        # count as one), with and without the border-cut ones (training/real_particles.py).
        particles.append((f"{float(f['nominal_diameter_nm']):g} nm",
                          *(score_field(labels, truth, float(f["pixel_size_A"]), b) for b in (True, False))))
        tp, n_pred, n_true = float((pred & truth).sum()), float(pred.sum()), float(truth.sum())
        pool += (tp, n_pred, n_true)
        key = f"{f['material']} {float(f['nominal_diameter_nm']):g} nm"
        classes.setdefault(key, np.zeros(3))
        classes[key] += (tp, n_pred, n_true)
        is_bare = truth.mean() <= BARE_FRACTION
        if is_bare:
            bare.append(float((pred & ~truth).mean()))
        rows.append({"file": f["file"], "class": key, "dice": 2 * tp / max(n_pred + n_true, 1),
                     "pixels": {"both": tp, "predicted": n_pred, "labelled": n_true},  # to pool any subset
                     "predicted_fraction": float(pred.mean()), "labelled_fraction": float(truth.mean()),
                     "bare_carbon": bool(is_bare), **field_row(*particles[-1][1:])})
    dice = lambda a: float(2 * a[0] / max(a[1] + a[2], 1))
    return {"model": str(model_dir), "real": str(real_dir), "tta": tta, "n_fields": len(rows),
            "pooled_dice": dice(pool),
            "dice_by_class": {k: dice(v) for k, v in sorted(classes.items(), key=_class_order)},
            "bare_carbon_false_positive_fraction": (float(np.mean(bare)) if bare else None),
            "bare_carbon_fields": len(bare), "particles": summarise_both(particles), "fields": rows}


def _class_order(item) -> tuple:
    """"Au 2.2 nm" before "Au 10 nm": by material, then by size as a number."""
    material, size, _ = item[0].rsplit(" ", 2)
    return material, float(size)


def table(result: dict) -> str:
    """The result as a plain-text table: pooled and per-class Dice, bare-carbon false positives, each field."""
    fp = result["bare_carbon_false_positive_fraction"]
    lines = [f"model {result['model']} on {result['n_fields']} real fields ({result['real']})"
             + (", 8-fold TTA" if result["tta"] else ""),
             f"{'pooled Dice':<40}{result['pooled_dice']:>8.4f}"]
    lines += [f"{'  Dice ' + k:<40}{v:>8.4f}" for k, v in result["dice_by_class"].items()]
    lines.append(f"{'bare-carbon false-positive area':<40}" +
                 (f"{fp:>8.4f}  (mean over {result['bare_carbon_fields']} fields)" if fp is not None else "     n/a"))
    lines += _particle_lines(result["particles"])
    lines.append(f"\n{'field':<48}{'class':<12}{'Dice':>7}{'pred':>7}{'label':>7}")
    for r in result["fields"]:
        lines.append(f"{r['file']:<48}{r['class']:<12}{r['dice']:>7.3f}{r['predicted_fraction']:>7.3f}"
                     f"{r['labelled_fraction']:>7.3f}" + ("  bare carbon" if r["bare_carbon"] else ""))
    return "\n".join(lines)


def _particle_lines(particles: dict) -> list[str]:
    """Particle scores away from the border (labelled particles that touch count as one), overall and per size."""
    def line(name: str, a: dict) -> str:
        if not a["count_true"] and not a["count_pred"]:
            return f"{name:<40}     n/a  (no particle away from the border)"
        f1 = f"{a['particle_f1']:>8.3f}" if a["particle_f1"] is not None else "     n/a"
        med = (f", median diameter {a['median_diameter_pred_nm']:.2f} nm for {a['median_diameter_true_nm']:.2f}"
               if a["median_diameter_error"] is not None else "")
        return f"{name:<40}{f1}  ({a['count_pred']} found for {a['count_true']} labelled{med})"

    out = ["particles away from the border, F1 (IoU >= 0.5):", line("  all", particles["all"])]
    return out + [line(f"  {k}", a) for k, a in particles["by_size"].items()]


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def draw(model_dir: str, out: Path, real_dir: Path | None = None, files: list[str] | None = None) -> None:
    """Hand-drawn (green) and predicted (red) outlines on a few real fields, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .models import load_model

    real_dir = Path(real_dir) if real_dir is not None else default_real_dir()
    model, config = load_model(model_dir)
    model.eval()
    chosen = [f for f in fields(real_dir) if files is None or f["file"] in files]
    fig, axes = plt.subplots(1, len(chosen), figsize=(2.6 * len(chosen), 2.9))
    for ax, f in zip(np.atleast_1d(axes), chosen):
        image, truth = read_pair(real_dir, f)
        pred = predict_field(model, config, image, float(f["pixel_size_A"])).astype(bool)
        rgb = np.repeat(((image - image.min()) / max(np.ptp(image), 1e-6))[..., None], 3, axis=2)
        rgb[_outline(truth)] = (0.1, 0.9, 0.1)
        rgb[_outline(pred)] = (1.0, 0.15, 0.15)
        ax.imshow(rgb)
        d = 2 * (pred & truth).sum() / max(pred.sum() + truth.sum(), 1)
        ax.set_title(f"{f['material']} {float(f['nominal_diameter_nm']):g} nm, Dice {d:.2f}", fontsize=8)
        ax.axis("off")
    fig.suptitle("real micrographs: hand-drawn (green) and predicted (red) outlines", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def draw_scenes(dataset: Path, out: Path, real_dir: Path | None = None, n: int = 4) -> None:
    """A few simulated fields (with their instance masks) beside real ones, all at the same physical scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.dataset as pads

    from generators.micrographs import resample

    real_dir = Path(real_dir) if real_dir is not None else default_real_dir()
    folder = DatasetFolder.open(dataset)  # its shards as the manifest lists them, its pixel size (one place)
    with folder.reading():
        t = pads.dataset(folder.files("parquet"), format="parquet").to_table(
            columns=["record_id", "image", "instance_mask", "n_particles", "image_size_px"])
    t = t.sort_by("record_id")
    picks = [i for i, k in enumerate(t["n_particles"].to_pylist()) if k > 0][:: max(1, len(t) // (4 * n))][:n - 1]
    picks.append(t["n_particles"].to_pylist().index(0) if 0 in t["n_particles"].to_pylist() else n - 1)
    real = [f for f in fields(real_dir)][:: max(1, 16 // n)][:n]
    fig, axes = plt.subplots(3, n, figsize=(2.4 * n, 7.4))
    for j, i in enumerate(picks):
        size = t["image_size_px"][i].as_py()
        img = np.asarray(t["image"][i].as_py(), np.float32).reshape(size, size)
        lab = np.asarray(t["instance_mask"][i].as_py(), np.uint8).reshape(size, size)
        lo, hi = np.percentile(img, [0.5, 99.5])
        axes[0, j].imshow(np.clip(img, lo, hi), cmap="gray")
        axes[0, j].set_title(f"simulated, {t['n_particles'][i].as_py()} particles", fontsize=8)
        axes[1, j].imshow(lab, cmap="tab20", interpolation="nearest", vmin=0, vmax=20)
        axes[1, j].set_title("instance mask", fontsize=8)
    px = folder.pixel_size_A
    for j, f in enumerate(real):
        img = resample(read_pair(real_dir, f)[0], float(f["pixel_size_A"]), px)
        axes[2, j].imshow(img, cmap="gray")
        axes[2, j].set_title(f"real {f['material']} {float(f['nominal_diameter_nm']):g} nm", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"simulated scenes (top) and real micrographs (bottom), all at {px} Å/px", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder (training's OUTPUT_DIR/model)")
    p.add_argument("--real", default=None, help="folder with index.csv and X.npy / X_mask.npy pairs "
                   "(default: the bundled real set)")
    p.add_argument("--fields", choices=["all", "finetune", "benchmark"], default="all")
    p.add_argument("--split-from", default=None, help="imported folder whose split names the fields (--fields)")
    p.add_argument("--figure", default=None, help="also draw predictions on a few fields into this PNG")
    p.add_argument("--tta", action="store_true", help="predict with the 8 rotations/mirror images averaged")
    p.add_argument("--out", default=None, help="write the JSON here too")
    p.add_argument("--json", action="store_true", help="print the JSON rather than the table")
    p.add_argument("--scenes-figure", nargs=2, metavar=("DATASET", "PNG"), default=None,
                   help="also draw simulated fields of DATASET beside real ones into PNG")


def run(args) -> dict:
    """What the command line asks for (arguments of `add_arguments`): the score, and any figure."""
    if args.fields != "all" and not args.split_from:
        raise ScoreError("--fields needs --split-from IMPORTED_FOLDER (the folder `temsynth import` made)")
    only = fields_of_split(Path(args.split_from), args.fields) if args.fields != "all" else None
    real = Path(args.real) if args.real else None
    result = score(args.model, real, only, args.tta)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.figure:
        draw(args.model, Path(args.figure), real, [f for f in FIGURE_FIELDS if only is None or f in only] or None)
    if args.scenes_figure:
        draw_scenes(Path(args.scenes_figure[0]), Path(args.scenes_figure[1]), real)
    return result


def main(argv=None, prog: str = "temsynth score", epilog: str | None = None) -> int:

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)

    def score() -> int:  # ScoreError, ModelFolderError, MicrographError ...: status 2
        result = run(args)
        print(json.dumps(result, indent=2) if args.json else table(result))
        return 0

    return exit_status(prog, score)
