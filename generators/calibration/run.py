"""`temsynth calibrate`: micrographs in, a generation config (and optionally a report) out.

Every micrograph is read and fitted before anything is written: a file that cannot be calibrated stops the
run with one line naming it, and leaves no config behind.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from scipy import ndimage

from ..config import GenerationConfig, load_config, load_preset
from ..files import atomic_path
from ..micrographs.importer import MASK_SUFFIX, _micrograph_files, given_pixel_sizes, pixel_size_of
from ..micrographs.readers import Micrograph, load_micrograph
from .measure import CalibrationError, Measurement, measure
from .propose import propose

# (image, pixel size in Å) -> bool particle mask of the image's shape
Segmenter = Callable[[np.ndarray, float], np.ndarray]


def micrograph_paths(inputs: list[str | Path]) -> tuple[list[Path], Path]:
    """Files as given, folders expanded to their micrographs (masks `*_mask.*` left out); and the folder that a
    pixel-size CSV's relative names are taken from (the first folder given, else the first file's)."""
    paths, root = [], None
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = [f for f in _micrograph_files(p)[0] if not f.stem.endswith(MASK_SUFFIX)]
            if not found:
                raise CalibrationError(f"{p}: no micrographs in this folder")
            paths += found
            root = root or p
        elif p.is_file():
            paths.append(p)
        else:
            raise CalibrationError(f"{p}: no such file or folder")
    if not paths:
        raise CalibrationError("no micrographs given; name files or folders")
    return paths, root or paths[0].parent


def components(mask: np.ndarray, pixel_size_A: float) -> tuple[np.ndarray, dict[int, float], set[int]]:
    """The mask's connected components: their labels, equivalent-circle radii (Å; those of at least 4 px) and
    the labels of those the border cuts."""
    labels, n = ndimage.label(mask)
    border = set(np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]]).tolist()) - {0}
    areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    return labels, {i: float(np.sqrt(a / np.pi) * pixel_size_A) for i, a in enumerate(areas, start=1) if a >= 4}, border


def particle_sizes(mask: np.ndarray, pixel_size_A: float) -> dict:
    """Equivalent-circle radii (Å) of the particles that do not touch the border, the coverage, and the radii of
    the visible parts of those the border cuts: lower bounds of their sizes, which a small field's interior
    alone would miss (the larger a particle, the likelier the border cuts it)."""
    _, radius, border = components(mask, pixel_size_A)
    return {"radii_A": [r for i, r in radius.items() if i not in border], "coverage": float(np.mean(mask)),
            "n_border": len(border), "border_radii_A": [r for i, r in radius.items() if i in border]}


def read_thicknesses(measurements: list[Measurement], base: GenerationConfig, log: Callable[[str], None]) -> None:
    """Each counts field's support thickness from its speckle contrast (`thickness.py`), in place."""
    import tempfile

    from .thickness import contrast_curve, thickness_from_contrast

    counted = [m for m in measurements if m.texture.speckle_contrast]
    if not counted:
        return
    with tempfile.TemporaryDirectory(prefix="temsynth-thickness-") as tmp:
        for m in counted:  # one support bank per thickness, shared by the fields (the cache)
            curve = contrast_curve(base, m.ctf, m.pixel_size_A, Path(tmp))
            m.texture.thickness_A, how = thickness_from_contrast(m.texture.speckle_contrast, curve)
            m.texture.thickness_why = f"speckle contrast {m.texture.speckle_contrast:.4f} {how} (" + ", ".join(
                f"{t:g} Å: {c:.4f}" for t, c in curve) + ")"
            log(f"{m.file}: support {m.texture.thickness_A:.0f} Å thick ({m.texture.thickness_why})")


def base_config(preset: str | None, config: str | Path | None) -> GenerationConfig:
    return load_config(config) if config else load_preset(preset or "realistic")


def beam_energy(files: dict[Path, Micrograph], given: float | None, base: GenerationConfig,
                log: Callable[[str], None]) -> float:
    """The energy (keV) the rings are fitted at: --energy-keV, else the one the files record (DM, Velox EMD),
    else the base config's. The rings scale with the wavelength, so micrographs of several energies cannot share
    one fit: they are refused unless --energy-keV says which to assume."""
    recorded = {p.name: f.energy_keV for p, f in files.items() if f.energy_keV is not None}
    if given is not None:
        if not (np.isfinite(given) and given > 0):
            raise CalibrationError(f"--energy-keV {given}: give the beam energy in keV, e.g. 300")
        differ = sorted({f"{e:g}" for e in recorded.values() if abs(e - given) > 0.5})
        if differ:
            log(f"warning: --energy-keV {given:g} overrides the {', '.join(differ)} keV the files record")
        return float(given)
    energies = sorted(set(recorded.values()))
    if len(energies) > 1:
        raise CalibrationError("the micrographs were recorded at " + ", ".join(f"{e:g}" for e in energies)
                               + " keV: calibrate each energy's micrographs apart, or give --energy-keV")
    if energies:
        log(f"beam energy {energies[0]:g} keV, as the files record it")
        return float(energies[0])
    if len(base.simulation.energies_keV) > 1:
        raise CalibrationError(f"the base config draws beam energies {list(base.simulation.energies_keV)} keV and the "
                               "files record none: give --energy-keV, the micrographs' own")
    return float(base.simulation.energies_keV[0])


def given_dose(values: list[float] | None) -> tuple[float, ...] | None:
    """--dose-e-per-A2 LOW [HIGH], checked before any file is read."""
    if values is None:
        return None
    shown = "--dose-e-per-A2 " + " ".join(f"{v:g}" for v in values)
    if not 1 <= len(values) <= 2:
        raise CalibrationError(f"{shown}: give one dose or a range LOW HIGH in e/Å², e.g. --dose-e-per-A2 300 600")
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise CalibrationError(f"{shown}: give positive doses in e/Å² per image (e/nm² is 100x e/Å²)")
    return tuple(float(v) for v in values)


def calibrate(inputs: list[str | Path], out: str | Path, *, pixel_size_A: float | None = None,
              pixel_sizes_csv: str | Path | None = None, preset: str | None = "realistic",
              config: str | Path | None = None, cs_mm: float | None = None, energy_keV: float | None = None,
              segment: Segmenter | None = None, report_dir: str | Path | None = None, strict: bool = False,
              dose_e_per_A2: list[float] | None = None, log: Callable[[str], None] = print
              ) -> tuple[dict, list[Measurement], list[str]]:
    t0 = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise CalibrationError(f"--out {out}: give a .yaml file name for the proposed config")
    if pixel_size_A is not None and pixel_sizes_csv is not None:
        raise CalibrationError("give one of --pixel-size-A X (every micrograph) or --pixel-sizes CSV (columns "
                               "file,pixel_size_A), not both; without either, the files' own calibration is used")
    if pixel_size_A is not None and not pixel_size_A > 0:
        raise CalibrationError(f"--pixel-size-A {pixel_size_A}: give a positive pixel size in Å")
    dose = given_dose(dose_e_per_A2)
    base = base_config(preset, config)
    cs = cs_mm if cs_mm is not None else float(np.mean(base.imaging.cs_mm.support()))
    paths, root = micrograph_paths(inputs)
    sizes = given_pixel_sizes(paths, pixel_size_A, pixel_sizes_csv, root)
    files = {p: load_micrograph(p) for p in paths}  # each file read once: image, pixel size, energy
    energy = beam_energy(files, energy_keV, base, log)

    measurements, images, skipped, particles, segmented = [], [], [], [], []
    for p, f in files.items():
        image = f.image
        px = pixel_size_of(p, sizes[p], f.pixel_size_A)
        mask = segment(image, px) if segment is not None else None
        if mask is not None:
            particles.append(particle_sizes(mask, px))
            segmented.append((p.name, image, mask, px))
        try:
            m = measure(image, px, p.name, energy_keV=energy, cs_mm=cs,
                        exclude=None if mask is None else ndimage.binary_dilation(mask, iterations=2))
        except CalibrationError as err:
            # One field of a folder may be all particle; the others still calibrate. Alone, or with
            # --strict, it stops the run (nothing written).
            if strict or len(paths) == 1:
                raise
            skipped.append(str(err))
            log(f"warning: left out: {err}")
            continue
        if mask is not None:
            m.particles = particles[-1]
        measurements.append(m)
        images.append(image)
        log(f"{p.name}: defocus {m.ctf.defocus_nm:+.1f} nm{' (sign?)' if m.ctf.sign_ambiguous else ''}, "
            f"astigmatism {m.ctf.astigmatism_nm:.1f} nm, focal spread {m.ctf.focal_spread_nm:.1f} nm, "
            f"{m.noise.kind}, fit explains {m.ctf.explained:.0%}")

    if not measurements:
        raise CalibrationError("no micrograph could be calibrated: " + " | ".join(skipped))
    read_thicknesses(measurements, base, log)
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", out.stem) or "calibrated"
    data, notes = propose(measurements, base, name, cs_given=cs_mm, particles=particles if segment else None,
                          dose_given=dose)
    notes += [f"left out: {s}" for s in skipped]
    header = ["# Generation config proposed by `temsynth calibrate` from " + f"{len(paths)} micrograph(s) "
              f"({', '.join(p.name for p in paths[:4])}{', ...' if len(paths) > 4 else ''}),",
              f"# based on {'config ' + str(config) if config else 'preset ' + (preset or 'realistic')}. "
              "What was measured and what was kept:"]
    header += [f"#   {n}" for n in notes]
    text = "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False, width=120)
    record = {"inputs": [str(p) for p in paths], "energy_keV": energy, "cs_mm_assumed": cs,
              "measurements": [m.as_dict() for m in measurements], "skipped": skipped, "notes": notes}
    if report_dir is not None:
        from .report import write_report

        write_report(Path(report_dir), measurements, images, data, notes, log=log, segmented=segmented)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)
    side = out.with_suffix(".calibration.json")
    with atomic_path(side) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1, default=float))
    log(f"wrote {out} and {side.name} ({len(paths)} micrographs in {time.perf_counter() - t0:.1f} s)")
    return data, measurements, notes
