"""A generation config whose imaging distributions span what was measured on the user's micrographs.

Measured values replace the base preset's ranges as `empirical` distributions (each draw takes one
micrograph's value plus a jitter); what could not be measured keeps the preset's range, and every field says
which in the notes that `temsynth calibrate` prints and the report shows.
"""
from __future__ import annotations

import math

import numpy as np

from ..config import Choice, Fixed, GenerationConfig, LogUniform, from_dict
from .measure import Measurement

# Components of a first segmentation under this equivalent radius (a cluster of under ~10 atoms) cannot be told
# from the carbon's speckle, whose grain is 3-5 Å: they are not counted as particles.
SPECK_RADIUS_A = 3.0
# A fit's own error (tests/test_calibration.py: within 1 nm) and a session's drift between fields.
DEFOCUS_JITTER_NM = 2.0
ASTIGMATISM_JITTER_NM = 0.3
FOCAL_SPREAD_JITTER_NM = 0.3
# The noise fall-off's σ on fields blurred by a known Gaussian after the camera: within 0.07 Å up to 1.4 px
# (tests/test_calibration.py::test_a_renderings_blur_read_off_the_noise_and_proposed).
OUTPUT_BLUR_JITTER_A = 0.05


def carbon_half_thickness_nm(cfg: GenerationConfig) -> float:
    """Half the typical carbon thickness of the base config (geometric mean of a log-uniform range)."""
    t = cfg.structure.substrate.thickness_A
    lo, hi = t.support()
    mid = math.sqrt(lo * hi) if isinstance(t, LogUniform) and lo > 0 else (lo + hi) / 2
    return mid / 20


def _empirical(values, jitter, low=None, high=None) -> dict:
    d = {"values": [round(float(v), 2) for v in values], "jitter_sd": jitter}
    if low is not None:
        d["low"] = low
    if high is not None:
        d["high"] = high
    return {"empirical": d}


def propose(measurements: list[Measurement], base: GenerationConfig, name: str,
            cs_given: float | None = None, particles: list[dict] | None = None,
            dose_given: tuple[float, ...] | None = None) -> tuple[dict, list[str]]:
    """(config as a plain mapping, one note per field: measured or kept, and why).
    cs_given: the microscope's Cs (mm) as the user gave it (--cs-mm): the rings were fitted with it, so the
    simulation uses it too. particles: `run.particle_sizes` of every segmented field, those whose spectrum could
    not be fitted too (a field crowded with large particles has little carbon: leaving it out would draw the
    sizes small); by default the fitted measurements' own. dose_given: the exposure (e/Å²) as the user gave it
    (--dose-e-per-A2), one value or a range: the acquisition's record, where display values hide the dose."""
    data = base.model_dump(mode="json", exclude_none=True)
    data["name"] = name
    im = data["imaging"]
    notes = []

    # The rings were fitted at the micrographs' energy: the simulation must run at it, or its rings would not be
    # the measured ones (chi goes as lambda df k^2).
    energy = measurements[0].ctf.energy_keV
    if base.simulation.energies_keV != (energy,):
        data["simulation"]["energy_keV"] = energy
    notes.append(f"simulation.energy_keV: {energy:g}, the micrographs' (given with --energy-keV, else the base "
                 "config's), at which the rings were fitted")

    # Thon rings date the carbon's middle, a multislice's defocus its exit plane: the carbon's mid-plane lies
    # half its thickness before it (measured on simulated fields: the fit reads exit + t/2).
    half = carbon_half_thickness_nm(base)
    values = []
    ambiguous = alternatives = 0
    for m in measurements:
        t = m.texture.thickness_A
        h = t / 20 if t and math.isfinite(t) else half  # the field's own support, where it was measured
        found = _plausible_defoci(m)
        alternatives += len(found) > 1
        if m.ctf.sign_ambiguous:
            ambiguous += 1
            found += [-d for d in found]
        values += [d - h for d in found]
    im["defocus_nm"] = _empirical(sorted(values), DEFOCUS_JITTER_NM, -5000, 5000)
    notes.append(f"imaging.defocus_nm: measured on {len(measurements)} micrographs (Thon-ring fit, minus "
                 f"{half:.1f} nm from the carbon's mid-plane to its exit plane)"
                 + (f"; on {alternatives} of them the spectrum allows other defoci as well (within one unit of "
                    "chi-square of the best), which are kept too" if alternatives else "")
                 + (f"; the sign could not be told on {ambiguous} of them (|Cs| too small for the rings to show "
                    "it), so both signs are kept" if ambiguous else ""))
    im["astigmatism_nm"] = _empirical([m.ctf.astigmatism_nm for m in measurements], ASTIGMATISM_JITTER_NM, 0, 1000)
    notes.append("imaging.astigmatism_nm: measured (2-D fit of the rings); angle kept uniform (fields rotate "
                 "with the specimen)")
    notes.append(_focal_spread(measurements, base, im))
    notes.append(f"imaging.image_spread_A: kept ({_describe(base.imaging.image_spread_A)}): a Gaussian fall-off in k "
                 "that the rings' envelope does not tell from the focal spread and the camera's MTF")
    notes.append(_output_blur(measurements, base, im))
    if cs_given is not None:
        # another microscope's Cs (an uncorrected lens: ~1 mm) moves every ring; the defoci above were fitted with it
        im["cs_mm"] = float(cs_given)
        notes.append(f"imaging.cs_mm: {cs_given:g}, as given (--cs-mm), with which the rings were fitted")
    else:
        notes.append(f"imaging.cs_mm: kept ({_describe(base.imaging.cs_mm)}): the rings of a near-focus, corrected "
                     "lens do not fix Cs; give --cs-mm for the fit if yours is known")

    notes.append(_dose(measurements, base, im, dose_given))
    notes.append(_camera(measurements, im))
    thick = [t for t in (m.texture.thickness_A for m in measurements) if t and math.isfinite(t)]
    if thick and len(thick) == len(measurements):
        lo, hi = max(2.0, min(thick) / 1.25), max(thick) * 1.25
        data["structure"]["substrate"]["thickness_A"] = {"loguniform": [round(lo, 1), round(hi, 1)]}
        notes.append(f"structure.substrate.thickness_A: from the speckle contrast of {len(thick)} fields against "
                     f"simulated support under each field's fitted conditions ({min(thick):.0f}-{max(thick):.0f} Å), "
                     "widened 1.25x each way")
    else:
        notes.append("structure.substrate.thickness_A: kept (" + _describe(base.structure.substrate.thickness_A)
                     + "): " + next((m.texture.thickness_why or m.texture.why for m in measurements
                                     if not m.texture.thickness_A), measurements[0].texture.why))

    if particles is None:
        particles = [m.particles for m in measurements]
    sized = [p for p in particles if p.get("radii_A") is not None]
    if sized:
        found = np.concatenate([np.asarray(p["radii_A"], float) for p in sized])
        radii = found[found >= SPECK_RADIUS_A]
        cut = [r for p in sized for r in p.get("border_radii_A", ()) if r >= SPECK_RADIUS_A]
        cover = [p["coverage"] for p in sized]
        st = data["structure"]
        if len(radii) >= 3:
            lo, hi = np.percentile(radii, [5, 95])
            lo, hi = max(2.0, float(lo) * 0.8), min(500.0, float(hi) * 1.2)
            note = (f"structure.radius_A: from the model's masks ({len(radii)} particles, equivalent radii "
                    f"{np.min(radii):.0f}-{np.max(radii):.0f} Å), 5th-95th percentile widened 20 %")
            if len(radii) < len(found):
                note += f"; {len(found) - len(radii)} specks under {SPECK_RADIUS_A:g} Å left out"
            if cut and max(cut) * 1.2 > hi:
                hi = min(500.0, max(cut) * 1.2)
                note += (f"; up to {hi:.0f} Å: the largest particle the fields' borders cut shows {max(cut):.0f} Å "
                         "(its visible part, a lower bound), widened alike")
            least = base.least_radius_A()  # the proposal draws the base's materials and shapes
            if least is not None and lo < least[0]:
                lo = float(math.ceil(least[0]))
                note += f"; from {lo:g} Å, the smallest {least[1]} of {least[2]} ase builds"
            st["radius_A"] = {"loguniform": [round(lo, 1), round(max(hi, lo * 1.5), 1)]}
            notes.append(note)
        cap = 0.4
        levels = sorted({round(min(c, cap) / 0.05) * 0.05 for c in cover})
        st["area_fraction"] = {"choice": [round(v, 2) for v in levels]}
        notes.append(f"structure.area_fraction: from the model's masks (coverage {min(cover):.0%}-{max(cover):.0%}"
                     f", capped at {cap:.0%})")
    else:
        notes.append("structure.radius_A, area_fraction: kept (give --model to measure them from a first "
                     "segmentation)")
    from_dict(data, "the proposed config")  # refuse before anything is written
    return data, notes


def _dose(measurements: list[Measurement], base: GenerationConfig, im: dict,
          given: tuple[float, ...] | None) -> str:
    """Counts fix the dose per field (the noise floor over the mean); display values do not (their grey mapping
    is unknown), and then only the user's own record of the exposure can replace the base's range."""
    doses = [m.noise.dose_e_per_A2 for m in measurements if m.noise.dose_e_per_A2]
    measured = bool(doses) and len(doses) == len(measurements)
    if given is not None:
        lo, hi = min(given), max(given)
        im["dose_e_per_A2"] = {"value": lo} if lo == hi else {"loguniform": [lo, hi]}
        note = f"imaging.dose_e_per_A2: {lo:g}" + (f"-{hi:g}" if hi > lo else "") + " e/Å², as given (--dose-e-per-A2)"
        if measured:
            note += (f"; the counts' noise floor reads {min(doses):.0f}-{max(doses):.0f} e/Å², the detected dose "
                     "(DQE(0) x dose: below the given one by the camera's DQE; far below or above it, check the gain)")
        return note
    if measured:
        im["dose_e_per_A2"] = {"loguniform": [round(float(min(doses)) / 1.5, 3), round(float(max(doses)) * 1.5, 3)]}
        return (f"imaging.dose_e_per_A2: measured from counts and the noise floor ({min(doses):.0f}-"
                f"{max(doses):.0f} e/Å²), widened 1.5x each way")
    kinds = {m.noise.why.split(";")[0] for m in measurements if m.noise.kind != "counts"}
    return (f"imaging.dose_e_per_A2: kept ({_describe(base.imaging.dose_e_per_A2)}): " + "; ".join(sorted(kinds))
            + "; give --dose-e-per-A2 if the acquisition recorded it")


def _output_blur(measurements: list[Measurement], base: GenerationConfig, im: dict) -> str:
    """A display file's resampling blurs its noise as well as its signal: the noise floor's own fall-off
    exp(-B_n k²) is that blur, σ = √B_n / 2π. Counts keep the base's camera (a scintillator's MTF is that
    fall-off there, and imaging.detector models it)."""
    shown = [m for m in measurements if m.noise.kind == "display"]
    if not shown or len(shown) < len(measurements):
        return (f"imaging.output_blur_A: kept ({_describe(base.imaging.output_blur_A)}): "
                + ("counts: the noise's fall-off is the camera's MTF (imaging.detector)" if not shown else
                   "display values and counts mixed; calibrate them apart"))
    sigma = [math.sqrt(max(m.ctf.noise_falloff_A2, 0.0)) / (2 * math.pi) for m in shown]
    im["output_blur_A"] = _empirical(sigma, OUTPUT_BLUR_JITTER_A, 0, 10)
    px = [s / m.pixel_size_A for s, m in zip(sigma, shown)]
    return (f"imaging.output_blur_A: measured ({min(sigma):.2f}-{max(sigma):.2f} Å, {min(px):.1f}-{max(px):.1f} of "
            "the files' pixels): display values, whose noise falls off with the rendering's blur (σ = √B_n / 2π of "
            "the noise floor's exp(-B_n k²))")


def _plausible_defoci(m: Measurement) -> list[float]:
    """The fitted defocus and the middle of every other run of defoci the radial spectrum cannot tell from the
    best (`CTFFit.defocus_intervals_nm`): a small or rendered field's spectrum often has several such minima
    (near focus and a ring tens of nm out), and proposing one of them would claim a precision it lacks."""
    found = [m.ctf.defocus_nm]
    for lo, hi in m.ctf.defocus_intervals_nm:
        mid = (lo + hi) / 2
        if all(abs(abs(mid) - abs(f)) > DEFOCUS_JITTER_NM for f in found):
            found.append(mid)
    return found


def _describe(d) -> str:
    if isinstance(d, Fixed):
        return f"{d.value}"
    if isinstance(d, Choice):
        return f"choice of {list(d.choice)}"
    return " ".join(f"{k} {v}" for k, v in d.model_dump().items())


def _focal_spread(measurements: list[Measurement], base: GenerationConfig, im: dict) -> str:
    """The fitted focal spreads where the fit could tell them from the fall-off; else the base config's range. A
    spread that ends on its search range's bound was not measured: the fall-off took the envelope (on the bundled
    real set, display renderings downsampled from larger panels, 11 of 15 fitted fields end there, their blur read as
    fall-off), and proposing the bound would invent a value."""
    resolved = [m for m in measurements if not m.ctf.focal_spread_at_bound]
    n_bound = len(measurements) - len(resolved)
    if len(resolved) * 2 < len(measurements):
        kept = (_describe(base.imaging.focal_spread_nm) if base.imaging.chromatic is None
                else "computed from imaging.chromatic")
        return (f"imaging.focal_spread_nm: kept ({kept}): on {n_bound} of "
                f"{len(measurements)} micrographs the fit ended on its search bound, the rings' fall-off taking the "
                "envelope (the two trade off in a short band or under a rendering's blur), so the spread was not "
                "measured")
    im["focal_spread_nm"] = _empirical([m.ctf.focal_spread_nm for m in resolved], FOCAL_SPREAD_JITTER_NM, 0, 100)
    replaced = " (replaces the base config's chromatic focal spread)" if im.pop("chromatic", None) else ""
    return ("imaging.focal_spread_nm: measured from the rings' envelope on "
            f"{len(resolved)} micrograph(s) (information limit "
            f"{min(m.ctf.information_limit_A for m in resolved):.2f}-"
            f"{max(m.ctf.information_limit_A for m in resolved):.2f} Å)"
            + (f"; {n_bound} left out, their fit on the search bound (fall-off took the envelope)" if n_bound else "")
            + replaced)


def _camera(measurements: list[Measurement], im: dict) -> str:
    """The camera's type from the noise spectra where every field shows one (counts, and a band of noise past the
    information limit); its MTF, gain, read noise and DQE kept from the base config."""
    cams = [m.noise.camera for m in measurements]
    if not cams or any(c is None or c.kind == "unknown" for c in cams):
        why = next((c.why for c in cams if c is not None and c.kind == "unknown"),
                   "the noise spectrum needs electron counts")
        return f"imaging.detector: kept: {why}"
    kinds = sorted({c.kind for c in cams})
    im.setdefault("detector", {})["type"] = {"value": kinds[0]} if len(kinds) == 1 else {"choice": kinds}
    return ("imaging.detector.type: from the noise spectra past the information limit ("
            + ", ".join(f"{k}: {sum(c.kind == k for c in cams)} field(s)" for k in kinds)
            + "); its MTF, gain, read noise and DQE kept (the band past the information limit does not fix them)")
