"""Use a saved model: masks for micrograph files, scores on a dataset folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from generators.files import atomic_path
from generators.micrographs import MicrographError, check_min_side, read_micrograph, resample, resample_mask

from .config import Benchmark
from .data import DataError, benchmark_set, normalise, open_source, source_json
from .metrics import counts, scores
from .models import load_model


# ---------------------------------------------------------------- tiled inference
def _geometry(model) -> tuple[int, int, int]:
    """(align, margin, tile) in pixels for a model.

    align: tile corners on multiples of the U-Net's 2**depth, so max-pooling grids coincide with a whole-field
    pass. margin: at least half the receptive field (14 * 2**depth - 9 px for our U-Net), so each tile's kept
    core sees exactly the context it would see in the whole field. SegFormer's attention is global: tiles of
    its training size, with a generous margin."""
    depth = getattr(model, "depth", None)
    if depth is None:  # SegFormer: strides 4, 2, 2, 2
        align, radius = 32, 64
    else:
        align = 2 ** depth
        radius = (14 * 2 ** depth - 9 + 1) // 2
    margin = -(-radius // align) * align
    tile = max(512, 4 * margin)
    return align, margin, -(-tile // align) * align


def min_field_px(model) -> int:
    """The smallest side a model can segment meaningfully: two poolings' worth of its deepest level."""
    depth = getattr(model, "depth", None)
    return 32 if depth is None else max(16, 2 ** (depth + 1))


def tile_windows(h: int, w: int, tile: int, margin: int):
    """(input window, kept core) slices covering an h x w field: cores of tile - 2*margin px on a regular grid,
    each window its core plus up to `margin` px of context on every side (clipped at the field's edges)."""
    core = tile - 2 * margin
    for y0 in range(0, h, core):
        for x0 in range(0, w, core):
            wy, wx = max(0, y0 - margin), max(0, x0 - margin)
            win = (slice(wy, min(h, y0 + core + margin)), slice(wx, min(w, x0 + core + margin)))
            keep = (slice(y0, min(h, y0 + core)), slice(x0, min(w, x0 + core)))
            yield win, keep


@torch.no_grad()
def logits_tiled(model, x: np.ndarray, out: np.ndarray | None = None, tile: int | None = None,
                 margin: int | None = None, channels: bool = False) -> np.ndarray:
    """Particle logits of a normalised (H, W) field computed tile by tile: memory bounded by one tile whatever
    H, W.

    Away from tile seams by more than the receptive field this is the whole-field pass (exactly, for U-Nets
    without GroupNorm; GroupNorm's statistics are per tile). `out` (H, W) may be uint8: then it gets the mask.
    channels: every output channel, (C, H, W) float32 (an instance model's distance channel too).
    """
    align, m, t = _geometry(model)
    tile, margin = tile or t, m if margin is None else margin
    h, w = x.shape
    if out is None and not channels:
        out = np.empty((h, w), np.float32)
    device = next(model.parameters()).device
    if h <= tile and w <= tile:
        wins = [((slice(0, h), slice(0, w)), (slice(0, h), slice(0, w)))]
    else:
        wins = tile_windows(h, w, tile, margin)
    for win, keep in wins:
        logits = model(torch.from_numpy(np.ascontiguousarray(x[win]))[None, None].to(device))[0].float().cpu()
        part = logits[:, keep[0].start - win[0].start:keep[0].stop - win[0].start,
                      keep[1].start - win[1].start:keep[1].stop - win[1].start].numpy()
        if channels:
            if out is None:
                out = np.empty((part.shape[0], h, w), np.float32)
            out[(slice(None), *keep)] = part
        else:
            out[keep] = (part[0] > 0) if out.dtype == np.uint8 else part[0]
    return out


def check_field(image: np.ndarray, name: str, model, error, size: bool = True) -> None:
    """Refuse what no model can answer: non-finite pixels, a constant image, a field smaller than the model."""
    if not np.all(np.isfinite(image)):
        raise error(f"{name}: contains NaN or infinite pixels; replace them before predicting")
    lo, hi = float(image.min()), float(image.max())
    if lo == hi:
        raise error(f"{name}: every pixel is {lo:g}; a constant image holds nothing to segment")
    need = min_field_px(model)
    if size and min(image.shape) < need:
        raise error(f"{name}: {image.shape[1]} x {image.shape[0]} px at the model's pixel size is smaller than the "
                    f"{need} px the model needs; give a larger field of view")


DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]


def _dihedral(a: np.ndarray, k: int, flip: bool, inverse: bool = False) -> np.ndarray:
    """The symmetry on the last two axes of a (H, W) field or (C, H, W) logits."""
    if inverse:
        a = np.rot90(a, -k, axes=(-2, -1))
        return a[..., ::-1] if flip else a
    return np.rot90(a[..., ::-1] if flip else a, k, axes=(-2, -1))


def predict_array(model, image: np.ndarray, normalise_kind: str, tta: bool = False) -> np.ndarray:
    """Mask (uint8 0/1) of one field, normalised as a whole, inferred tile by tile.

    tta: average the logits over the field's 8 rotations and mirror images (the symmetries training augments
    with), which makes the mask exactly equivariant under them at 8x the cost."""
    x = normalise(np.asarray(image, np.float32), normalise_kind)
    if not tta:
        return logits_tiled(model, x, out=np.empty(x.shape, np.uint8))
    return (logits_dihedral(model, x) > 0).astype(np.uint8)


def logits_dihedral(model, x: np.ndarray, channels: bool = False) -> np.ndarray:
    """Logits of a normalised field averaged over its 8 rotations and mirror images, each mapped back
    (channels: every output channel, (C, H, W))."""
    total = None
    for k, flip in DIHEDRAL:
        view = np.ascontiguousarray(_dihedral(x, k, flip))
        part = _dihedral(logits_tiled(model, view, channels=channels), k, flip, inverse=True)
        total = part.copy() if total is None else total + part
    return total / len(DIHEDRAL)


def field_logits(model, config, image: np.ndarray, pixel_size_A: float | None, tta: bool = False,
                 name: str = "micrograph") -> tuple[np.ndarray, float | None]:
    """(C, h, w) logits of a whole field at the model's pixel size (the field resampled to it, as for
    `predict`), and that pixel size (the field's own when the model has none)."""
    model_px = config.pixel_size_A or pixel_size_A
    work = image
    if model_px and pixel_size_A and abs(pixel_size_A / model_px - 1) > 0.01:
        work = resample(image, pixel_size_A, model_px, order=1)
    else:
        model_px = pixel_size_A or model_px
    check_field(work, name, model, MicrographError)
    x = normalise(np.asarray(work, np.float32), config.augment.normalise)
    del work
    return (logits_dihedral(model, x, channels=True) if tta else logits_tiled(model, x, channels=True)), model_px


def predict_file(model_dir: str | Path, image_path: str | Path, out_path: str | Path | None = None,
                 pixel_size_A: float | None = None, tta: bool = False) -> dict:
    """Mask of one micrograph, resampled to the pixel size the model was trained at and back.

    The mask is written as 8-bit 0/255 for PNG/TIFF (viewable) and 0/1 for .npy.
    """
    from scipy import ndimage

    model, config = load_model(model_dir)
    if pixel_size_A is not None and not (np.isfinite(pixel_size_A) and pixel_size_A > 0):
        raise MicrographError(f"--pixel-size-A must be a positive number, got {pixel_size_A}")
    image, file_px, fmt = read_micrograph(image_path)
    name = Path(image_path).name
    check_min_side(image.shape, name)
    check_field(image, name, model, MicrographError, size=False)
    px = pixel_size_A or file_px
    model_px = config.pixel_size_A
    note = None
    if model_px and not px:
        note = f"no pixel size in {Path(image_path).name} nor --pixel-size-A: assumed the model's {model_px} Å"
    mask = mask_at(model, config, image, px, name, tta)
    if out_path is not None:
        _write_mask(mask, Path(out_path), MicrographError)
    _, n_particles = ndimage.label(mask)
    return {"image": str(image_path), "format": fmt, "shape": list(image.shape), "pixel_size_A": px,
            "model_pixel_size_A": model_px, "particle_fraction": float(mask.mean()), "n_particles": int(n_particles),
            "mask": str(out_path) if out_path else None, **({"note": note} if note else {})}


def mask_at(model, config, image: np.ndarray, px: float | None, name: str, tta: bool = False) -> np.ndarray:
    """The model's mask of `image` (pixel size `px` Å), predicted at the model's own pixel size and resampled
    back to the image's pixels."""
    model_px = config.pixel_size_A
    work = image
    if model_px and px and abs(px / model_px - 1) > 0.01:
        work = resample(image, px, model_px, order=1)
    check_field(work, name, model, MicrographError)
    resampled = work is not image
    mask = predict_array(model, work, config.augment.normalise, tta)
    del work  # the resampled field can be 4x the file's pixels: free it before resampling the mask back
    if resampled:
        # Back to the file's pixels the way training tiles were made; rounding may leave one row to pad or drop.
        mask = resample_mask(mask, model_px, px)
        h, w = image.shape
        mask = np.pad(mask, ((0, max(0, h - mask.shape[0])), (0, max(0, w - mask.shape[1]))))[:h, :w]
    return mask


def segmenter(model_dir: str | Path):
    """(image, pixel size in Å) -> mask with a model loaded once: `temsynth calibrate --model`."""
    model, config = load_model(model_dir)
    return lambda image, px: mask_at(model, config, image, px, "micrograph").astype(bool)


def _write_mask(mask: np.ndarray, out: Path, error) -> None:
    from PIL import Image

    ext = out.suffix.lower()
    if ext not in (".png", ".tif", ".tiff", ".npy"):
        raise error(f"--out {out}: write the mask as .png, .tif or .npy")
    with atomic_path(out) as tmp:
        if ext == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, mask)
        else:
            Image.fromarray(mask * 255).save(tmp, format="PNG" if ext == ".png" else "TIFF")


def evaluate(model_dir: str | Path, dataset_dir: str | Path, query: str | None = None, split: str = "test",
             batch_size: int = 16, tables: str | Path | None = None) -> dict:
    """Dice/IoU and the particle scores (training/instances.py) of a saved model on a split of a dataset folder
    (optionally narrowed by a query). tables: a new folder for the per-particle and per-record tables of
    `temsynth measure`, the predicted particles beside the true ones (training/measure.py `truth_tables`)."""
    from torch.utils.data import DataLoader

    from .instances import aggregate, match, measure, particles_from_logits, relabel

    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"--batch-size must be a positive integer, got {batch_size}")
    model, config = load_model(model_dir)
    bench = Benchmark(name="evaluate", path=str(dataset_dir), split=split, query=query)
    augment = config.augment
    folder = open_source(bench, "dataset")  # read and checked once, for its records and its provenance
    data = benchmark_set(bench, augment, "dataset", instances=True, folder=folder)
    loader = DataLoader(data, batch_size=batch_size)
    src = source_json(bench, folder)
    _, _, tile = _geometry(model)
    out, matches, records = [], [], []
    with torch.no_grad():
        for batch in loader:
            x = batch["image"]
            if max(x.shape[-2:]) <= tile:
                logits = model(x)
            else:  # large fields: tile by tile, memory bounded (images are normalised per image already)
                logits = torch.stack([torch.from_numpy(logits_tiled(model, im[0].numpy(), channels=True))
                                      for im in x])
            out.append(counts(logits, batch["mask"]).numpy())
            for lg, inst, px in zip(logits.float().numpy(), batch["instances"].numpy(), batch["pixel_size_A"].tolist()):
                pred, true = particles_from_logits(lg), relabel(inst)
                m = match(pred, true, px)
                matches.append({k: m[k] for k in ("counts", "pred_diameters_nm", "true_diameters_nm")})
                if tables is not None:
                    conf = 1.0 / (1.0 + np.exp(-lg[0]))
                    records.append((measure(pred, px, conf), measure(true, px), m["pred_match"], m["true_match"],
                                    pred.size))
    c = np.concatenate(out) if out else np.zeros((0, 3))
    result = {"model": str(model_dir), "dataset": str(dataset_dir), "split": split, "query": query,
              "fingerprint": src["fingerprint"], **scores(c), "particles": aggregate(matches)}
    if tables is not None:
        from .measure import truth_tables

        result["tables"] = truth_tables(data.ids, records, tables)
    return result
