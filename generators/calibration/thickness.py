"""The support's thickness from its speckle: bare carbon of a few thicknesses simulated under each field's own
fitted imaging conditions (defocus, astigmatism, focal spread, energy, pixel size), and the field's measured
speckle contrast read off that curve.

Only from counts: a display rendering's grey mapping scales the contrast by an unknown factor. The simulated
fields use an ideal camera (the camera's signal MTF is not measured, `measure.Camera`), at a dose high enough
that shot noise adds under 0.1 % of contrast; the measured contrast already has the shot noise's variance taken
out (`measure._texture`).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from ..config import GenerationConfig, from_dict

# Log-spaced; the realistic preset draws 10-100 Å. A contrast outside the curve is clipped to its end and said.
THICKNESSES_A = (10.0, 20.0, 40.0, 80.0)
SIM_DOSE = 1e7  # e/Å²: shot noise ~0.1 % of the mean at 0.35 Å pixels
SIM_SIZE_PX = 256


def carbon_config(base: GenerationConfig, ctf, pixel_size_A: float, thickness_A: float,
                  size_px: int = SIM_SIZE_PX) -> GenerationConfig:
    """Bare support of one thickness under one field's fitted conditions (the base config's support kind and
    composition). The fit dates the carbon's mid-plane; the simulation's defocus is its exit plane's."""
    d = base.model_dump(mode="json", exclude_none=True)
    d.update(name="thickness", n_structures=1, conditions_per_structure=1, materials=d.get("materials", {}))
    st = d["structure"]
    for key in ("area_fraction", "core_shell"):
        st.pop(key, None)
    # no particles: their size and shape only have to pass the scene checks of a field this small
    st.update(n_particles=0, allow_border_cuts=True, radius_A=5.0, shape="sphere")
    st["substrate"].update(thickness_A=thickness_A, bank_size=1)
    d["simulation"].update(energy_keV=ctf.energy_keV, sampling_A=pixel_size_A / 2)
    im = d["imaging"]
    for key in ("field_size_px", "detector_pixel_size_A", "chromatic"):
        im.pop(key, None)
    im.update(image_size_px=size_px, pixel_size_A=pixel_size_A, detector={"type": "ideal"},
              defocus_nm=ctf.defocus_nm - thickness_A / 20, astigmatism_nm=ctf.astigmatism_nm,
              astigmatism_angle_deg=ctf.astigmatism_angle_deg, focal_spread_nm=ctf.focal_spread_nm,
              cs_mm=ctf.cs_mm, dose_e_per_A2=SIM_DOSE)
    return from_dict(d, "calibrate: the thickness curve")


def contrast_curve(base: GenerationConfig, ctf, pixel_size_A: float, cache_dir: Path | None = None
                   ) -> list[tuple[float, float]]:
    """(thickness Å, speckle contrast std/mean) of simulated bare support under the fitted conditions."""
    from ..run import simulate_structure

    out = []
    with tempfile.TemporaryDirectory(prefix="temsynth-thickness-") as tmp:
        cache = cache_dir or Path(tmp)
        for t in THICKNESSES_A:
            images = simulate_structure(carbon_config(base, ctf, pixel_size_A, t), 0, cache)[0]
            img = np.asarray(images[0], np.float64)
            out.append((t, float(np.std(img) / np.mean(img))))
    return out


def thickness_from_contrast(contrast: float, curve: list[tuple[float, float]]) -> tuple[float, str]:
    """(thickness Å, how it was read): log-log interpolation on the curve, clipped to its ends."""
    t = np.log([p[0] for p in curve])
    c = np.log([p[1] for p in curve])
    if not np.all(np.diff(c) > 0):
        return float("nan"), "the simulated contrast does not grow with thickness under these conditions"
    x = math.log(contrast)
    if x <= c[0]:
        return curve[0][0], f"at or below the curve's thinnest ({curve[0][0]:g} Å)"
    if x >= c[-1]:
        return curve[-1][0], f"at or above the curve's thickest ({curve[-1][0]:g} Å)"
    return float(np.exp(np.interp(x, c, t))), "interpolated on the simulated curve"
