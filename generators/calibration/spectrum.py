"""Power spectra of micrographs, as a CTF fit needs them: averaged over overlapping tapered tiles (a periodogram
of one field is an exponential variate per frequency, far too noisy for rings), robust to the particles' Bragg
spots, and resampled on a polar grid where astigmatism is an angular modulation of the ring radius.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage


@dataclass(frozen=True)
class Spectrum:
    """A 2-D power spectrum, zero frequency at the centre, and its sampling."""
    power: np.ndarray  # (n, n), fftshifted
    pixel_size_A: float
    n_tiles: int

    @property
    def n(self) -> int:
        return self.power.shape[0]

    @property
    def dk(self) -> float:
        """Frequency step in 1/Å."""
        return 1.0 / (self.n * self.pixel_size_A)

    @property
    def nyquist(self) -> float:
        return 0.5 / self.pixel_size_A


def _taper(n: int) -> np.ndarray:
    """A 2-D Hann window: tile edges are discontinuities that would add a cross of power through the spectrum."""
    w = np.hanning(n + 2)[1:-1]
    return np.outer(w, w).astype(np.float64)


MIN_TILES = 4  # tiles a spectrum averages at least, particles or not (tile_size gives a field at least 4)


def tile_size(shape: tuple[int, int], largest: int = 256) -> int:
    """Tiles of half the shorter side (at least 4 overlapping tiles), a power of two, 32..`largest`."""
    side = min(shape)
    t = 2 ** int(np.floor(np.log2(max(side // 2, 32))))
    return int(min(largest, max(32, t)))


def power_spectrum(image: np.ndarray, pixel_size_A: float, tile_px: int | None = None,
                   exclude: np.ndarray | None = None) -> Spectrum:
    """Mean periodogram of tiles overlapping by half, each with its mean removed and a Hann taper.

    `exclude` (bool, image shape): pixels to keep out of the estimate (particles, when a segmentation is known);
    a tile with more than 10 % of them is skipped, but at least the MIN_TILES least covered are kept: on a small
    field crowded with particles one or two clean tiles give a periodogram too noisy to fit (each frequency's
    power scatters by 100 %), worse than a little particle in a few more."""
    image = np.asarray(image, np.float64)
    t = tile_px or tile_size(image.shape)
    t = min(t, min(image.shape))
    step = max(1, t // 2)
    ys = list(range(0, image.shape[0] - t + 1, step))
    xs = list(range(0, image.shape[1] - t + 1, step))
    win = _taper(t)
    norm = float(np.sum(win**2))
    tiles = [(y, x) for y in ys for x in xs]
    if exclude is not None:
        covered = sorted(tiles, key=lambda yx: exclude[yx[0]:yx[0] + t, yx[1]:yx[1] + t].mean())
        clean = [yx for yx in covered if exclude[yx[0]:yx[0] + t, yx[1]:yx[1] + t].mean() <= 0.1]
        tiles = clean if len(clean) >= MIN_TILES else covered[:MIN_TILES]
    acc = np.zeros((t, t))
    for y, x in tiles:
        a = image[y:y + t, x:x + t]
        a = (a - a.mean()) * win
        acc += np.abs(scipy.fft.fft2(a)) ** 2
    return Spectrum(np.fft.fftshift(acc / (len(tiles) * norm)), float(pixel_size_A), len(tiles))


def frequencies(s: Spectrum) -> tuple[np.ndarray, np.ndarray]:
    """|k| (1/Å) and azimuth phi (rad) of every pixel of the centred spectrum."""
    f = np.fft.fftshift(np.fft.fftfreq(s.n, d=s.pixel_size_A))
    ky, kx = np.meshgrid(f, f, indexing="ij")
    return np.hypot(kx, ky), np.arctan2(ky, kx)


def radial_profile(s: Spectrum, k: np.ndarray) -> np.ndarray:
    """The median of each annulus |k| in [k_i - dk/2, k_i + dk/2): a median, not a mean, so that a crystal's
    Bragg spots, a few bright pixels of an annulus, do not pull the carbon's rings."""
    kk, _ = frequencies(s)
    dk = s.dk
    out = np.empty(len(k))
    for i, kv in enumerate(k):
        ring = s.power[(kk >= kv - dk / 2) & (kk < kv + dk / 2)]
        out[i] = np.median(ring) if ring.size else np.nan
    return out


def polar(s: Spectrum, k: np.ndarray, n_angles: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """The spectrum on a (angle, |k|) grid over [0, pi) (a real image's spectrum is centrosymmetric), each value
    the median over its own and the opposite direction's samples of a sector n_angles wide."""
    phi = np.arange(n_angles) * np.pi / n_angles
    c = (s.n // 2, s.n // 2)
    r = k / s.dk
    # Bilinear samples on a fine azimuthal sub-grid, then a median per sector: robust like the radial median.
    sub = 5
    angles = (np.arange(n_angles * sub) + 0.5 - sub / 2) * np.pi / (n_angles * sub)
    out = np.empty((n_angles, len(k)))
    samples = []
    for a in (angles, angles + np.pi):
        yy = c[0] + np.outer(np.sin(a), r)
        xx = c[1] + np.outer(np.cos(a), r)
        samples.append(ndimage.map_coordinates(s.power, [yy, xx], order=1, mode="nearest"))
    both = np.concatenate([v.reshape(n_angles, sub, len(k)) for v in samples], axis=1)
    out[:] = np.median(both, axis=1)
    return phi, out


def shape_profile(image: np.ndarray, pixel_size_A: float, k: np.ndarray) -> np.ndarray:
    """The radially averaged spectrum of a field scaled to zero mean and unit variance: its shape only, so
    that display values (an unknown grey mapping) and counts compare."""
    a = np.asarray(image, np.float64)
    a = (a - a.mean()) / (a.std() or 1.0)
    return radial_profile(power_spectrum(a, pixel_size_A), k)


def psd_distance(real: list[np.ndarray], simulated: list[np.ndarray], pixel_size_A: float,
                 k: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """RMS difference of log10 mean spectrum shapes (real vs simulated fields, all at one pixel size) over
    |k| in [0.05 1/Å, 0.9 Nyquist]: 0 for the same shape, 0.3 for a factor 2 everywhere.
    Returns (distance, k, real mean profile, simulated mean profile)."""
    if k is None:
        n = min(min(a.shape) for a in [*real, *simulated])
        dk = 1 / (tile_size((n, n)) * pixel_size_A)
        k = np.arange(max(0.05, 2 * dk), 0.9 * 0.5 / pixel_size_A, dk)
    r = np.nanmean([shape_profile(a, pixel_size_A, k) for a in real], axis=0)
    s = np.nanmean([shape_profile(a, pixel_size_A, k) for a in simulated], axis=0)
    ok = (r > 0) & (s > 0)
    d = float(np.sqrt(np.mean((np.log10(r[ok]) - np.log10(s[ok])) ** 2)))
    return d, k, r, s
