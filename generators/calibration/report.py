"""The calibration report: a static page a microscopist reads to trust (or not) the proposed config.

Per micrograph, the fitted CTF (abTEM's, with the fitted defocus, astigmatism and envelope) over its power
spectrum; for the proposed config, simulated fields beside the real ones at one pixel size and their mean
spectrum shapes overlaid, with their distance; and what was measured, what was kept and why.
"""
from __future__ import annotations

import html
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import from_dict
from ..micrographs.tiles import resample
from .ctf_fit import abtem_ctf_power, design_columns
from .measure import Measurement
from .spectrum import frequencies, power_spectrum, psd_distance, radial_profile

SIMULATED_STRUCTURES = 4


def _model_profile(m: Measurement, k: np.ndarray, n_angles: int = 36) -> np.ndarray:
    """abTEM's CTF power with the fitted parameters, averaged over directions (astigmatism smears rings the
    same way in the data's radial average)."""
    c = m.ctf
    phi = np.arange(n_angles) * np.pi / n_angles
    kk, pp = np.meshgrid(k, phi)
    p = abtem_ctf_power(kk, pp, c.energy_keV, c.defocus_nm, c.astigmatism_nm, c.astigmatism_angle_deg, c.cs_mm,
                        c.focal_spread_nm)
    return p.mean(axis=0) * np.exp(-c.falloff_A2 * k**2)


def _fit_figure(m: Measurement, image: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = power_spectrum(image, m.pixel_size_A)
    k = np.arange(m.ctf.k_min, m.ctf.k_max, s.dk)
    prof = radial_profile(s, k)
    model = _model_profile(m, k)
    # scale the model onto the data the way the fit does: noise floor (with its fall-off) plus amplitude, least
    # squares of relative residuals
    design = np.stack(design_columns(k, model, noise_b=m.ctf.noise_falloff_A2), axis=1) / prof[:, None]
    coef = np.linalg.lstsq(design, np.ones_like(k), rcond=None)[0]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.6))
    lo, hi = np.percentile(image, [0.5, 99.5])
    ax[0].imshow(image, cmap="gray", vmin=lo, vmax=hi)
    ax[0].set_title(m.file[:40], fontsize=8)
    ax[0].axis("off")
    half = np.log10(s.power + 1e-30)
    kk, phi = frequencies(s)
    c = m.ctf
    model2d = abtem_ctf_power(kk, phi, c.energy_keV, c.defocus_nm, c.astigmatism_nm, c.astigmatism_angle_deg,
                              c.cs_mm, c.focal_spread_nm) * np.exp(-c.falloff_A2 * kk**2)
    model2d /= max(float(model2d.max()), 1e-30)
    show = half.copy()
    right = kk > 0
    right &= np.broadcast_to(np.arange(s.n)[None, :] > s.n // 2, kk.shape)
    d_lo, d_hi = np.percentile(half[(kk > m.ctf.k_min) & (kk < m.ctf.k_max)], [2, 98])
    show[right] = d_lo + (d_hi - d_lo) * model2d[right]
    ax[1].imshow(show, cmap="magma", vmin=d_lo, vmax=d_hi,
                 extent=[-s.nyquist, s.nyquist, -s.nyquist, s.nyquist])
    ax[1].set_title("spectrum (left) | fitted CTF² x fall-off (right), 1/Å", fontsize=8)
    ax[2].semilogy(k, prof, ".", ms=3, label="radial median of the spectrum")
    ax[2].semilogy(k, design @ coef * prof, "-", label="noise + fitted CTF (abTEM)")
    ax[2].set_xlabel("k (1/Å)")
    ax[2].set_title(f"defocus {c.defocus_nm:+.1f} nm{' (sign?)' if c.sign_ambiguous else ''}, astig "
                    f"{c.astigmatism_nm:.1f} nm, focal spread {c.focal_spread_nm:.1f} nm", fontsize=8)
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def simulate_fields(data: dict, n_structures: int = SIMULATED_STRUCTURES, seed_offset: int = 0) -> list[np.ndarray]:
    """A few fields of the proposed config, built as `generate` builds records (same code, no folder)."""
    from ..run import simulate_structure

    cfg = from_dict({**data, "n_structures": max(n_structures, 1), "conditions_per_structure": 2},
                    "the proposed config")
    cache = Path(tempfile.mkdtemp(prefix="temsynth-calibrate-"))
    try:
        fields = []
        for i in range(n_structures):
            images = simulate_structure(cfg, i + seed_offset, cache_dir=cache).images
            fields.extend(list(images))
        return fields
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _side_by_side(real: list[np.ndarray], sim: list[np.ndarray], path: Path, n: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(real), len(sim))
    fig, ax = plt.subplots(2, n, figsize=(2.2 * n, 4.6))
    ax = np.atleast_2d(ax)
    for row, (label, fields) in enumerate((("real", real), ("simulated", sim))):
        for j in range(n):
            a = fields[j]
            lo, hi = np.percentile(a, [0.5, 99.5])
            ax[row, j].imshow(a, cmap="gray", vmin=lo, vmax=hi)
            ax[row, j].axis("off")
            ax[row, j].set_title(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _psd_figure(k, r, s, distance, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(k, r, label="real fields (mean)")
    ax.semilogy(k, s, label="simulated, proposed config (mean)")
    ax.set_xlabel("k (1/Å)")
    ax.set_ylabel("power (unit-variance fields)")
    ax.set_title(f"spectrum shapes, distance {distance:.3f} (RMS log10)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _segmentation_figure(segmented: list[tuple[str, np.ndarray, np.ndarray, float]], radius_A: dict,
                         path: Path, sizes_path: Path, n: int = 8, per_row: int = 4) -> None:
    """`--model`'s first pass: each field with the outlines of what counted (cyan), what the border cuts (a
    lower bound, orange) and the specks left out (red) in `path`; every radius against the proposed range in
    `sizes_path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .propose import SPECK_RADIUS_A
    from .run import components

    shown = segmented[:n]
    rows, cols = -(-len(shown) // per_row), min(per_row, len(shown))
    fig, ax = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False)
    ax = ax.ravel()
    for a in ax[len(shown):]:
        a.axis("off")
    inside, cut = [], []
    for j, (name, image, mask, px) in enumerate(segmented):
        labels, radius, border = components(mask, px)
        speck = {i for i, r in radius.items() if r < SPECK_RADIUS_A} | (set(range(1, labels.max() + 1)) - set(radius))
        counted = set(radius) - border - speck
        inside += [radius[i] for i in counted]
        cut += [radius[i] for i in border - speck]
        if j >= len(shown):
            continue
        a = ax[j]
        lo, hi = np.percentile(image, [0.5, 99.5])
        a.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        for ids, colour in ((counted, "cyan"), (border - speck, "orange"), (speck, "red")):
            if ids:
                a.contour(np.isin(labels, list(ids)), levels=[0.5], colors=colour, linewidths=0.8)
        a.set_title(name[:28], fontsize=7)
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    fig, h = plt.subplots(figsize=(5, 3.2))
    top = max(inside + cut + [10.0])
    bins = np.linspace(0, top * 1.1, 25)
    h.hist([inside, cut], bins=bins, stacked=True, color=["tab:cyan", "tab:orange"],
           label=["inside the field", "cut by the border (visible part)"])
    if "loguniform" in radius_A:
        h.axvspan(*radius_A["loguniform"], color="0.85", zorder=0, label="proposed radius_A")
    h.set_xlabel("equivalent radius (Å)", fontsize=8)
    h.set_ylabel("particles", fontsize=8)
    h.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(sizes_path, dpi=80)
    plt.close(fig)


def write_report(folder: Path, measurements: list[Measurement], images: list[np.ndarray], data: dict,
                 notes: list[str], log: Callable[[str], None] = print, n_structures: int = SIMULATED_STRUCTURES,
                 segmented: list[tuple[str, np.ndarray, np.ndarray, float]] | None = None) -> Path:
    """segmented: (file name, image, mask, pixel size) of each field `--model` segmented, fitted or not."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (m, img) in enumerate(zip(measurements, images)):
        name = f"fit_{i:03d}.png"
        _fit_figure(m, img, folder / name)
        c = m.ctf
        rows.append(f"<tr><td>{html.escape(m.file)}</td><td>{m.pixel_size_A:g}</td><td>{c.defocus_nm:+.1f}"
                    f"{' (sign?)' if c.sign_ambiguous else ''}</td><td>{c.astigmatism_nm:.1f} @ "
                    f"{c.astigmatism_angle_deg:.0f}°</td><td>{c.focal_spread_nm:.1f}</td>"
                    f"<td>{c.information_limit_A:.2f}</td><td>{c.explained:.0%}</td><td>{m.noise.kind}</td>"
                    f"<td><img src='{name}' width='720'></td></tr>")
    px = float(data["imaging"]["pixel_size_A"])
    real = [resample(np.asarray(img, np.float32), m.pixel_size_A, px) for m, img in zip(measurements, images)]
    log(f"report: simulating {n_structures} structures of the proposed config")
    sim = simulate_fields(data, n_structures)
    distance, k, r, s = psd_distance(real, sim, px)
    _psd_figure(k, r, s, distance, folder / "spectra.png")
    _side_by_side(real, sim, folder / "fields.png")
    seg_html = ""
    if segmented:
        _segmentation_figure(segmented, data["structure"]["radius_A"], folder / "particles.png",
                             folder / "sizes.png")
        more = "" if len(segmented) <= 8 else f"; the first 8 of {len(segmented)} fields shown"
        seg_html = (f"<h2>The model's first pass: particle sizes and coverage ({len(segmented)} fields)</h2>\n"
                    "<p>Cyan: particles counted; orange: cut by the field's border (their visible part bounds "
                    f"the sizes from below); red: specks under 3 Å, left out{more}.</p>"
                    "<img src='particles.png'><br><img src='sizes.png'>\n")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>temsynth calibration</title>
<style>body{{font-family:sans-serif;margin:1.5em}} td{{padding:2px 8px;font-size:13px}}
table{{border-collapse:collapse}} tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>Calibration of {len(measurements)} micrographs</h1>
<h2>What the proposed config measured and what it kept</h2>
<ul>{''.join(f'<li>{html.escape(n)}</li>' for n in notes)}</ul>
<h2>The proposed config against the micrographs, at {px:g} Å per pixel</h2>
<p>Mean spectrum shape of the real fields and of {len(sim)} simulated fields of the proposed config: distance
{distance:.3f} (RMS of the log10 difference; 0.30 is a factor of 2 everywhere).</p>
<img src="spectra.png"><br><img src="fields.png">
{seg_html}<h2>Per micrograph: the fitted CTF over its power spectrum</h2>
<table><tr><th>file</th><th>Å/px</th><th>defocus nm</th><th>astigmatism nm</th><th>focal spread nm</th>
<th>information limit Å</th><th>fit explains</th><th>pixel values</th><th>fit</th></tr>{''.join(rows)}</table>
</body></html>"""
    (folder / "index.html").write_text(page)
    log(f"report: {folder / 'index.html'} (spectrum distance real vs simulated {distance:.3f})")
    return folder / "index.html"
