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


def particle_mask(particle_waves: np.ndarray, bin_factor: int, phase_threshold_rad: float,
                  closing_radius_px: float) -> np.ndarray:
    """uint8 mask (1 = particle) at detector pixels from (configs, N, N) particle-only exit waves."""
    above = (np.abs(np.angle(particle_waves)) > phase_threshold_rad).mean(axis=0)  # fraction of configurations
    coverage = bin_mean(above.astype(np.float32), bin_factor)
    mask = coverage >= 0.5
    if closing_radius_px > 0:
        pad = int(np.ceil(closing_radius_px)) + 1
        padded = np.pad(mask, pad)
        padded = ndimage.binary_closing(padded, structure=disk(closing_radius_px))
        mask = padded[pad:-pad, pad:-pad]
    mask = ndimage.binary_fill_holes(mask)
    return mask.astype(np.uint8)
