"""Defocus, astigmatism and information limit from the power spectrum of amorphous carbon (Thon rings).

The model is abTEM's contrast transfer function. For a weak phase (and weak amplitude, ratio w) object the
spectrum is

    P(k, phi) = N(k) + A exp(-B k^2) E_t(k)^2 (sin chi - w cos chi)^2,   N(k) = exp(-B_n k^2) (n0 + n2 k^2 + n4 k^4),

chi(k, phi) = pi lambda k^2 (C10 + C12 cos 2(phi - phi12)) + pi/2 Cs lambda^3 k^4 (abTEM's and this project's
sign: C10 < 0 is underfocus), E_t the temporal-coherence envelope exp(-(pi lambda sigma k^2)^2 / 2) (abTEM's
focal_spread is the 1/e width, sqrt(2) sigma), exp(-B k^2) the carbon's own fall-off with the camera's and the
resampling's, N the noise (B_n: a blur after the noise, a rendering's or a scintillator's). chi is linear in its
coefficients: abTEM evaluates the chi of unit C10 and unit C30 once per grid, and a fit scales them
(`tests/test_calibration.py` checks the scaled model against abTEM's CTF).

The search follows CTFFIND's plan: an exhaustive 1-D search of the radially averaged spectrum (defocus, focal
spread, fall-off; the linear parts solved at each point), then a 2-D refinement on the polar spectrum for the
astigmatism. It fits the whole shape, not only the ring positions: small or downsampled fields show one
passband and no distinct ring, and its position and width still fix |defocus| and the envelope.

The sign of the defocus enters the spectrum only through Cs and the weak amplitude contrast: with a corrected
lens (|Cs| ~ 0.01 mm) under- and overfocus by the same amount give nearly the same rings. A fit says when it
cannot tell (`sign_ambiguous`), and then both signs are kept by the config it proposes.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize

from ..waves import wavelength_A
from .spectrum import Spectrum, polar, radial_profile

AMPLITUDE_CONTRAST = 0.07  # carbon at 300 kV; the fit is insensitive to it within 0.03-0.15
# A sign is called when the other sign's best fit is worse by this fraction of what the CTF term explains: with
# Cs = 0 and w = 0.07, fields of known sign were called wrong at a 2 % margin.
SIGN_MARGIN = 0.1


@dataclass(frozen=True)
class CTFFit:
    defocus_nm: float  # C10; negative is underfocus
    astigmatism_nm: float  # C12 magnitude
    astigmatism_angle_deg: float  # phi12 in [0, 180)
    focal_spread_nm: float  # sigma of the defocus spread
    falloff_A2: float  # B of exp(-B k^2)
    cs_mm: float  # assumed, not fitted
    energy_keV: float
    k_min: float  # fitted band, 1/Å
    k_max: float
    explained: float  # fraction of the spectrum's variance (about the noise-only model) the CTF term explains
    sign_ambiguous: bool
    first_zero_A: float  # period of the first CTF zero along the mean defocus; 0 when none is in the band
    information_limit_A: float  # where the envelope falls to exp(-2)
    # The focal spread ended on an end of its search range: the fall-off exp(-B k^2) took the envelope (in a short
    # band, or under a rendering's blur, the two trade off), so the spread itself was not measured.
    focal_spread_at_bound: bool = False
    noise_falloff_A2: float = 0.0  # B_n of the noise's exp(-B_n k^2) (a blur after the noise)
    # The defoci (nm) the radial spectrum cannot tell from the best: runs of the 1-D search whose cost lies within
    # one unit of chi-square of its minimum (the profile-likelihood 68 % interval), as (low, high) pairs.
    defocus_intervals_nm: tuple = ()

    def as_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=64)
def _unit_chi(energy_keV: float, k_key: tuple) -> tuple[np.ndarray, np.ndarray]:
    """chi of C10 = 1 Å and of C30 = 1 Å at |k|, from abTEM's aberration function (phi is irrelevant for
    round aberrations). Evaluated at a scale where chi stays well inside (-pi, pi), then divided."""
    from abtem.transfer import Aberrations

    k = np.asarray(k_key, np.float64)
    lam = wavelength_A(energy_keV)
    alpha = (lam * k).astype(np.float64)
    phi = np.zeros_like(alpha)
    out = []
    for sym in ("C10", "C30"):
        # the coefficient that keeps chi within 1 rad on this band (no phase wrapping), then scaled back
        chi1 = (math.pi * lam * k**2) if sym == "C10" else (math.pi / 2 * lam**3 * k**4)
        c = 1.0 / max(float(np.max(np.abs(chi1))), 1e-30)
        ab = Aberrations(aberration_coefficients={sym: c}, energy=energy_keV * 1e3)
        value = np.asarray(ab._evaluate_from_angular_grid(alpha, phi), np.complex128)
        out.append(-np.angle(value) / c)  # abTEM's kernel is exp(-i chi)
    return out[0], out[1]


def unit_chi(energy_keV: float, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _unit_chi(float(energy_keV), tuple(np.round(np.asarray(k, np.float64).ravel(), 12)))


def envelope(k: np.ndarray, energy_keV: float, focal_spread_nm: float) -> np.ndarray:
    lam = wavelength_A(energy_keV)
    return np.exp(-0.5 * (math.pi * lam * focal_spread_nm * 10 * np.asarray(k) ** 2) ** 2)


def ctf_power(k, energy_keV, defocus_A, cs_A, focal_spread_nm, w=AMPLITUDE_CONTRAST, c10=None, c30=None):
    """E_t^2 (sin chi - w cos chi)^2 at |k| (defocus_A may be an array broadcasting against k): the image of
    psi = 1 + i phi - w phi behind exp(-i chi) has contrast 2 phi (sin chi - w cos chi)."""
    if c10 is None:
        c10, c30 = unit_chi(energy_keV, np.asarray(k))
    chi = defocus_A * c10 + cs_A * c30
    return envelope(k, energy_keV, focal_spread_nm) ** 2 * (np.sin(chi) - w * np.cos(chi)) ** 2


def abtem_ctf_power(k: np.ndarray, phi: np.ndarray, energy_keV: float, defocus_nm: float, astigmatism_nm: float,
                    astigmatism_angle_deg: float, cs_mm: float, focal_spread_nm: float,
                    w: float = AMPLITUDE_CONTRAST) -> np.ndarray:
    """The same quantity straight from abTEM's CTF object (aberrations and temporal envelope), for the report
    and for checking the fast path."""
    from abtem.transfer import CTF

    ctf = CTF(aberration_coefficients={"C10": defocus_nm * 10, "C12": astigmatism_nm * 10,
                                       "phi12": math.radians(astigmatism_angle_deg), "C30": cs_mm * 1e7},
              focal_spread=math.sqrt(2) * focal_spread_nm * 10, energy=energy_keV * 1e3)
    lam = wavelength_A(energy_keV)
    t = np.asarray(ctf._evaluate_from_angular_grid(lam * np.asarray(k, np.float64), np.asarray(phi, np.float64)),
                   np.complex128)
    # t = E exp(-i chi): sin chi = -Im t / E, cos chi = Re t / E
    return (-t.imag - w * t.real) ** 2


class FitError(ValueError):
    pass


# Power about k = 0 that the noise polynomial cannot follow: fields holding many particles show a smooth hump
# whose tail reaches into the band (it starts at 1/25 Å). Gaussians of these widths (1/Å), each with its own
# amplitude, take it up; smooth and monotone, they cannot mimic rings. Without them the CTF term, under a steep
# fall-off (up to 200 Å^2), took the hump for a near-focus passband: on 14 simulated fields of an uncorrected
# 200 kV microscope (-53 to -76 nm) 7 were read within 2 nm, three of them as +4 to +7 nm; with them, 12
# (benchmarks/other_microscope.sh; tests/test_calibration.py).
HUMP_WIDTHS = (0.03, 0.06)
N_NOISE = 3 + len(HUMP_WIDTHS)  # n0, n2, n4 and the humps: the CTF term's amplitude is the next coefficient
# Fall-offs exp(-B k^2) searched (Å^2), for the CTF term and the noise alike: none (a counting camera's white
# noise) to a display rendering's blur.
FALLOFFS_A2 = (0.0, 3.0, 10.0, 30.0)


def design_columns(k: np.ndarray, shape: np.ndarray, flexible: bool = False, noise_b: float = 0.0
                   ) -> list[np.ndarray]:
    """The linear parts: noise n0 + n2 k^2 + n4 k^4 (a scintillator's MTF bends the noise down across the band;
    with n0 + n2 k^2 alone a near-focus CTF term took that bend for a passband) and the CTF term's amplitude a0
    (flexible: a0 + a1 k + a2 k^2, which also takes up part of the envelope: tried as the defocus search's model, it
    fitted a strong envelope on a near-focus passband in place of the true ring as often as not). noise_b: the
    noise's own fall-off exp(-noise_b k^2), where a blur acts after the noise (a display rendering's
    resampling, a scintillator's light spread): a polynomial cannot follow that Gaussian fall-off, and the CTF term
    under a strong fall-off took it for a near-focus passband (a field blurred by 1 px read -30 nm as -0.3 nm)."""
    # functions of k alone, evaluated on k and broadcast: the search calls this with shapes of (defoci, k)
    k2 = k**2
    g = np.exp(-noise_b * k2) if noise_b else np.ones_like(k2)
    cols = [np.broadcast_to(c, shape.shape) for c in (g, g * k2, g * k2**2)]
    cols += [np.broadcast_to(np.exp(-k2 / (2 * w**2)), shape.shape) for w in HUMP_WIDTHS]
    cols.append(shape)
    return cols + [shape * k, shape * k**2] if flexible else cols


def _solve_linear(p: np.ndarray, k: np.ndarray, shape: np.ndarray, flexible: bool = False, noise_b: float = 0.0
                  ) -> tuple[float, np.ndarray]:
    """Weighted least squares of P = n0 + n2 k^2 + n4 k^4 + a0 shape, relative residuals (an averaged
    periodogram's error is proportional to its value), with a0 >= 0: an inverted CTF term is no fit (its cost
    is then the noise-only model's). Returns (cost, coefficients)."""
    w = 1.0 / p
    design = np.stack(design_columns(k, shape, flexible, noise_b), axis=-1) * w[:, None]
    coef, *_ = np.linalg.lstsq(design, np.ones_like(p), rcond=None)
    if coef[N_NOISE] < 0:
        coef = np.zeros(design.shape[1])
        coef[:N_NOISE] = np.linalg.lstsq(design[:, :N_NOISE], np.ones_like(p), rcond=None)[0]
    r = design @ coef - 1.0
    return float(r @ r), coef


def _costs_many(p: np.ndarray, k: np.ndarray, shapes: np.ndarray, noise_b: float = 0.0) -> np.ndarray:
    """`_solve_linear`'s cost for many shapes at once (normal equations, batched)."""
    w = 1.0 / p
    u = np.stack(design_columns(k, shapes, noise_b=noise_b), axis=-1) * w[None, :, None]
    gram = np.einsum("nki,nkj->nij", u, u)
    rhs = u.sum(axis=1)
    try:
        coef = np.linalg.solve(gram, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.array([_solve_linear(p, k, sh, noise_b=noise_b)[0] for sh in shapes])
    costs = len(k) - np.einsum("ni,ni->n", rhs, coef)
    negative = coef[:, N_NOISE] < 0
    if np.any(negative):
        costs[negative] = _solve_linear(p, k, np.zeros_like(k), noise_b=noise_b)[0]
    return costs


def _band(s: Spectrum, k_min_A: float | None, k_max_A: float | None) -> np.ndarray:
    k_lo = max(3 * s.dk, 1 / (k_min_A or 25.0))
    k_hi = min(0.92 * s.nyquist, 1 / k_max_A if k_max_A else np.inf)
    return np.arange(k_lo, k_hi, s.dk)


def fit_ctf(s: Spectrum, energy_keV: float = 300.0, cs_mm: float = 0.0, defocus_range_nm: tuple[float, float] =
            (-150.0, 150.0), focal_spread_range_nm: tuple[float, float] = (0.5, 8.0), astigmatism: bool = True,
            n_angles: int = 36, longest_period_A: float | None = None, shortest_period_A: float | None = None
            ) -> CTFFit:
    lam = wavelength_A(energy_keV)
    k = _band(s, longest_period_A, shortest_period_A)
    if cs_mm:
        # An uncorrected lens's Cs packs the rings ever closer: keep to where one ring spans 4 or more samples
        # (2 pi Cs lambda^3 k^3 dk <= pi / 2); beyond, rings alias in the spectrum's sampling.
        k = k[k <= (1 / (4 * abs(cs_mm) * 1e7 * lam**3 * s.dk)) ** (1 / 3)]
    if len(k) < 8:
        raise FitError(f"only {len(k)} frequency samples between {1 / 25:.2f} 1/Å and Nyquist "
                       f"({s.nyquist:.3f} 1/Å)")
    prof = radial_profile(s, k)
    good = np.isfinite(prof) & (prof > 0)
    k, prof = k[good], prof[good]
    c10, c30 = unit_chi(energy_keV, k)
    cs_A = cs_mm * 1e7

    # Noise-only reference: how much of the spectrum's shape is left for the CTF term to explain.
    base_cost = min(_solve_linear(prof, k, np.zeros_like(k), noise_b=nb)[0] for nb in FALLOFFS_A2)

    # 1-D exhaustive search. The defocus step keeps chi's change at the band's edge under 0.25 rad.
    step_A = 0.25 / (math.pi * lam * k[-1] ** 2)
    dfs = np.arange(defocus_range_nm[0] * 10, defocus_range_nm[1] * 10 + step_A, step_A)
    sigmas = np.linspace(*focal_spread_range_nm, 8)
    by_df = np.full(len(dfs), np.inf)
    arg = np.zeros((len(dfs), 3))
    chi = dfs[:, None] * c10[None, :] + cs_A * c30[None, :]
    pure = (np.sin(chi) - AMPLITUDE_CONTRAST * np.cos(chi)) ** 2
    for nb in FALLOFFS_A2:
        for sg in sigmas:
            for b in FALLOFFS_A2:
                shapes = pure * (envelope(k, energy_keV, sg) ** 2 * np.exp(-b * k**2))[None, :]
                costs = _costs_many(prof, k, shapes, noise_b=nb)
                better = costs < by_df
                by_df[better], arg[better] = costs[better], (sg, b, nb)
    # Several local minima can be close in the radial average (a near-focus passband under a strong envelope
    # mimics a ring further out): refine the three best in 2-D, where the astigmatic pattern decides.
    minima = [i for i in range(len(dfs))
              if by_df[i] <= by_df[max(i - 1, 0)] and by_df[i] <= by_df[min(i + 1, len(dfs) - 1)]]
    minima = sorted(minima, key=lambda i: by_df[i])[:3]

    def cost1(x):
        df, sg, b, nb = x
        if not (focal_spread_range_nm[0] <= sg <= focal_spread_range_nm[1]) or not (0 <= b <= 200 and 0 <= nb <= 200):
            return np.inf
        shape = ctf_power(k, energy_keV, df, cs_A, sg, c10=c10, c30=c30) * np.exp(-b * k**2)
        return _solve_linear(prof, k, shape, noise_b=nb)[0]

    polar_data = polar(s, k, n_angles) if astigmatism else None
    candidates = []
    for i in minima:
        x0 = np.array([dfs[i], *arg[i]])
        simplex = [x0] + [x0 + step for step in np.diag([step_A, 0.7, 3.0, 3.0])]
        r = optimize.minimize(cost1, x0, method="Nelder-Mead",
                              options={"xatol": 0.3, "fatol": 1e-10, "initial_simplex": simplex})
        df1, sg1, b1, nb1 = r.x
        if polar_data is not None:
            c2, (df2, astig, angle) = _refine_astigmatism(polar_data, k, energy_keV, cs_A, df1, sg1, b1, nb1)
        else:
            c2, (df2, astig, angle) = r.fun, (df1, 0.0, 0.0)
        candidates.append((c2, df2, astig, angle, sg1, b1, nb1, float(r.fun)))
    _, df, astig, angle, sg, b, nb, cost_1d = min(candidates)

    # Sign: the best fit with the defocus's sign forced the other way.
    other = dfs[np.sign(dfs) == -np.sign(df)] if df != 0 else np.array([])
    sign_ambiguous = True
    if len(other):
        d2 = other[int(np.argmin(by_df[np.sign(dfs) == -np.sign(df)]))]
        alt = optimize.minimize(cost1, [d2, sg, b, nb], method="Nelder-Mead", options={"xatol": 0.5, "fatol": 1e-10})
        # Within SIGN_MARGIN of the CTF term's gain the two signs are not told apart by this spectrum.
        sign_ambiguous = bool((alt.fun - cost_1d) < SIGN_MARGIN * max(base_cost - cost_1d, 1e-12))

    sg, b = float(sg), float(b)
    intervals = _intervals(dfs / 10, by_df, len(k))
    explained = max(0.0, 1.0 - cost_1d / base_cost) if base_cost > 0 else 0.0
    first_zero = 0.0
    z = np.where(np.diff(np.sign(np.sin(df * c10 + cs_A * c30))) != 0)[0]
    if len(z):
        first_zero = float(1 / k[z[0]])
    info = math.sqrt(2 / (math.pi * lam * sg * 10)) if sg > 0 else float(s.nyquist)
    return CTFFit(defocus_nm=float(df) / 10, astigmatism_nm=float(astig) / 10, astigmatism_angle_deg=float(angle),
                  focal_spread_nm=sg, falloff_A2=b, cs_mm=cs_mm, energy_keV=energy_keV,
                  k_min=float(k[0]), k_max=float(k[-1]), explained=float(explained),
                  sign_ambiguous=sign_ambiguous, first_zero_A=first_zero, information_limit_A=1 / info,
                  focal_spread_at_bound=not (1.02 * focal_spread_range_nm[0] < sg < 0.98 * focal_spread_range_nm[1]),
                  noise_falloff_A2=float(nb), defocus_intervals_nm=intervals)


# Free parameters of the 1-D fit: three noise terms, the CTF's amplitude, defocus, focal spread and both fall-offs.
N_PARAMETERS = 8


def _intervals(dfs_nm: np.ndarray, cost: np.ndarray, n: int) -> tuple:
    """Runs of defocus whose cost is within one unit of chi-square of the minimum. The cost is a sum of squared
    relative residuals; its minimum over the degrees of freedom estimates their variance."""
    s2 = float(np.min(cost)) / max(n - N_PARAMETERS, 1)
    inside = cost <= np.min(cost) + s2
    edges = np.flatnonzero(np.diff(np.r_[0, inside.astype(int), 0]))
    return tuple((round(float(dfs_nm[a]), 2), round(float(dfs_nm[b - 1]), 2)) for a, b in zip(edges[::2], edges[1::2]))


def _refine_astigmatism(polar_data, k, energy_keV, cs_A, df, sg, b, nb):
    """C10, C12 and phi12 from the polar spectrum: every direction shares the noise and the carbon's amplitude
    (isotropic), and sees its own defocus C10 + C12 cos 2(phi - phi12)."""
    phi, pol = polar_data
    ok = np.all(np.isfinite(pol) & (pol > 0), axis=0)
    k, pol = k[ok], pol[:, ok]
    c10, c30 = unit_chi(energy_keV, k)
    cos2, sin2 = np.cos(2 * phi)[:, None], np.sin(2 * phi)[:, None]
    kk = np.broadcast_to(k, pol.shape).ravel()
    p = pol.ravel()

    def cost(x):
        d, a, c = x
        local = d + a * cos2 + c * sin2
        shape = ctf_power(k, energy_keV, local, cs_A, sg, c10=c10[None, :], c30=c30[None, :]) * np.exp(-b * k**2)
        return _solve_linear(p, kk, shape.ravel(), noise_b=nb)[0]

    starts = [[df, 0.0, 0.0]] + [[df, 30 * math.cos(t), 30 * math.sin(t)] for t in np.arange(4) * math.pi / 4]
    best = min((optimize.minimize(cost, x0, method="Nelder-Mead", options={"xatol": 0.3, "fatol": 1e-10})
                for x0 in starts), key=lambda r: r.fun)
    d, a, c = best.x
    return float(best.fun), (d, math.hypot(a, c), (math.degrees(math.atan2(c, a)) / 2) % 180)
