"""Use a saved model: masks for micrograph files, scores on a dataset folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import AugmentConfig, Benchmark
from .data import benchmark_set, normalise, source_json
from .metrics import scores
from .models import load_model


def _model_pixel_size(config: dict) -> float | None:
    sizes = {px for src in config.get("train_data", []) for px in src.get("pixel_sizes_A") or []}
    return sizes.pop() if len(sizes) == 1 else None


@torch.no_grad()
def predict_array(model, image: np.ndarray, normalise_kind: str) -> np.ndarray:
    x = torch.from_numpy(normalise(np.asarray(image, np.float32), normalise_kind)[None, None].copy())
    return (model(x)[0, 0] > 0).numpy().astype(np.uint8)


def predict_file(model_dir: str | Path, image_path: str | Path, out_path: str | Path | None = None,
                 pixel_size_A: float | None = None) -> dict:
    """Mask of one micrograph, resampled to the pixel size the model was trained at and back.

    The mask is written as 8-bit 0/255 for PNG/TIFF (viewable) and 0/1 for .npy.
    """
    from scipy import ndimage

    from generators.micrographs import MicrographError, read_micrograph, resample, resample_mask

    model, config = load_model(model_dir)
    image, file_px, fmt = read_micrograph(image_path)
    px = pixel_size_A or file_px
    model_px = _model_pixel_size(config)
    note = None
    work = image
    if model_px and px and abs(px / model_px - 1) > 0.01:
        work = resample(image, px, model_px, order=1)
    elif model_px and not px:
        note = f"no pixel size in {Path(image_path).name} nor --pixel-size-A: assumed the model's {model_px} Å"
    mask = predict_array(model, work, config["training_config"]["augment"]["normalise"])
    if work is not image:
        # Back to the file's pixels the way training tiles were made; rounding may leave one row to pad or drop.
        mask = resample_mask(mask, model_px, px)
        h, w = image.shape
        mask = np.pad(mask, ((0, max(0, h - mask.shape[0])), (0, max(0, w - mask.shape[1]))))[:h, :w]
    if out_path is not None:
        _write_mask(mask, Path(out_path), MicrographError)
    _, n_particles = ndimage.label(mask)
    return {"image": str(image_path), "format": fmt, "shape": list(image.shape), "pixel_size_A": px,
            "model_pixel_size_A": model_px, "particle_fraction": float(mask.mean()), "n_particles": int(n_particles),
            "mask": str(out_path) if out_path else None, **({"note": note} if note else {})}


def _write_mask(mask: np.ndarray, out: Path, error) -> None:
    from PIL import Image

    from generators.writers import atomic_path

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
             batch_size: int = 16) -> dict:
    """Dice/IoU of a saved model on a split of a dataset folder (optionally narrowed by a query)."""
    from torch.utils.data import DataLoader

    from .train import evaluate_counts

    model, config = load_model(model_dir)
    bench = Benchmark(name="evaluate", path=str(dataset_dir), split=split, query=query)
    augment = AugmentConfig.model_validate(config["training_config"]["augment"])
    loader = DataLoader(benchmark_set(bench, augment, "dataset"), batch_size=batch_size)
    src = source_json(bench)
    return {"model": str(model_dir), "dataset": str(dataset_dir), "split": split, "query": query,
            "fingerprint": src["fingerprint"], **scores(evaluate_counts(model, loader))}
