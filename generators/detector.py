"""The camera: electrons at a dose -> counts, for an ideal counter, a scintillator camera and a counting detector.

Frequencies f are in cycles per detector pixel (Nyquist = 0.5). The pixel's own box integration is already in
the image (each detector pixel averages the simulation samples it covers); the MTFs here are the blur beyond it.

- ideal: counts ~ Poisson(N), N = dose x pixel area x intensity.
- scintillator (CCD/CMOS behind a scintillator or fibre-optic plate): electrons n ~ Poisson(N); each deposits a
  gamma-distributed light yield of mean `gain` and relative variance 1/k, so the sum over n electrons is
  Gamma(k n, gain / k) and DQE(0) = k / (k + 1) = dqe0; the light spreads with
  MTF(f) = (1 - c) / (1 + (f / f0)^2) + c, which blurs signal and shot noise alike (noise power ~ MTF^2);
  Gaussian read noise is added after. Lorentzian-plus-plateau MTFs of this form describe scintillator cameras'
  measured curves (a sharp core of fibre coupling and a long tail of scattered light).
- counting (direct detector in counting mode): each electron is found with probability dqe0 and placed with a
  Gaussian localisation error sigma, so counts ~ Poisson(dqe0 x (N convolved with the error)):
  MTF(f) = exp(-2 pi^2 sigma^2 f^2) on the signal, white noise, DQE(f) = dqe0 MTF(f)^2; gain counts per
  detected electron, read noise (zero for a true counter) after.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft

from .config import STAGE_DETECTOR, DetectorConfig, rng_for


@dataclass(frozen=True)
class Detector:
    """One camera's realised parameters (drawn per structure from the config's distributions)."""
    detector_type: str
    gain_counts_per_e: float
    read_noise_counts: float
    dqe0: float
    mtf_c: float
    mtf_f0: float
    counting_sigma_px: float

    def as_dict(self) -> dict:
        return {f"detector_{k}" if not k.startswith("detector_") else k: v for k, v in asdict(self).items()}

    def mtf(self, f: np.ndarray) -> np.ndarray:
        """Modulation transfer at spatial frequency f (cycles per pixel) beyond the pixel's box integration."""
        f = np.asarray(f, float)
        if self.detector_type == "scintillator":
            return (1 - self.mtf_c) / (1 + (f / self.mtf_f0) ** 2) + self.mtf_c
        if self.detector_type == "counting":
            return np.exp(-2 * np.pi**2 * self.counting_sigma_px**2 * f**2)
        return np.ones_like(f)

    def _blur(self, image: np.ndarray) -> np.ndarray:
        fy = scipy.fft.fftfreq(image.shape[-2])[:, None]
        fx = scipy.fft.rfftfreq(image.shape[-1])[None, :]
        transfer = self.mtf(np.sqrt(fx**2 + fy**2))
        return scipy.fft.irfft2(scipy.fft.rfft2(image, workers=1) * transfer, s=image.shape[-2:], workers=1)

    def record(self, intensity: np.ndarray, dose_e_per_A2: float, pixel_size_A: float,
               rng: np.random.Generator) -> np.ndarray:
        """Counts per pixel (float32) for a noise-free intensity (vacuum = 1) at a dose."""
        expected = np.clip(intensity, 0, None).astype(np.float64) * dose_e_per_A2 * pixel_size_A**2
        if self.detector_type == "ideal":
            return rng.poisson(expected).astype(np.float32)
        if self.detector_type == "counting":
            blurred = np.clip(self._blur(expected), 0, None)
            counts = rng.poisson(self.dqe0 * blurred) * self.gain_counts_per_e
        else:
            electrons = rng.poisson(expected)
            k = self.dqe0 / (1 - self.dqe0) if self.dqe0 < 1 else np.inf
            if np.isfinite(k):
                # Gamma(k n, g / k) is the sum of n independent yields of mean g and variance g^2 / k.
                light = np.zeros_like(expected)
                hit = electrons > 0
                light[hit] = rng.gamma(k * electrons[hit], self.gain_counts_per_e / k)
            else:
                light = electrons * self.gain_counts_per_e
            counts = self._blur(light)
        if self.read_noise_counts > 0:
            counts = counts + rng.normal(0.0, self.read_noise_counts, size=counts.shape)
        return counts.astype(np.float32)


def sample_detector(cfg: DetectorConfig, root_seed: int, structure_index: int) -> Detector:
    """The camera of one structure's records: a pure function of (root seed, structure)."""
    rng = rng_for(root_seed, STAGE_DETECTOR, structure_index, 1)
    draw = lambda d: d.sample(rng)
    return Detector(detector_type=str(draw(cfg.type)), gain_counts_per_e=float(draw(cfg.gain_counts_per_e)),
                    read_noise_counts=float(draw(cfg.read_noise_counts)), dqe0=float(draw(cfg.dqe0)),
                    mtf_c=float(draw(cfg.mtf_c)), mtf_f0=float(draw(cfg.mtf_f0)),
                    counting_sigma_px=float(draw(cfg.counting_sigma_px)))
