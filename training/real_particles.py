"""Particle scores on the real, hand-labelled micrographs (benchmarks/bench_real.py, and the `score` verb).

The labels are binary masks, drawn by hand: their particles are the mask's 4-connected components. Labelled
particles that touch each other therefore count as ONE particle (the labels cannot say where one ends); a model
that separates them is scored against the merged outline, and matches it only if one of its particles covers it
at IoU >= 0.5. On the real set this concerns the agglomerate fields (one 5 nm field is 86 % particle): their
particle scores measure agreement with the labels' merged outlines, not the truth of the separation.
Particles touching a field's border are ignored on both sides (training/instances.py `match`).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .instances import aggregate, connected_components, largest_pieces, match, particles_from_logits


def predict_particles(model, config, image: np.ndarray, pixel_size_A: float, tta: bool = False):
    """(mask, labels) of a field at the file's pixels: the model's logits at its pixel size (`field_logits`),
    the mask resampled back as `predict` does, the particles' labels carried back by nearest neighbour and
    fitted to that mask (a mask pixel the labels miss by resampling, within one model pixel of a particle, takes
    its label; specks the size floor dropped stay out; a sliver the resampled mask cuts off a particle stays in
    the mask and out of the particles, `largest_pieces`)."""
    from generators.micrographs import resample, resample_mask

    from .predict import field_logits

    logits, model_px = field_logits(model, config, image, pixel_size_A, tta)
    labels = particles_from_logits(logits)
    mask = (logits[0] > 0).astype(np.uint8)
    del logits
    h, w = image.shape
    if labels.shape != image.shape:
        mask = _fit(resample_mask(mask, model_px, pixel_size_A), h, w)
        labels = _fit(resample(labels, model_px, pixel_size_A, order=0), h, w)
        missing = (mask > 0) & (labels == 0)
        if missing.any() and labels.any():
            dist, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
            missing &= dist <= model_px / pixel_size_A + 1
            labels[missing] = labels[iy[missing], ix[missing]]
        labels[mask == 0] = 0
        labels = largest_pieces(labels)
    return mask, labels


def _fit(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Rounding in the resampling may leave one row or column to pad or drop."""
    return np.pad(a, ((0, max(0, h - a.shape[0])), (0, max(0, w - a.shape[1]))))[:h, :w]


def score_field(labels: np.ndarray, truth_mask: np.ndarray, pixel_size_A: float, ignore_border: bool = True) -> dict:
    """`match` of a field's predicted particles against its labelled mask's connected components."""
    return match(labels, connected_components(truth_mask), pixel_size_A, ignore_border)


def summarise(fields: list[tuple[str, dict]]) -> dict:
    """Particle scores over all fields and per nominal size; fields are given as (size, e.g. "2.2 nm", match)."""
    by_size: dict[str, list[dict]] = {}
    for size, m in fields:
        by_size.setdefault(size, []).append(m)
    return {"all": aggregate([m for _, m in fields]),
            "by_size": {k: aggregate(v) for k, v in sorted(by_size.items(), key=lambda kv: float(kv[0].split()[0]))}}


def summarise_both(fields: list[tuple[str, dict, dict]]) -> dict:
    """`summarise` of the matches away from the border (the headline: sizes of whole particles) and, under
    "with_border", of every particle with its cut size: on the real set's 5 and 10 nm fields (about 10 nm
    across) every labelled particle touches the border, so only that comparison says anything there."""
    return {**summarise([(s, m) for s, m, _ in fields]), "with_border": summarise([(s, m) for s, _, m in fields])}


def field_row(m: dict, with_border: dict) -> dict:
    """What a per-field row of the real-set scores records of its particles (counts away from the border, and
    of all particles)."""
    c = m["counts"]
    return {"particles_predicted_all": with_border["counts"]["n_pred"],
            "particles_labelled_all": with_border["counts"]["n_true"], "particles_predicted": c["n_pred"],
            "particles_labelled": c["n_true"], "particles_matched": c["tp"],
            "median_diameter_predicted_nm": _median(m["pred_diameters_nm"]),
            "median_diameter_labelled_nm": _median(m["true_diameters_nm"])}


def _median(values) -> float | None:
    return float(np.median(values)) if len(values) else None
