"""What one micrograph tells about the microscope and the specimen: its CTF (Thon rings of the carbon), what its
pixel values are (electron counts or display values), its noise, and the carbon's texture.

Each measurement says when it could not be made and why; `propose.py` then keeps the preset's range for it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from ..errors import TemsynthError
from ..waves import wavelength_A
from .ctf_fit import CTFFit, FitError, fit_ctf
from .spectrum import Spectrum, power_spectrum, radial_profile

# A CTF term that explains less of the spectrum's shape than this is no fit: no carbon, or no rings in the band.
MIN_EXPLAINED = 0.3


class CalibrationError(TemsynthError, ValueError):
    """A micrograph that cannot be calibrated; the message names the file and what to do."""


@dataclass
class Noise:
    kind: str  # "counts" or "display"
    why: str
    mean_counts: float | None = None
    gain_counts_per_e: float | None = None
    dose_e_per_A2: float | None = None
    camera: Camera | None = None


@dataclass
class Camera:
    """What the noise spectrum past the information limit tells of the camera. A counting (or ideal) camera's
    noise is white there; a scintillator's light spreads over neighbouring pixels and filters its noise by the
    same MTF as its signal (generators/detector.py), so its noise falls towards Nyquist. The MTF's shape itself
    is not read: over the band past the information limit its plateau and half-width trade off (with the
    plateau fixed, fits on two fields of one camera gave half-widths 0.09 and 0.36 cycles/px for a true 0.3)."""
    kind: str  # "counting" (white noise), "scintillator" (falling) or "unknown" (no band to tell)
    why: str
    noise_ratio: float | None = None  # noise power at the band's top over its bottom


@dataclass
class Texture:
    """The carbon's speckle: its scale (the period where the spectrum's CTF passband peaks) always; its
    contrast (standard deviation over mean, the shot noise's variance removed) only from counts."""
    speckle_period_A: float
    speckle_contrast: float | None
    why: str
    # from the contrast and a simulated curve under the field's fitted conditions (`thickness.py`)
    thickness_A: float | None = None
    thickness_why: str = ""


@dataclass
class Measurement:
    file: str
    pixel_size_A: float
    shape: tuple[int, int]
    ctf: CTFFit
    noise: Noise
    texture: Texture
    particles: dict = field(default_factory=dict)  # with a model: equivalent radii (Å) and coverage

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def data_kind(image: np.ndarray) -> tuple[str, str]:
    """Counts are non-negative whole numbers (or a whole-number gain times them) with room above them; display
    values are grey levels: fractions in [0, 1], or 8-bit levels clipped at 0 and 255."""
    a = np.asarray(image)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return "display", "no finite pixel"
    whole = np.allclose(finite, np.round(finite), atol=1e-3)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= 1.0 + 1e-6:
        return "display", "pixel values lie in [0, 1]: grey levels of a rendering, not electron counts"
    if whole and lo >= 0 and hi <= 255 and np.mean(finite == hi) + np.mean(finite == lo) > 0.002:
        return "display", "8-bit grey levels clipped at their ends: a display image, not electron counts"
    if whole and lo >= 0:
        return "counts", "non-negative whole numbers: read as detector counts"
    return "display", "fractional or negative values: not counts (a processed or gain-normalised image)"


def _noise(image: np.ndarray, s: Spectrum, ctf: CTFFit, pixel_size_A: float) -> Noise:
    kind, why = data_kind(image)
    if kind != "counts":
        return Noise(kind, why + "; dose and gain are not measurable from it")
    # Past the information limit the specimen's signal is gone: the spectrum's floor is the noise variance per
    # pixel (the estimator is normalised so that white noise of variance v has power v). For Poisson counts
    # times a gain g, v = g * mean. What comes back is the detected dose: DQE(0) x dose for a counting camera; a
    # scintillator's random light yield adds variance, so its gain reads high and its dose low by DQE(0).
    k = np.arange(max(1.2 / ctf.information_limit_A, 0.7 * s.nyquist), 0.95 * s.nyquist, s.dk)
    if len(k) < 4:
        return Noise(kind, why + "; the information limit lies too close to Nyquist to read the noise floor")
    # The spectrum is a mean of n_tiles periodograms, a gamma variate of shape n_tiles per frequency: its radial
    # median sits below its mean by that distribution's median/mean.
    unbias = stats.gamma(s.n_tiles).median() / s.n_tiles
    floor = float(np.median(radial_profile(s, k))) / unbias
    mean = float(np.mean(image))
    camera = _camera(s, ctf)
    if camera.kind == "scintillator":
        # A scintillator's floor near Nyquist is its noise filtered by MTF^2 (a few % of the zero-frequency
        # noise): read as white it would put the dose tens of times too high.
        return Noise(kind, why + "; " + camera.why + ": gain and dose need the noise at zero frequency, not "
                     "measurable from it", mean_counts=mean, camera=camera)
    if camera.kind == "unknown":
        why += "; " + camera.why + ": the floor is read as white (a counting camera's; a scintillator's would " \
                                   "put the dose too high)"
    gain = floor / mean if mean > 0 else float("nan")
    if not (math.isfinite(gain) and gain > 0):
        return Noise(kind, why + "; no positive noise floor")
    dose = mean / gain / pixel_size_A**2
    return Noise(kind, why + f"; noise floor {floor:.3g} counts² per pixel past the information limit",
                 mean_counts=mean, gain_counts_per_e=gain, dose_e_per_A2=dose, camera=camera)


# The noise spectrum's shape needs a band past the information limit reaching down to this fraction of Nyquist.
CAMERA_BAND_FROM = 0.75
# A noise spectrum that falls by more than this across the band is a scintillator's (white noise stays near 1;
# measured on simulated fields: counting 0.99-1.01, scintillators of half-width 0.15-0.3 cycles/px 0.42-0.50).
WHITE_RATIO = 0.7


def _camera(s: Spectrum, ctf: CTFFit) -> Camera:
    """The camera's kind from the shape of the noise spectrum past the information limit."""
    k_lo = 1.2 / ctf.information_limit_A
    if k_lo > CAMERA_BAND_FROM * s.nyquist:
        return Camera("unknown", f"the information limit ({ctf.information_limit_A:.2f} Å) leaves no band of "
                                 f"noise wider than {1 - CAMERA_BAND_FROM:.0%} of Nyquist to tell a white noise "
                                 "floor (counting camera) from a scintillator's blurred one")
    k = np.arange(k_lo, 0.95 * s.nyquist, s.dk)
    log_nps = np.log(np.clip(radial_profile(s, k), 1e-300, None))
    quarter = max(1, len(k) // 4)
    ratio = float(np.exp(np.mean(log_nps[-quarter:]) - np.mean(log_nps[:quarter])))
    band = f"{k[0] * s.pixel_size_A:.2f}-{k[-1] * s.pixel_size_A:.2f} cycles/px"
    if ratio >= WHITE_RATIO:
        return Camera("counting", f"noise white past the information limit (falls to {ratio:.2f} across {band}): "
                                  "a counting camera", ratio)
    return Camera("scintillator", f"noise falls to {ratio:.2f} across {band} past the information limit: a "
                                  "scintillator's MTF", ratio)


def _texture(image: np.ndarray, s: Spectrum, ctf: CTFFit, noise: Noise) -> Texture:
    k = np.arange(ctf.k_min, ctf.k_max, s.dk)
    prof = radial_profile(s, k)
    period = float(1 / k[int(np.nanargmax(prof))]) if len(k) else float("nan")
    if noise.kind != "counts" or noise.gain_counts_per_e is None:
        return Texture(period, None, "contrast needs electron counts (display values have an unknown grey "
                                     "mapping); scale from the spectrum's peak")
    var = float(np.var(image)) - noise.gain_counts_per_e * noise.mean_counts
    contrast = math.sqrt(max(var, 0.0)) / noise.mean_counts
    return Texture(period, contrast, "standard deviation over mean, the shot noise's variance removed")


def measure(image: np.ndarray, pixel_size_A: float, name: str, energy_keV: float = 300.0, cs_mm: float = 0.0,
            exclude: np.ndarray | None = None, defocus_range_nm: tuple[float, float] = (-150.0, 150.0)
            ) -> Measurement:
    """Fit one micrograph. `exclude`: pixels known not to be carbon (particles), kept out of the spectrum."""
    image = np.asarray(image, np.float64)
    if min(image.shape) < 64:
        raise CalibrationError(f"{name}: {image.shape[1]}x{image.shape[0]} px is too small for a power spectrum; "
                               "give micrographs of at least 64x64 px")
    check_band(name, pixel_size_A, energy_keV, defocus_range_nm)
    s = power_spectrum(image, pixel_size_A, exclude=exclude)
    try:
        ctf = fit_ctf(s, energy_keV=energy_keV, cs_mm=cs_mm, defocus_range_nm=defocus_range_nm)
    except FitError as err:
        raise CalibrationError(f"{name}: {err}; check --pixel-size-A") from None
    if ctf.explained < MIN_EXPLAINED:
        raise CalibrationError(
            f"{name}: no Thon rings or CTF passband in its power spectrum (a CTF explains {ctf.explained:.0%} of its "
            "shape): it holds no amorphous carbon to fit, or its pixel size is wrong; leave it out or give a "
            "field with carbon")
    noise = _noise(image, s, ctf, pixel_size_A)
    return Measurement(name, float(pixel_size_A), tuple(image.shape), ctf, noise, _texture(image, s, ctf, noise))


def check_band(name: str, pixel_size_A: float, energy_keV: float, defocus_range_nm: tuple[float, float]) -> None:
    """Refuse a pixel size whose Nyquist frequency lies below the first CTF passband of every defocus the fit
    searches: such a micrograph cannot show a ring (a pixel size given in nm for Å does this)."""
    lam = wavelength_A(energy_keV)
    far = max(abs(v) for v in defocus_range_nm) * 10
    first_max = 1 / math.sqrt(2 * lam * far)  # chi = pi/2 at the largest defocus searched
    if 0.5 / pixel_size_A < first_max:
        raise CalibrationError(
            f"{name}: pixel size {pixel_size_A:g} Å puts Nyquist ({0.5 / pixel_size_A:.3f} 1/Å) below the first "
            f"Thon ring of any defocus up to {far / 10:g} nm ({first_max:.3f} 1/Å): the rings lie past Nyquist; "
            "check the pixel size (Å, not nm) or give a finer-sampled micrograph")
