"""Masks: where the particle-only exit wave's phase exceeds a threshold, at the detector's pixel size.

The phase is taken wrapped, |arg psi| > threshold, so columns whose phase passes pi still count. Resolved
atomic columns leave gaps of vacuum-like phase between them; a morphological closing of `closing_radius_A`
bridges gaps narrower than twice that radius without moving the particle's outer edge, and interior holes
(phase wrapped to a multiple of 2 pi) are filled. Frozen-phonon configurations vote per simulation pixel.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .imaging import bin_mean


def disk(radius_px: float) -> np.ndarray:
    r = int(np.ceil(radius_px))
    y, x = np.mgrid[-r: r + 1, -r: r + 1]
    return (x**2 + y**2) <= radius_px**2 + 1e-9


def phase_coverage(particle_waves: np.ndarray, phase_threshold_rad: float) -> np.ndarray:
    """Per simulation sample, the fraction of frozen-phonon configurations whose |phase| passes the threshold."""
    return (np.abs(np.angle(particle_waves)) > phase_threshold_rad).mean(axis=0).astype(np.float32)


def mask_from_coverage(coverage: np.ndarray, closing_radius_px: float, blur_sigma_px: float = 0.0,
                       blur_threshold: float = 0.1) -> np.ndarray:
    """uint8 mask (1 = particle) from the coverage averaged onto the output pixels: majority vote, closing,
    holes filled, then (blur_sigma_px > 0) the seed study's margin: Gaussian blur > blur_threshold, computed with
    periodic edges as the cell is periodic."""
    mask = coverage >= 0.5
    if closing_radius_px > 0:
        pad = int(np.ceil(closing_radius_px)) + 1
        padded = np.pad(mask, pad)
        padded = ndimage.binary_closing(padded, structure=disk(closing_radius_px))
        mask = padded[pad:-pad, pad:-pad]
    mask = ndimage.binary_fill_holes(mask)
    if blur_sigma_px > 0:
        mask = ndimage.gaussian_filter(mask.astype(np.float32), blur_sigma_px, mode="wrap") > blur_threshold
    return mask.astype(np.uint8)


def particle_mask(particle_waves: np.ndarray, bin_factor: int, phase_threshold_rad: float,
                  closing_radius_px: float) -> np.ndarray:
    """uint8 mask (1 = particle) at detector pixels from (configs, N, N) particle-only exit waves."""
    coverage = bin_mean(phase_coverage(particle_waves, phase_threshold_rad), bin_factor)
    return mask_from_coverage(coverage, closing_radius_px)


def instance_labels(mask: np.ndarray, atoms_xy_A: np.ndarray, owner: np.ndarray, pixel_size_A: float,
                    field_A: float, sample_offset_A: float = 0.0) -> np.ndarray:
    """Instance mask: each mask pixel takes the label (1-based) of the particle whose nearest atom is closest
    to the pixel centre, with periodic distances (the cell is periodic). 0 stays background.

    Pixel i's centre lies at (i + 1/2) * pixel_size_A - sample_offset_A in the cell (the offset is half a
    multislice sample: sample j sits at j * sampling and stands for the cell around it)."""
    from scipy.spatial import cKDTree

    labels = np.zeros(mask.shape, np.uint8)
    if len(atoms_xy_A) == 0 or not mask.any():
        return labels
    rows, cols = np.nonzero(mask)
    centres = np.c_[(cols + 0.5) * pixel_size_A - sample_offset_A, (rows + 0.5) * pixel_size_A - sample_offset_A]
    tree = cKDTree(np.mod(atoms_xy_A, field_A), boxsize=field_A)
    _, nearest = tree.query(np.mod(centres, field_A))
    labels[rows, cols] = owner[nearest] + 1
    return labels
