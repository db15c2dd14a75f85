"""Imaging conditions applied to exit waves: aberrations, partial temporal coherence, detector pixels, dose.

Convention (the same as abTEM's): the objective lens multiplies the wave spectrum by exp(-i chi), with
    chi(alpha, phi) = 2 pi / lambda * sum_nm C_nm alpha^(n+1) / (n+1) * cos(m (phi - phi_nm)),
alpha = lambda k. So chi = pi lambda C10 k^2 + pi/2 Cs lambda^3 k^4 + ...; `defocus_nm` is C10 in nm: negative is
underfocus, and Scherzer defocus is -1.2 sqrt(Cs lambda) for positive Cs.

Many conditions act on one exit wave: its FFT is taken once and every condition costs one inverse FFT (times
the focal-series points), which keeps an extra condition far below the cost of a multislice run.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft
from scipy import ndimage

from .config import STAGE_BEAM, STAGE_CONDITIONS, STAGE_DETECTOR, STAGE_NOISE, GenerationConfig, ImagingConfig, rng_for
from .fftw import band_columns


@dataclass(frozen=True)
class Condition:
    condition_index: int
    defocus_nm: float
    cs_mm: float
    astigmatism_nm: float
    astigmatism_angle_deg: float
    focal_spread_nm: float
    dose_e_per_A2: float
    crop_offset_px: tuple[int, int]  # (x, y) of the stored image's corner in the simulated field
    # What the focal spread was computed from (`imaging.chromatic`); None where it was given directly.
    cc_mm: float | None = None
    energy_spread_eV: float | None = None
    high_tension_ppm: float | None = None
    lens_current_ppm: float | None = None
    image_spread_A: float = 0.0
    output_blur_A: float = 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["crop_offset_px"] = list(self.crop_offset_px)
        return d


@dataclass(frozen=True)
class Grid:
    """The sampling of one structure: `sim_gpts` multislice samples and `detector_px` camera pixels across the
    field. Where the camera's pixel is a whole number of samples it averages them (`bin_factor`); otherwise the
    intensity is area-averaged onto the camera's pixels (each pixel integrates the field it covers)."""
    field_A: float
    sim_gpts: int
    detector_px: int

    @property
    def detector_pixel_size_A(self) -> float:
        return self.field_A / self.detector_px

    @property
    def sim_sampling_A(self) -> float:
        return self.field_A / self.sim_gpts

    @property
    def bin_factor(self) -> int | None:
        return self.sim_gpts // self.detector_px if self.sim_gpts % self.detector_px == 0 else None

    def record_fields(self) -> dict:
        return {"sim_sampling_A": self.sim_sampling_A, "detector_pixel_size_A": self.detector_pixel_size_A}


def grid_for(cfg: GenerationConfig, structure_index: int) -> Grid:
    """The config's fixed grid, or, with `detector_pixel_size_A`, a camera pixel size drawn per structure over
    one multislice grid for the whole run (FFT plans are made once per grid, so it must not change)."""
    im = cfg.imaging
    L = cfg.field_of_view_A
    if im.detector_pixel_size_A is None:
        return Grid(L, cfg.sim_gpts, im.field_px)
    gpts = cfg.multislice_gpts
    p = float(im.detector_pixel_size_A.sample(rng_for(cfg.seed, STAGE_DETECTOR, structure_index, 0)))
    return Grid(L, gpts, max(8, int(round(L / p))))


def beam_energy_keV(cfg: GenerationConfig, structure_index: int) -> float:
    """The structure's beam energy: the config's one, or one drawn from its choice (its own stream, so that a
    config with one energy draws nothing and keeps its records)."""
    e = cfg.simulation.energy_keV
    if isinstance(e, (int, float)):
        return float(e)
    return float(e.sample(rng_for(cfg.seed, STAGE_BEAM, structure_index)))


# 2 sqrt(2 ln 2): a Gaussian's full width at half maximum over its standard deviation
FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))
ELECTRON_REST_ENERGY_KEV = 510.99895


def chromatic_focal_spread_nm(cc_mm: float, energy_spread_eV: float, energy_keV: float,
                              high_tension_ppm: float = 0.0, lens_current_ppm: float = 0.0) -> float:
    """RMS focal spread from the chromatic aberration (as in Reimer & Kohl, Transmission Electron
    Microscopy, and Kirkland, Advanced Computing in Electron Microscopy):

        sigma_f = Cc sqrt( (k_rel sigma_E / E)^2 + (k_rel sigma_U / U)^2 + (2 sigma_I / I)^2 ),

    sigma_E = FWHM / 2.355 the beam's energy spread, sigma_U / U and sigma_I / I the RMS relative instabilities of
    the high tension and the lens current (a lens' focal length goes as U / I^2), and
    k_rel = (1 + E / E0) / (1 + E / 2 E0) the relativistic factor (1.23 at 300 keV)."""
    k_rel = (1 + energy_keV / ELECTRON_REST_ENERGY_KEV) / (1 + energy_keV / (2 * ELECTRON_REST_ENERGY_KEV))
    de = energy_spread_eV / FWHM_PER_SIGMA / (energy_keV * 1e3)
    rel = math.sqrt((k_rel * de) ** 2 + (k_rel * high_tension_ppm * 1e-6) ** 2 + (2 * lens_current_ppm * 1e-6) ** 2)
    return cc_mm * 1e6 * rel  # mm -> nm


def sample_conditions(cfg: GenerationConfig, structure_index: int, centers_px: list[tuple[float, float]],
                      radii_px: list[float], energy_keV: float | None = None) -> list[Condition]:
    """Imaging conditions of one structure. With a field larger than the image, the crop keeps every particle
    whole where it can (the seed study's 640 -> 512 crop), else it is drawn at random. `energy_keV`: the
    structure's beam energy (`beam_energy_keV`), which a computed focal spread needs."""
    im = cfg.imaging
    if energy_keV is None:
        energy_keV = beam_energy_keV(cfg, structure_index)
    out = []
    margin = cfg.structure.edge_margin_A / im.pixel_size_A
    hi_max = im.field_px - im.image_size_px
    for c in range(cfg.conditions_per_structure):
        rng = rng_for(cfg.seed, STAGE_CONDITIONS, structure_index, c)
        values = {name: float(getattr(im, name).sample(rng, c)) for name in
                  ("defocus_nm", "cs_mm", "astigmatism_nm", "astigmatism_angle_deg", "focal_spread_nm",
                   "dose_e_per_A2")}
        if im.chromatic is not None:
            # drawn from their own stream: the defocus, dose and crop draws stay those of a given focal spread
            crng = rng_for(cfg.seed, STAGE_CONDITIONS, structure_index, c, 1)
            ch = {name: float(getattr(im.chromatic, name).sample(crng, c)) for name in
                  ("cc_mm", "energy_spread_eV", "high_tension_ppm", "lens_current_ppm")}
            values.update(ch, focal_spread_nm=chromatic_focal_spread_nm(energy_keV=energy_keV, **ch))
        values["image_spread_A"] = float(im.image_spread_A.sample(rng_for(cfg.seed, STAGE_CONDITIONS, structure_index,
                                                                          c, 2), c))
        values["output_blur_A"] = float(im.output_blur_A.sample(rng_for(cfg.seed, STAGE_CONDITIONS, structure_index,
                                                                        c, 3), c))
        offset = []
        for axis in (0, 1):
            lo, hi = 0, hi_max
            for centre, r in zip(centers_px, radii_px):
                lo = max(lo, int(np.ceil(centre[axis] + r + margin - im.image_size_px + 1)))
                hi = min(hi, int(np.floor(centre[axis] - r - margin)))
            if hi >= lo:
                offset.append(int(rng.integers(lo, hi + 1)))
            elif len(centers_px) == 1:
                offset.append(int(np.clip(round(centers_px[0][axis] - im.image_size_px / 2), 0, hi_max)))
            else:
                offset.append(int(rng.integers(0, hi_max + 1)))
        out.append(Condition(condition_index=c, crop_offset_px=(offset[0], offset[1]), **values))
    return out


def polar_chi(alpha: np.ndarray, phi: np.ndarray, wavelength_A: float, coeffs: dict[str, float]) -> np.ndarray:
    """chi for Krivanek polar coefficients (C_nm in Å, phi_nm in radians)."""
    chi = np.zeros_like(alpha)
    for sym, c in coeffs.items():
        if not sym.startswith("C") or c == 0:
            continue
        n, m = int(sym[1]), int(sym[2])
        angle = coeffs.get(f"phi{n}{m}", 0.0)
        chi += c * alpha ** (n + 1) / (n + 1) * (np.cos(m * (phi - angle)) if m else 1.0)
    return (2 * np.pi / wavelength_A) * chi


class ImageFormer:
    """Precomputes the reciprocal-space grid and fixed aberrations once per (field, sampling, energy)."""

    def __init__(self, im: ImagingConfig, gpts: int, sampling_A: float, wavelength_A: float, bin_factor: int):
        self.im = im
        self.gpts, self.sampling_A, self.wavelength = gpts, sampling_A, wavelength_A
        self.bin = bin_factor
        ky = scipy.fft.fftfreq(gpts, d=sampling_A).astype(np.float32)[:, None]
        kx = scipy.fft.fftfreq(gpts, d=sampling_A).astype(np.float32)[None, :]
        k2 = kx**2 + ky**2
        alpha = wavelength_A * np.sqrt(k2)
        phi = np.arctan2(ky, kx)
        self.alpha2 = (alpha**2).astype(np.float32)
        self.cos2phi = np.cos(2 * phi).astype(np.float32)
        self.sin2phi = np.sin(2 * phi).astype(np.float32)
        self.k2 = k2.astype(np.float32)
        res = {k: (np.radians(v) if k.startswith("phi") else v) for k, v in im.residual_aberrations_A.items()}
        self.chi_fixed = polar_chi(alpha, phi, wavelength_A, res).astype(np.float32)
        aperture = np.ones_like(alpha, dtype=np.float32)
        if im.objective_aperture_mrad:
            aperture = (alpha <= im.objective_aperture_mrad * 1e-3).astype(np.float32)
        self.aperture = aperture
        # The multislice's exit waves are band-limited by the antialias aperture (2/3 of Nyquist): the transfer
        # functions are only needed on the band's rows and columns (4/9 of the grid) and the inverse FFT's first
        # pass on its columns. Exit waves with power outside the band (another backend) take the full grid.
        m = band_columns(gpts)
        self._band = np.r_[0:m, gpts - m:gpts] if 2 * m < gpts else None
        self._wisdom_dir, self._band_fft = None, None
        full = {k: getattr(self, k) for k in ("alpha2", "cos2phi", "sin2phi", "chi_fixed", "aperture", "k2")}
        self._grids = {"full": full}
        if self._band is not None:
            sub = np.ix_(self._band, self._band)
            # transposed, [kx, ky]: the frame `fftw.BandInverse` transforms in
            self._grids["band"] = {k: np.ascontiguousarray(v[sub].T) for k, v in full.items()}

    def chi(self, c: Condition, extra_defocus_A: float = 0.0, grid: str = "full") -> np.ndarray:
        g = self._grids[grid]
        two_pi_over_lambda = np.float32(2 * np.pi / self.wavelength)
        c10 = c.defocus_nm * 10 + extra_defocus_A
        c12 = c.astigmatism_nm * 10
        phi12 = np.radians(c.astigmatism_angle_deg)
        c30 = c.cs_mm * 1e7
        f32 = np.float32
        a2 = g["alpha2"]
        quad = (f32(c10) + f32(c12 * np.cos(2 * phi12)) * g["cos2phi"] + f32(c12 * np.sin(2 * phi12)) * g["sin2phi"]) \
            * a2 / f32(2)
        return g["chi_fixed"] + two_pi_over_lambda * (quad + f32(c30 / 4) * a2 * a2)

    def _focal_points(self, c: Condition):
        sigma_A = c.focal_spread_nm * 10
        n = self.im.focal_series_points
        if n <= 1 or sigma_A == 0:
            return np.zeros(1), np.ones(1)
        d = np.linspace(-3 * sigma_A, 3 * sigma_A, n)
        w = np.exp(-0.5 * (d / sigma_A) ** 2)
        return d, w / w.sum()

    def intensity(self, waves: np.ndarray, conditions: list[Condition]) -> np.ndarray:
        """Noise-free intensity at detector pixels, (conditions, field, field), vacuum = 1."""
        spectra = scipy.fft.fft2(waves.astype(np.complex64), workers=1)  # (configs, N, N), once per exit wave
        grid = "full"
        if self._band is not None:
            band = spectra[:, self._band][:, :, self._band]
            power = lambda a: float(np.sum(a.real ** 2 + a.imag ** 2, dtype=np.float64))
            total = power(spectra)
            if total - power(band) <= 1e-9 * total:
                spectra, grid = np.ascontiguousarray(band.transpose(0, 2, 1)), "band"
        g = self._grids[grid]
        out = np.empty((len(conditions), self.gpts // self.bin, self.gpts // self.bin), np.float32)
        for i, c in enumerate(conditions):
            defocus, weights = self._focal_points(c)
            envelope = g["aperture"]
            if self.im.focal_series_points <= 1 and c.focal_spread_nm > 0:
                # Quasi-coherent temporal envelope exp(-(pi lambda Delta k^2)^2 / 2) on the wave.
                envelope = envelope * np.exp(np.float32(-0.5 * (np.pi * self.wavelength * c.focal_spread_nm * 10) ** 2)
                                             * g["k2"] ** 2)
            total = np.zeros((self.gpts, self.gpts), np.float32)
            # The focal series' defoci are equally spaced and chi is linear in defocus: each point's transfer
            # function is the previous one times a fixed phase ramp, one complex multiply instead of chi and its
            # exponential (25 points: rounding grows to ~1e-6 of the transfer function).
            transfer = self._expi(self.chi(c, defocus[0], grid), envelope)
            step = None
            if len(defocus) > 1:
                g = self._grids[grid]
                step = self._expi(np.float32(np.pi / self.wavelength * (defocus[1] - defocus[0])) * g["alpha2"])
            for k, w in enumerate(weights):
                if k:
                    transfer *= step
                self._accumulate(spectra, transfer, float(w) / len(spectra), total, grid)
            total = np.ascontiguousarray(total.T) if grid == "band" else total
            if c.image_spread_A > 0:
                # the field is periodic, as the multislice's: the blur wraps round it
                total = ndimage.gaussian_filter(total, c.image_spread_A / self.sampling_A, mode="wrap")
            out[i] = bin_mean(total, self.bin)
        return out

    def use_folder(self, dataset_dir) -> None:
        """Where the run's FFTW wisdom lives (`fftw.py`): the band inverse is planned from it, as the multislice."""
        if dataset_dir != self._wisdom_dir:
            self._wisdom_dir, self._band_fft = dataset_dir, None

    def _accumulate(self, spectra: np.ndarray, transfer: np.ndarray, w: float, total: np.ndarray, grid: str) -> None:
        """total += w |ifft2(spectrum * transfer)|^2 for each frozen-phonon spectrum (on the band: all three and
        the image transposed)."""
        if grid == "full":
            psi = scipy.fft.ifft2(spectra * transfer, workers=1)
            total += np.float32(w) * (psi.real**2 + psi.imag**2).sum(0)
            return
        if self._band_fft is None:
            from .fftw import band_inverse

            self._band_fft = band_inverse(self.gpts, self._wisdom_dir)
        f = self._band_fft
        for spectrum in spectra:
            _band_product(spectrum, transfer, f.spec, f.m)
            f.execute()
            _add_power(f.psi, np.float32(w / float(self.gpts) ** 4), total)  # FFTW's inverse is unnormalised

    @staticmethod
    def _expi(chi: np.ndarray, envelope: np.ndarray | None = None) -> np.ndarray:
        """envelope * exp(-i chi) in single precision."""
        t = np.empty(chi.shape, np.complex64)
        t.real, t.imag = np.cos(chi), -np.sin(chi)
        if envelope is not None:
            t *= envelope
        return t

def bin_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Average f x f blocks: a detector pixel integrates the simulation pixels it covers."""
    if f == 1:
        return a
    h, w = a.shape[-2] // f, a.shape[-1] // f
    return a[..., : h * f, : w * f].reshape(*a.shape[:-2], h, f, w, f).mean(axis=(-3, -1))


def crop(a: np.ndarray, offset_xy: tuple[int, int], size: int) -> np.ndarray:
    ox, oy = offset_xy
    return a[..., oy: oy + size, ox: ox + size]


def saved_for_display(counts: np.ndarray, bits: int | None, median_px: int) -> np.ndarray:
    """An image as a display file holds it: counts cast to 2^bits grey levels spanning the image's own minimum to
    maximum, then a median filter of median_px (edges mirrored). bits None: counts kept; median_px 0: no filter."""
    out = counts
    if bits:
        lo, hi = float(counts.min()), float(counts.max())
        scale = (2**bits - 1) / (hi - lo) if hi > lo else 0.0
        out = np.floor((counts - lo) * scale + 0.5).astype(counts.dtype)
    if median_px:
        out = ndimage.median_filter(out, size=median_px, mode="mirror")
    return out


def noise_rng(cfg: GenerationConfig, structure_index: int, condition_index: int) -> np.random.Generator:
    return rng_for(cfg.seed, STAGE_NOISE, structure_index, condition_index)


def _kernels():
    import numba

    @numba.njit(nogil=True, cache=True)
    def band_product(spectrum, transfer, spec, m):
        """spec[kx, ky] = spectrum * transfer on the band's ky, [0, m) and [m, 2m) going to [0, m) and [n - m, n)."""
        shift = spec.shape[1] - 2 * m
        for i in range(spectrum.shape[0]):
            for j in range(m):  # two plain loops, not one with a branch: they vectorise
                spec[i, j] = spectrum[i, j] * transfer[i, j]
            for j in range(m, 2 * m):
                spec[i, shift + j] = spectrum[i, j] * transfer[i, j]

    @numba.njit(nogil=True, cache=True)
    def add_power(psi, w, total):
        for i in range(psi.shape[0]):
            for j in range(psi.shape[1]):
                v = psi[i, j]
                total[i, j] += w * (v.real * v.real + v.imag * v.imag)

    return band_product, add_power


_KERNELS = []


def _band_product(spectrum, transfer, spec, m) -> None:
    if not _KERNELS:
        _KERNELS.extend(_kernels())
    _KERNELS[0](spectrum, transfer, spec, m)


def _add_power(psi, w, total) -> None:
    if not _KERNELS:
        _KERNELS.extend(_kernels())
    _KERNELS[1](psi, w, total)
