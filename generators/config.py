"""Typed, validated generation config: the one place where fields, units, ranges and presets live.

Every physical field carries its unit in its name. Random quantities are written as explicit
distributions in YAML::

    radius_A: {uniform: [10, 20]}
    defect_type: {choice: [none, twin], weights: [1, 3]}
    radius_A: {truncnormal: {mean: 40, sd: 10, low: 30, high: 50}}
    n_defects: {integers: [1, 3]}           # inclusive
    defocus_nm: {linspace: {start: -50, stop: 50, num: 11, jitter_sd: 2}}  # condition i takes step i % num
    defocus_nm: {empirical: {values: [-31.2, 28.4], jitter_sd: 2}}  # measured values (temsynth calibrate)
    cs_mm: 0.001                            # a fixed value
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from temsynth.resources import package_dir

from . import materials as mats
from .errors import TemsynthError

PRESETS_DIR = package_dir("generators", "presets")  # package data (setup.cfg), read as a wheel installs it


class ConfigError(TemsynthError, ValueError):
    """A config that cannot be used; the message names the field and the fix."""


# ---------------------------------------------------------------- distributions
class Strict(BaseModel):
    # NaN and infinities are refused by every float field of every config section (and, through
    # `non_finite_fields`, in free-form values such as a fixed distribution's `value`).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Uniform(Strict):
    uniform: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self):
        if self.uniform[0] > self.uniform[1]:
            raise ValueError(f"uniform: [low, high] needs low <= high, got {list(self.uniform)}")
        return self

    def sample(self, rng: np.random.Generator, index: int = 0) -> float:
        return float(rng.uniform(*self.uniform))

    def support(self) -> tuple[float, float]:
        return self.uniform


class Integers(Strict):
    integers: tuple[int, int]

    @model_validator(mode="after")
    def _ordered(self):
        if self.integers[0] > self.integers[1]:
            raise ValueError(f"integers: [low, high] needs low <= high, got {list(self.integers)}")
        return self

    def sample(self, rng: np.random.Generator, index: int = 0) -> int:
        return int(rng.integers(self.integers[0], self.integers[1] + 1))

    def support(self) -> tuple[float, float]:
        return self.integers


class _TN(Strict):
    mean: float
    sd: float = Field(gt=0)
    low: float
    high: float


class TruncNormal(Strict):
    truncnormal: _TN

    @model_validator(mode="after")
    def _ordered(self):
        t = self.truncnormal
        if not t.low < t.high:
            raise ValueError(f"truncnormal needs low < high, got low={t.low}, high={t.high}")
        return self

    def sample(self, rng: np.random.Generator, index: int = 0) -> float:
        t = self.truncnormal
        # Rejection keeps the draw a pure function of rng; fall back to clipping only for absurd tails.
        for _ in range(1000):
            x = rng.normal(t.mean, t.sd)
            if t.low <= x <= t.high:
                return float(x)
        return float(np.clip(t.mean, t.low, t.high))

    def support(self) -> tuple[float, float]:
        return (self.truncnormal.low, self.truncnormal.high)


class LogUniform(Strict):
    """Uniform in log(x): as many particles between 1 and 2 nm as between 4 and 8 nm."""
    loguniform: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self):
        lo, hi = self.loguniform
        if not 0 < lo <= hi:
            raise ValueError(f"loguniform: [low, high] needs 0 < low <= high, got {list(self.loguniform)}")
        return self

    def sample(self, rng: np.random.Generator, index: int = 0) -> float:
        lo, hi = self.loguniform
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    def support(self) -> tuple[float, float]:
        return self.loguniform


class _Lin(Strict):
    start: float
    stop: float
    num: int = Field(ge=1)
    jitter_sd: float = Field(default=0.0, ge=0)


class Linspace(Strict):
    """A nominal series (e.g. a defocus series); condition i takes step i % num, jittered."""

    linspace: _Lin

    def sample(self, rng: np.random.Generator, index: int = 0) -> float:
        s = self.linspace
        steps = np.linspace(s.start, s.stop, s.num)
        jitter = rng.normal(0.0, s.jitter_sd) if s.jitter_sd > 0 else 0.0
        return float(steps[index % s.num] + jitter)

    def support(self) -> tuple[float, float]:
        s = self.linspace
        pad = 5 * s.jitter_sd
        return (min(s.start, s.stop) - pad, max(s.start, s.stop) + pad)


class _Emp(Strict):
    values: tuple[float, ...] = Field(min_length=1)
    jitter_sd: float = Field(default=0.0, ge=0)
    low: float | None = None
    high: float | None = None


class Empirical(Strict):
    """Measured values (e.g. the defocus of each of a user's micrographs, `temsynth calibrate`): a draw takes one
    of them at random and adds N(0, jitter_sd), kept inside [low, high] by reflection."""

    empirical: _Emp

    @model_validator(mode="after")
    def _bounds(self):
        e = self.empirical
        if e.low is not None and e.high is not None and not e.low < e.high:
            raise ValueError(f"empirical needs low < high, got low={e.low}, high={e.high}")
        out = [v for v in e.values if (e.low is not None and v < e.low) or (e.high is not None and v > e.high)]
        if out:
            raise ValueError(f"empirical values {out} lie outside [low, high] = [{e.low}, {e.high}]")
        return self

    def sample(self, rng: np.random.Generator, index: int = 0) -> float:
        e = self.empirical
        x = float(e.values[int(rng.integers(len(e.values)))])
        if e.jitter_sd > 0:
            x += float(rng.normal(0.0, e.jitter_sd))
        lo, hi = self.support()
        for _ in range(4):  # reflect at the bounds (a jitter larger than the range would need more)
            x = 2 * lo - x if x < lo else 2 * hi - x if x > hi else x
        return float(np.clip(x, lo, hi))

    def support(self) -> tuple[float, float]:
        e = self.empirical
        lo, hi = min(e.values) - 5 * e.jitter_sd, max(e.values) + 5 * e.jitter_sd
        return (lo if e.low is None else max(lo, e.low), hi if e.high is None else min(hi, e.high))


class Choice(Strict):
    choice: tuple[Any, ...]
    weights: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _check(self):
        if not self.choice:
            raise ValueError("choice needs at least one value")
        if self.weights is not None:
            if len(self.weights) != len(self.choice) or min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ValueError("weights must be non-negative, one per choice, not all zero")
        return self

    def sample(self, rng: np.random.Generator, index: int = 0):
        p = None
        if self.weights is not None:
            w = np.asarray(self.weights, float)
            p = w / w.sum()
        v = self.choice[int(rng.choice(len(self.choice), p=p))]
        return v.item() if hasattr(v, "item") else v

    def support(self):
        try:
            vals = [float(v) for v in self.choice]
            return (min(vals), max(vals))
        except (TypeError, ValueError):
            return None


class Fixed(Strict):
    value: Any

    def sample(self, rng: np.random.Generator, index: int = 0):
        return self.value

    def support(self):
        try:
            return (float(self.value), float(self.value))
        except (TypeError, ValueError):
            return None


_DIST_KEYS = {"uniform": "Uniform", "integers": "Integers", "truncnormal": "TruncNormal", "linspace": "Linspace",
              "loguniform": "LogUniform", "empirical": "Empirical", "choice": "Choice", "value": "Fixed"}


def _dist_tag(v: Any) -> str | None:
    """Which distribution a value is, from its key: a range error is then reported once, for that one, instead of
    with an "unknown field" line for every other alternative."""
    if isinstance(v, BaseModel):
        return type(v).__name__
    if isinstance(v, dict):
        for key, tag in _DIST_KEYS.items():
            if key in v:
                return tag
    return None


Distribution = Annotated[
    Union[Annotated[Uniform, Tag("Uniform")], Annotated[LogUniform, Tag("LogUniform")],
          Annotated[Integers, Tag("Integers")], Annotated[TruncNormal, Tag("TruncNormal")],
          Annotated[Linspace, Tag("Linspace")], Annotated[Empirical, Tag("Empirical")],
          Annotated[Choice, Tag("Choice")], Annotated[Fixed, Tag("Fixed")]],
    Discriminator(_dist_tag, custom_error_type="distribution",
                  custom_error_message="expected a number or one of {uniform: [low, high]}, {integers: [low, high]}, "
                                       "{truncnormal: {mean, sd, low, high}}, {linspace: {start, stop, num}}, "
                                       "{empirical: {values: [...], jitter_sd}}, {choice: [...]}")]


def _as_dist(v: Any) -> Any:
    if isinstance(v, (int, float, str)) and not isinstance(v, bool):
        return Fixed(value=v)
    return v


def ranged(lo: float, hi: float, what: str = "value"):
    """A distribution whose whole support must lie in [lo, hi]."""

    def check(d):
        sup = d.support()
        if sup is None:
            raise ValueError(f"{what} must be numeric")
        if sup[0] < lo or sup[1] > hi:
            raise ValueError(f"{what} must lie in [{lo}, {hi}], got support [{sup[0]}, {sup[1]}]")
        return d

    from pydantic import BeforeValidator

    return Annotated[Distribution, BeforeValidator(_as_dist), AfterValidator(check)]


def choice_of(allowed: tuple[str, ...]):
    def check(d):
        vals = d.choice if isinstance(d, Choice) else (d.value,) if isinstance(d, Fixed) else None
        if vals is None:
            raise ValueError(f"use `choice: [...]` or a fixed value from {list(allowed)}")
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise ValueError(f"unknown value(s) {bad}; allowed: {list(allowed)}")
        return d

    return _choice_type(check, f"use `choice: [...]` or a fixed value from {list(allowed)}")


def _choice_type(check, message: str):
    """A value or `{choice: [...]}` (typed Fixed / Choice), then `check`; `message` when it is neither."""
    from pydantic import BeforeValidator

    return Annotated[Union[Annotated[Choice, Tag("Choice")], Annotated[Fixed, Tag("Fixed")]],
                     Discriminator(_dist_tag, custom_error_type="distribution", custom_error_message=message),
                     BeforeValidator(_as_dist), AfterValidator(check)]


def names_of(what: str):
    """A choice of names checked later against a list only the whole config knows (the materials: built-in and
    the config's own)."""

    def check(d):
        vals = d.choice if isinstance(d, Choice) else (d.value,)
        bad = [v for v in vals if not isinstance(v, str)]
        if bad:
            raise ValueError(f"{what}: {bad} are not names; give material names such as Au or CdSe")
        return d

    return _choice_type(check, f"{what}: use `choice: [...]` or one name")


# Krivanek polar aberration symbols (abTEM's names): magnitudes C_nm, angles phi_nm.
POLAR_SYMBOLS = frozenset(
    ["C10", "C12", "phi12", "C21", "phi21", "C23", "phi23", "C30", "C32", "phi32", "C34", "phi34", "C41", "phi41",
     "C43", "phi43", "C45", "phi45", "C50", "C52", "phi52", "C54", "phi54", "C56", "phi56"])


# ---------------------------------------------------------------- sections
DEFECT_TYPES = ("none", "twin", "multiple_twins", "stacking_fault", "mixed")


class Defects(Strict):
    type: choice_of(DEFECT_TYPES) = Fixed(value="none")
    # Number of planar defects for multiple_twins / stacking_fault / mixed (twin is always 1).
    n_defects: ranged(0, 10, "n_defects") = Integers(integers=(2, 3))
    stacking_fault_ratio: float = Field(default=0.5, ge=0, le=1)
    min_separation_planes: int = Field(default=3, ge=1, le=20)


class Orientation(Strict):
    mode: Literal["random", "zone_axis"] = "random"
    zone_axis: tuple[int, int, int] = (1, 1, 0)
    tilt_deg: ranged(0, 90, "tilt_deg") = Fixed(value=0.0)

    @model_validator(mode="after")
    def _axis(self):
        if not any(self.zone_axis):
            raise ValueError("zone_axis [0, 0, 0] is no direction; give a crystal direction such as [1, 1, 0]")
        return self


SUPPORT_KINDS = ("amorphous", "graphene")
# Handbook films: composition, mass density (g/cm³) and least interatomic distance (Å) of the random packing.
SUPPORT_FILMS = {"carbon": ("C", 2.2, 1.4), "silicon_nitride": ("Si3N4", 3.0, 1.6), "silica": ("SiO2", 2.2, 1.5)}
GRAPHENE_INTERLAYER_A = 3.35


class Substrate(Strict):
    """The support film. `amorphous`: a random close packing of `composition` at a density (czone's amorphous
    generator, the same way for carbon, silicon nitride or silica); `graphene`: `graphene_layers` AB-stacked
    sheets. Its kind and composition are recorded per record (`substrate_kind`, `substrate_composition`)."""
    kind: Literal["amorphous", "graphene"] = "amorphous"
    # Chemical formula of an amorphous film, e.g. C, Si3N4, SiO2: elements drawn in its proportions.
    composition: str = "C"
    thickness_A: ranged(0, 500, "substrate thickness") = Uniform(uniform=(20, 40))
    density_atoms_per_A3: float = Field(default=0.1103075, gt=0, le=0.2)
    # Alternative to density_atoms_per_A3 (the handbook's unit): converted with the composition's mean mass.
    density_g_per_cm3: float | None = Field(default=None, gt=0, le=25)
    min_dist_A: float = Field(default=1.4, gt=0.5, le=3.0)
    # graphene: sheets per scene (the film's thickness is then layers x 3.35 Å and thickness_A is not drawn)
    graphene_layers: ranged(1, 20, "graphene_layers") = Integers(integers=(1, 3))
    # Independent periodic blocks per dataset; each structure takes one, shifted and flipped at random.
    bank_size: int = Field(default=8, ge=1, le=1024)

    @model_validator(mode="after")
    def _composition(self):
        composition_numbers(self.composition)  # a ValueError names the formula and the fix
        if self.kind == "graphene" and self.composition not in ("C", "C1"):
            raise ValueError(f"kind graphene is carbon; drop composition {self.composition!r} or use kind amorphous")
        return self

    @property
    def atoms_per_A3(self) -> float:
        if self.density_g_per_cm3 is None:
            return self.density_atoms_per_A3
        from ase.data import atomic_masses

        zs, fr = composition_numbers(self.composition)
        mean_mass = float(np.dot(fr, atomic_masses[zs]))
        return self.density_g_per_cm3 / (mean_mass * 1.66053907)  # g/cm³ -> atoms/Å³ (u = 1.6605e-24 g)


def graphene_strain(field_A: float) -> float:
    """Largest strain that fits whole rectangular graphene cells (a x sqrt(3) a) into a square periodic field."""
    cells = (2.46, 2.46 * math.sqrt(3))
    return max(abs(field_A / (max(1, round(field_A / c)) * c) - 1) for c in cells)


def composition_numbers(formula: str) -> tuple[np.ndarray, np.ndarray]:
    """(atomic numbers, number fractions) of a chemical formula such as Si3N4."""
    from ase.data import atomic_numbers
    from ase.formula import Formula

    try:
        counts = Formula(formula).count()
    except ValueError as err:
        raise ValueError(f"composition {formula!r} is no chemical formula ({err}); "
                         "write e.g. C, Si3N4 or SiO2") from None
    bad = [e for e in counts if e not in atomic_numbers]
    if not counts or bad:
        raise ValueError(f"composition {formula!r}: unknown element(s) {bad}; write e.g. C, Si3N4 or SiO2")
    zs = np.array([atomic_numbers[e] for e in counts])
    n = np.array(list(counts.values()), float)
    return zs, n / n.sum()


# Largest distance of an outline from the centre over the equivalent-volume radius (octahedron: (pi)^(1/3)).
SHAPE_REACH = {"sphere": 1.0, "octahedron": 1.47, "cuboctahedron": 1.25, "truncated_octahedron": 1.2}
SHAPES = tuple(SHAPE_REACH)
PLACEMENTS = ("random", "aggregate")
# Coverage that each placement packs to before particles stop finding room (particles' outlines, at the largest
# radius): random sequential placement jams near 55 % and is asked for 40 % at most; contact growth packs denser.
PLACEMENT_COVERAGE = {"random": 0.4, "aggregate": 0.65}


class CoreShell(Strict):
    """Core-shell particles: with `probability`, a particle's crystal (its drawn structure.material, now the shell)
    holds a concentric spherical core of `core_material` whose radius is `core_radius_fraction` of the particle's
    (equivalent) radius. Both crystals share one crystal frame (cube-on-cube for two cubic metals); czone gives
    the core precedence where the two volumes overlap, and shell atoms closer to a core atom than 0.85 of the two
    crystals' smaller nearest-neighbour distance are left out. A core-shell particle takes no planar defects
    (its requested defect type is kept, its realised one is `none`). A core drawn of the particle's own material
    is no core: that particle is one crystal."""
    probability: float = Field(default=1.0, ge=0, le=1)
    core_material: names_of("structure.core_shell.core_material")
    core_radius_fraction: ranged(0.1, 0.95, "core_radius_fraction") = Uniform(uniform=(0.4, 0.7))


class StructureConfig(Strict):
    """A scene: `n_particles` particles, each drawing its own material, shape, radius, defects and orientation,
    resting on one amorphous carbon substrate."""
    n_particles: ranged(0, 64, "n_particles") = Fixed(value=1)
    # A built-in material (`temsynth materials`) or one of the config's own `materials:`.
    material: names_of("structure.material") = Fixed(value="Au")
    # None: every particle is one crystal of its material.
    core_shell: CoreShell | None = None
    # sphere, or a Wulff construction (czone's prefab.wulff) of the material's surface energies
    shape: choice_of(SHAPES) = Fixed(value="sphere")
    # Sphere radius, or the equivalent-volume radius of a faceted shape.
    radius_A: ranged(2, 500, "particle radius") = Uniform(uniform=(10, 20))
    # None: every particle draws radius_A. A number s: radius_A is drawn once per scene (one synthesis batch)
    # and each particle takes that radius times exp(N(0, s)), kept inside radius_A's range.
    radius_spread: float | None = Field(default=None, ge=0, le=2)
    # None: n_particles particles. A distribution: particles are added until their projected discs (pi r^2)
    # cover this fraction of the field, at most n_particles of them; 0 gives bare carbon.
    area_fraction: ranged(0, 0.5, "area_fraction") | None = None
    defects: Defects = Defects()
    orientation: Orientation = Orientation()
    substrate: Substrate = Substrate()
    # False: every particle lies whole inside the image, edge_margin_A from its border. True: particles may
    # be cut by the border (the cell is periodic, so a cut particle re-enters at the opposite edge).
    allow_border_cuts: bool = False
    edge_margin_A: float = Field(default=4.0, ge=0)
    # Lowest particle atom above the highest support atom. None: from the elements involved, the largest sum of
    # covalent radii over (particle element, support element) pairs (Au on C 2.12 Å, CeO2 on Si3N4 3.15 Å).
    contact_distance_A: float | None = Field(default=2.2, ge=1.0, le=10.0)
    # Least gap between the projected outlines (bounding circles) of two particles: they may touch, never overlap.
    particle_gap_A: float = Field(default=2.5, ge=0.0, le=100.0)
    # Where particles land, drawn per scene: `random` (uniform, sequential) or `aggregate` (each particle after
    # the first touches one already placed, gap apart: the dense clusters real dispersions dry into, which
    # random placement cannot pack).
    placement: choice_of(PLACEMENTS) = Fixed(value="random")
    # RMS thermal displacement per frozen-phonon configuration (0: static lattice).
    thermal_sigma_A: float = Field(default=0.0, ge=0, le=0.5)


def _energy_choice(d: Choice) -> Choice:
    bad = [v for v in d.choice if isinstance(v, bool) or not isinstance(v, (int, float)) or not 20 <= v <= 1500]
    if bad:
        raise ValueError(f"choice values {bad} are not energies in [20, 1500] keV; e.g. {{choice: [80, 200, 300]}}")
    return d


class SimulationConfig(Strict):
    # The extension point for simulators: each name maps to a class implementing `simulate.Simulator` in
    # `simulate.make_simulator`. `prismatic` works once `make prismatic` has built it; without the build a run
    # refuses before any work, naming that command (generators/simulate_prismatic.py).
    backend: Literal["abtem", "prismatic"] = "abtem"
    # Beam energy, 20-1500 keV: one for the run, or `{choice: [80, 200, 300], weights: [...]}`, one drawn per
    # structure (its exit wave is computed at it; every condition of the structure shares it).
    energy_keV: Annotated[float, Field(ge=20, le=1500)] | Annotated[Choice, AfterValidator(_energy_choice)] = 300.0
    sampling_A: float = Field(default=0.125, gt=0.01, le=1.0)
    slice_thickness_A: float = Field(default=2.0, gt=0.1, le=20)
    parametrization: Literal["lobato", "kirkland"] = "lobato"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    n_frozen_phonons: int = Field(default=1, ge=1, le=64)

    @property
    def energies_keV(self) -> tuple[float, ...]:
        """Every energy a structure can be simulated at."""
        e = self.energy_keV
        return tuple(float(v) for v in e.choice) if isinstance(e, Choice) else (float(e),)


class Chromatic(Strict):
    """The focal spread computed from the microscope instead of given: the chromatic aberration Cc times the
    relative spread of the beam's energy and of the objective lens' focusing (`imaging.focal_spread_nm`)."""
    # Chromatic aberration coefficient of the objective lens (uncorrected ~1-2 mm; Cc-corrected ~0.01 mm).
    cc_mm: ranged(0, 50, "cc_mm")
    # Energy spread of the beam as manufacturers quote it: full width at half maximum (Schottky FEG ~0.7 eV,
    # cold FEG ~0.3 eV, monochromated ~0.1 eV).
    energy_spread_eV: ranged(0, 20, "energy_spread_eV")
    # RMS relative instability of the accelerating voltage (acts as an energy spread).
    high_tension_ppm: ranged(0, 100, "high_tension_ppm") = Fixed(value=0.0)
    # RMS relative instability of the objective lens current (the focal length goes as 1 / I^2: twice its weight).
    lens_current_ppm: ranged(0, 100, "lens_current_ppm") = Fixed(value=0.0)


DETECTOR_TYPES = ("ideal", "scintillator", "counting")


class DetectorConfig(Strict):
    """The camera after the dose (generators/detector.py has the model and its formulas).

    ideal: Poisson counts, one per electron. scintillator (CCD/CMOS behind a scintillator): Poisson electrons,
    a gamma-distributed light yield per electron (DQE(0) = dqe0), the scintillator's point spread
    MTF(f) = (1 - mtf_c) / (1 + (f / mtf_f0)^2) + mtf_c on signal and noise alike, gain, Gaussian read noise.
    counting (direct detector in counting mode): each electron found with probability dqe0 and localised with
    a Gaussian error, MTF(f) = exp(-2 pi^2 sigma^2 f^2); the noise stays white. f in cycles per detector pixel.
    """
    type: choice_of(DETECTOR_TYPES) = Fixed(value="ideal")
    gain_counts_per_e: ranged(1e-3, 1e4, "gain_counts_per_e") = Fixed(value=1.0)
    read_noise_counts: ranged(0, 1e4, "read_noise_counts") = Fixed(value=0.0)
    dqe0: ranged(0.01, 1.0, "dqe0") = Fixed(value=1.0)
    mtf_c: ranged(0.0, 1.0, "mtf_c") = Fixed(value=0.05)
    mtf_f0: ranged(0.005, 10.0, "mtf_f0") = Fixed(value=0.15)
    counting_sigma_px: ranged(0.0, 5.0, "counting_sigma_px") = Fixed(value=0.3)


class ImagingConfig(Strict):
    image_size_px: int = Field(default=256, ge=16, le=8192)
    # Simulated field in detector pixels; when larger than image_size_px each condition stores a random
    # image_size_px crop that still holds the whole particle (the seed study's 640 -> 512 crop).
    field_size_px: int | None = Field(default=None, ge=16, le=8192)
    pixel_size_A: float = Field(default=0.25, gt=0.01, le=10)
    # The camera's own pixel size, drawn per structure; the recorded image is then resampled onto the stored
    # grid (pixel_size_A) exactly as the experimental importer resamples real micrographs. None: the camera's
    # pixels are the stored ones.
    detector_pixel_size_A: ranged(0.02, 10, "detector_pixel_size_A") | None = None
    detector: DetectorConfig = DetectorConfig()
    # Defocus is C10 (negative = underfocus; Scherzer is negative for positive Cs), chi = pi lam df k^2 + ...
    defocus_nm: ranged(-5000, 5000, "defocus_nm") = Uniform(uniform=(-20, 20))
    cs_mm: ranged(-10, 10, "cs_mm") = Fixed(value=-0.02)
    astigmatism_nm: ranged(0, 1000, "astigmatism_nm") = Uniform(uniform=(0, 2))
    astigmatism_angle_deg: ranged(-360, 360, "astigmatism_angle_deg") = Uniform(uniform=(0, 180))
    focal_spread_nm: ranged(0, 100, "focal_spread_nm") = Fixed(value=1.5)
    # Given, the focal spread of every record is computed from Cc, the energy spread and the instabilities at
    # the structure's beam energy (then leave focal_spread_nm out).
    chromatic: Chromatic | None = None
    dose_e_per_A2: ranged(1e-3, 1e7, "dose_e_per_A2") = Uniform(uniform=(100, 1200))
    # 1: quasi-coherent temporal envelope on the wave; N > 1: incoherent sum over an N-point defocus
    # series spanning +-3 sigma (the seed study's 25-point recipe), exact for non-linear imaging.
    focal_series_points: int = Field(default=1, ge=1, le=101)
    objective_aperture_mrad: float | None = Field(default=None, gt=0)
    # Further fixed polar aberrations (Krivanek notation), magnitudes in Angstrom, angles in degrees,
    # e.g. {C23: 179.8, phi23: 0, C50: 1.048e7}. Merged under the sampled ones.
    residual_aberrations_A: dict[str, float] = Field(default_factory=dict)

    @property
    def field_px(self) -> int:
        return self.field_size_px or self.image_size_px

    @model_validator(mode="after")
    def _aberration_names(self):
        if self.field_size_px is not None and self.field_size_px < self.image_size_px:
            raise ValueError(f"field_size_px ({self.field_size_px}) must be >= image_size_px ({self.image_size_px})")
        bad = [k for k in self.residual_aberrations_A if k not in POLAR_SYMBOLS]
        if bad:
            raise ValueError(f"unknown aberration symbol(s) {bad}; allowed: {sorted(POLAR_SYMBOLS)}")
        if self.chromatic is not None and self.focal_spread_nm != ImagingConfig.model_fields["focal_spread_nm"].default:
            raise ValueError("focal_spread_nm and chromatic both given: the focal spread is computed from "
                             "chromatic (cc_mm, energy_spread_eV); leave focal_spread_nm out, or drop chromatic")
        return self


class MaskConfig(Strict):
    phase_threshold_rad: float = Field(default=math.pi / 12, gt=0, lt=math.pi)
    # Closing radius bridges the gaps between resolved atomic columns; keep it below the particle radius.
    closing_radius_A: float = Field(default=1.5, ge=0, le=20)
    # The seed study's label margin: blur the mask with a Gaussian of this sigma and keep > blur_threshold, which
    # widens a straight edge by 1.28 sigma at 0.1 (hand-drawn labels of real micrographs run ~2 Å wider than the
    # phase threshold). 0: no margin.
    blur_sigma_A: float = Field(default=0.0, ge=0, le=20)
    blur_threshold: float = Field(default=0.1, gt=0, lt=1)


class Splits(Strict):
    train: float = Field(default=0.8, ge=0, le=1)
    validation: float = Field(default=0.1, ge=0, le=1)
    test: float = Field(default=0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _sum(self):
        if abs(self.train + self.validation + self.test - 1.0) > 1e-6:
            raise ValueError("train + validation + test must sum to 1")
        return self


class LatticeParams(Strict):
    a: float = Field(gt=0.5, le=100)
    b: float | None = Field(default=None, gt=0.5, le=100)  # None: a
    c: float | None = Field(default=None, gt=0.5, le=100)  # None: a
    alpha: float = Field(default=90.0, gt=0, lt=180)
    beta: float = Field(default=90.0, gt=0, lt=180)
    gamma: float = Field(default=90.0, gt=0, lt=180)


class BasisSite(Strict):
    element: str
    frac: tuple[float, float, float]


class MaterialSpec(Strict):
    """A crystal of the config's own: `cif: path` (relative to the config file), or `spacegroup` (number or
    Hermann-Mauguin symbol), `lattice` and the asymmetric `basis`. A crystal file is read once, when the config is
    loaded: its parsed cell (the conventional standard cell, all sites) is kept here with the file's sha256, so the
    config's hash and its provenance capture the crystal and a record is rebuilt without the file.
    `defects` / `shapes`: restrict the planar defects and faceted shapes to these (None: all the lattice defines)."""
    cif: str | None = None
    cif_sha256: str | None = None
    spacegroup: int | str | None = None
    lattice: LatticeParams | None = None
    basis: tuple[BasisSite, ...] | None = None
    defects: tuple[str, ...] | None = None
    shapes: tuple[str, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_file(cls, data: Any, info: ValidationInfo):
        if not isinstance(data, dict) or not data.get("cif"):
            return data
        if data.get("basis") is not None:
            # A config this one wrote (a manifest, a dump): the file was read then; its parse is what counts.
            if not data.get("cif_sha256"):
                raise ValueError("give either cif or spacegroup + lattice + basis, not both")
            return data
        extra = [k for k in ("spacegroup", "lattice", "cif_sha256") if data.get(k) is not None]
        if extra:
            raise ValueError(f"give either cif or spacegroup + lattice + basis, not cif with {extra}")
        base = Path((info.context or {}).get("base_dir") or ".")
        path = Path(data["cif"])
        crystal, sha = mats.read_crystal_file(path if path.is_absolute() else base / path)
        (a, b, c), (al, be, ga) = crystal.abc, crystal.angles_deg
        return {**data, "cif_sha256": sha, "spacegroup": crystal.spacegroup,
                "lattice": {"a": a, "b": b, "c": c, "alpha": al, "beta": be, "gamma": ga},
                "basis": [{"element": e, "frac": list(f)} for e, f in crystal.sites]}

    @model_validator(mode="after")
    def _buildable(self):
        missing = [k for k in ("spacegroup", "lattice", "basis") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"missing {missing}: give cif: FILE, or spacegroup, lattice {{a, b, c, alpha, beta, "
                             "gamma}} and basis [{element, frac}]")
        if not self.basis:
            raise ValueError("basis is empty: give at least one {element, frac: [x, y, z]}")
        mat = self.material("<config>")
        mats.check_crystal(mat.crystal)
        # What the lattice defines; a request beyond it is refused here, in one line.
        full = mats.Material("x", mat.crystal)
        lattice = f"{full.spacegroup_symbol} ({full.prototype or 'not fcc or wurtzite'})"
        bad = [d for d in (self.defects or ()) if d not in full.defect_types]
        if bad:
            raise ValueError(f"defects {bad} are not defined for a {lattice} lattice (it takes "
                             f"{list(full.defect_types)}); planar defects are built for fcc "
                             f"{list(mats.FCC_DEFECTS)} and wurtzite ['none', 'stacking_fault'] crystals")
        bad = [sh for sh in (self.shapes or ()) if sh != "sphere" and sh not in full.wulff_shapes]
        if bad:
            raise ValueError(f"shapes {bad} are not defined for a {lattice} lattice (it takes "
                             f"{['sphere', *full.wulff_shapes]}); faceted shapes are built for fcc crystals")
        return self

    def material(self, name: str) -> "mats.Material":
        lat = self.lattice
        crystal = mats.Crystal(
            spacegroup=self.spacegroup, abc=(lat.a, lat.b or lat.a, lat.c or lat.a),
            angles_deg=(lat.alpha, lat.beta, lat.gamma),
            sites=tuple((s.element.strip(), tuple(float(x) for x in s.frac)) for s in self.basis))
        return mats.Material(name, crystal, description=f"from {self.cif}" if self.cif else "from the config",
                             source=f"config ({self.cif})" if self.cif else "config", allowed_defects=self.defects,
                             allowed_shapes=self.shapes)


class GenerationConfig(Strict):
    name: str = Field(default="tem_au_np", pattern=r"^[A-Za-z0-9_\-]+$")
    seed: int = Field(default=0, ge=0, lt=2**63)
    n_structures: int = Field(default=48, ge=1, le=10_000_000)
    conditions_per_structure: int = Field(default=4, ge=1, le=1000)
    records_per_shard: int = Field(default=64, ge=1, le=100_000)
    splits: Splits = Splits()
    structure: StructureConfig = StructureConfig()
    simulation: SimulationConfig = SimulationConfig()
    imaging: ImagingConfig = ImagingConfig()
    mask: MaskConfig = MaskConfig()
    # The config's own crystals, by name, beside the built-in ones (`temsynth materials --config X.yaml`).
    materials: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$")], MaterialSpec] = Field(default_factory=dict)

    def material_registry(self) -> dict[str, "mats.Material"]:
        """Every material this config can draw: the built-in ones and its own."""
        return _registry(tuple((name, spec.model_dump_json()) for name, spec in sorted(self.materials.items())))

    @model_validator(mode="after")
    def _geometry(self):
        im, sim, st = self.imaging, self.simulation, self.structure
        ratio = im.pixel_size_A / sim.sampling_A
        if im.detector_pixel_size_A is not None:
            if im.field_size_px is not None and im.field_size_px != im.image_size_px:
                raise ValueError("imaging.field_size_px (a crop of a larger field) cannot be combined with "
                                 "imaging.detector_pixel_size_A; drop one of them")
            if sim.sampling_A > im.detector_pixel_size_A.support()[0]:
                raise ValueError(f"simulation.sampling_A ({sim.sampling_A}) must not exceed the smallest "
                                 f"imaging.detector_pixel_size_A ({im.detector_pixel_size_A.support()[0]})")
        elif abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(
                f"imaging.pixel_size_A ({im.pixel_size_A}) must be an integer multiple of simulation.sampling_A "
                f"({sim.sampling_A}) so that detector pixels integrate whole simulation pixels; "
                f"e.g. sampling_A: {im.pixel_size_A / max(1, math.ceil(ratio))}"
            )
        self._scene_fits()
        if st.substrate.kind == "graphene":
            strain = graphene_strain(self.field_of_view_A)
            if strain > 0.01:
                raise ValueError(
                    f"structure.substrate.kind graphene: the {self.field_of_view_A:g} Å field holds no whole number of "
                    f"graphene cells (2.46 x 4.26 Å) without straining them {strain:.1%}; make image_size_px x "
                    "pixel_size_A a length within 1 % of a multiple of both (e.g. 64 or 179 Å)")
        self._materials_known()
        self._aperture_inside_band()
        return self

    def _aperture_inside_band(self):
        """The multislice keeps spatial frequencies up to 2/3 of Nyquist (its antialias aperture); in angle that
        band is wavelength x frequency, so it narrows as the energy rises. An objective aperture wider than the
        band at some energy would not be the aperture the images are formed with."""
        im, sim = self.imaging, self.simulation
        if not im.objective_aperture_mrad:
            return
        from .waves import wavelength_A

        k_band = 2 / 3 / (2 * sim.sampling_A)
        for e in sim.energies_keV:
            band_mrad = wavelength_A(e) * k_band * 1e3
            if im.objective_aperture_mrad > band_mrad:
                fine = wavelength_A(e) / (3 * im.objective_aperture_mrad * 1e-3)
                raise ValueError(
                    f"imaging.objective_aperture_mrad {im.objective_aperture_mrad:g} is wider than the multislice "
                    f"band at {e:g} keV ({band_mrad:.1f} mrad with simulation.sampling_A {sim.sampling_A:g}): use "
                    f"sampling_A <= {fine:.4f} (and a pixel_size_A a multiple of it) or a smaller aperture")

    def _materials_known(self):
        st = self.structure
        clash = sorted(set(self.materials) & set(mats.BUILT_IN))
        if clash:
            raise ValueError(f"materials: {clash} are built-in material names; give yours another name "
                             f"(e.g. {clash[0]}_mine)")
        registry = self.material_registry()
        fields = [("structure.material", _values(st.material))]
        if st.core_shell is not None:
            fields.append(("structure.core_shell.core_material", _values(st.core_shell.core_material)))
        for where, names in fields:
            unknown = [m for m in names if m not in registry]
            if unknown:
                raise ValueError(f"{where}: unknown material(s) {unknown}; built in: {list(mats.BUILT_IN)}"
                                 + (f", this config's: {sorted(self.materials)}" if self.materials else
                                    "; or define yours under materials: (a CIF or space group + lattice + basis)"))
        defects = _values(st.defects.type)
        for m in _values(st.material):
            mat = registry[m]
            shapes = [sh for sh in _values(st.shape) if sh != "sphere" and sh not in mat.wulff_shapes]
            if shapes:
                raise ValueError(f"structure.shape {shapes} is not available for material {m}; {m} takes "
                                 f"{['sphere', *mat.wulff_shapes]}")
            unsupported = [d for d in defects if d not in mat.defect_types]
            if unsupported:
                raise ValueError(
                    f"structure.defects.type {unsupported} is not available for material {m}; "
                    f"{m} supports {list(mat.defect_types)}"
                )

    def _scene_fits(self):
        """Refuse scenes that cannot be laid out, before anything is written."""
        st, im = self.structure, self.imaging
        half = im.image_size_px * im.pixel_size_A / 2
        rmax = st.radius_A.support()[1]
        # A faceted particle's corners reach beyond its equivalent radius (an octahedron's by 1.5x).
        reach = rmax * max(SHAPE_REACH[sh] for sh in _values(st.shape))
        if not st.allow_border_cuts and reach + st.edge_margin_A >= half:
            raise ValueError(
                f"structure.radius_A up to {rmax} Å (outline up to {reach:.0f} Å) plus edge_margin_A "
                f"{st.edge_margin_A} Å does not fit in half the image ({half:.1f} Å = image_size_px × pixel_size_A "
                "/ 2): lower the radius, enlarge the image, or set allow_border_cuts: true")
        if st.allow_border_cuts and 2 * reach + st.particle_gap_A >= self.field_of_view_A:
            raise ValueError(
                f"structure.radius_A up to {rmax} Å: a particle {2 * reach:.0f} Å across overlaps its own periodic "
                f"image in a {self.field_of_view_A:.0f} Å field; lower the radius or enlarge the image")
        n_max = int(st.n_particles.support()[1])
        side = self.field_of_view_A - (0 if st.allow_border_cuts else 2 * st.edge_margin_A)
        # Random sequential placement of discs jams near 55 % coverage: ask for at most 40 % on average at the
        # largest count (particles that find no room are left out and counted in n_particles_requested).
        if st.area_fraction is not None:
            top = st.area_fraction.support()[1] * (reach / rmax) ** 2
            cap = max(PLACEMENT_COVERAGE[p] for p in _values(st.placement))
            if top > cap:
                raise ValueError(f"structure.area_fraction up to {st.area_fraction.support()[1]} covers up to "
                                 f"{top:.0%} of the field with the particles' outlines; placement "
                                 f"{'/'.join(_values(st.placement))} needs <= {cap:.0%}: lower area_fraction"
                                 + ("" if cap > 0.4 else " or use placement: aggregate"))
            return
        draws = np.array([st.radius_A.sample(rng) for rng in [np.random.default_rng(0)] for _ in range(2000)])
        mean_area = float(np.mean(math.pi * (draws * reach / rmax + st.particle_gap_A / 2) ** 2))
        if n_max > 1 and n_max * mean_area > 0.4 * side**2:
            raise ValueError(
                f"structure.n_particles up to {n_max} with radius_A {st.radius_A.model_dump()} cover "
                f"{n_max * mean_area / side**2:.0%} of the {side:.0f} Å field on average; random placement needs "
                "<= 40 %: fewer or smaller particles, a larger image, or area_fraction")

    @property
    def field_of_view_A(self) -> float:
        return self.imaging.field_px * self.imaging.pixel_size_A

    @property
    def sim_gpts(self) -> int:
        return int(round(self.field_of_view_A / self.simulation.sampling_A))

    @property
    def multislice_gpts(self) -> int:
        """The run's one multislice grid (FFT plans, wisdom and the carbon's reused slices are made for it)."""
        if self.imaging.detector_pixel_size_A is None:
            return self.sim_gpts
        gpts = int(math.ceil(self.field_of_view_A / self.simulation.sampling_A - 1e-9))
        while not _smooth(gpts):
            gpts += 1
        return gpts

    @property
    def bin_factor(self) -> int:
        return int(round(self.imaging.pixel_size_A / self.simulation.sampling_A))

    def record_fields(self) -> dict:
        """The run-wide part of every record: what the config fixes for all of them (simulation, stored pixel,
        mask recipe, seed and the config's own hash). The beam energy is the structure's (`imaging.beam_for`)."""
        sim, im, mask = self.simulation, self.imaging, self.mask
        return {"slice_thickness_A": sim.slice_thickness_A,
                "n_frozen_phonons": sim.n_frozen_phonons, "pixel_size_A": im.pixel_size_A,
                "image_size_px": im.image_size_px, "mask_phase_threshold_rad": mask.phase_threshold_rad,
                "mask_closing_radius_A": mask.closing_radius_A, "mask_blur_sigma_A": mask.blur_sigma_A,
                "seed": self.seed, "config_sha256": self.sha256()}

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json")
        defaults = _default_dump()
        for dotted in ADDED_FIELDS:
            *parents, leaf = dotted.split(".")
            node, dnode = data, defaults
            for p in parents:
                node, dnode = node.get(p) or {}, dnode.get(p) or {}
            if leaf in node and node[leaf] == dnode.get(leaf):
                del node[leaf]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


# Fields added after datasets were first written: left out of the canonical form (and so of config_sha256) while
# they hold their defaults, so that a folder written before they existed keeps its hash (and is not called
# edited by `temsynth info --verify` or refused by training) and the same config keeps making the same records.
ADDED_FIELDS = ("materials", "structure.core_shell", "structure.substrate.kind", "structure.substrate.composition",
                "structure.substrate.density_g_per_cm3", "structure.substrate.graphene_layers", "imaging.chromatic")


@functools.lru_cache(maxsize=1)
def _default_dump() -> dict:
    return GenerationConfig().model_dump(mode="json")


# ---------------------------------------------------------------- loading
def _values(d) -> tuple:
    return tuple(d.choice) if isinstance(d, Choice) else (d.value,)


@functools.lru_cache(maxsize=64)
def _registry(specs: tuple[tuple[str, str], ...]) -> dict[str, "mats.Material"]:
    """Built-in materials and a config's own (by their specs' JSON, so each is built once per process)."""
    own = {name: MaterialSpec.model_validate_json(js).material(name) for name, js in specs}
    return {**mats.BUILT_IN, **own}


def format_errors(err: ValidationError, source: str, what: str = "generation config") -> str:
    lines = [f"invalid {what} ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(
            ("function-", "Fixed", "Uniform", "Choice", "Integers", "TruncNormal", "LogUniform", "Empirical",
             "Linspace", "tagged-union")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; units go in the name, e.g. defocus_nm)"
        lines.append(f"  - {loc or '<top>'}: {msg}")
    # Union alternatives repeat the same location; keep each message once.
    seen, out = set(), []
    for line in lines:
        if line not in seen:
            seen.add(line)
            out.append(line)
    return "\n".join(out)


def non_finite_fields(data: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every NaN or infinite number anywhere in a raw config (YAML's .nan, .inf, 1e999)."""
    if isinstance(data, float):
        return [] if math.isfinite(data) else [prefix or "<top>"]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in non_finite_fields(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(data, (list, tuple)):
        return [p for i, v in enumerate(data) for p in non_finite_fields(v, f"{prefix}[{i}]")]
    return []


def reject_non_finite(data: Any, source: str, what: str = "generation config") -> None:
    bad = non_finite_fields(data)
    if bad:
        raise ConfigError(f"invalid {what} ({source}):\n" + "\n".join(
            f"  - {p}: NaN and infinity are not numbers a config can use; give a finite value" for p in bad))


def from_dict(data: dict, source: str = "<dict>", base_dir: str | Path | None = None) -> GenerationConfig:
    """`base_dir`: where relative crystal-file paths (materials: {name: {cif: ...}}) are found; the config
    file's folder when loaded from a file, else the working directory."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid generation config ({source}): expected a mapping at the top level")
    reject_non_finite(data, source)
    try:
        return GenerationConfig.model_validate(data, context={"base_dir": str(base_dir) if base_dir else None})
    except ValidationError as err:
        raise ConfigError(format_errors(err, source)) from None


class _DuplicateKey(Exception):
    def __init__(self, key, first: int, second: int):
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    """yaml's SafeLoader, except that a key given twice in one mapping is an error, not "the last one wins"."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may override on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
                if first != key_node.start_mark.line + 1:
                    raise _DuplicateKey(key, first, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_yaml_map)


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """The one reader of every YAML the project takes (generation, training, study configs and the presets): a
    mapping, or a one-line ConfigError for a missing, unreadable, empty or non-mapping file or a repeated key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{what} {path} is a folder, not a YAML file; name the .yaml file")
    try:
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=_StrictLoader)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8 YAML") from None
    except _DuplicateKey as err:
        raise ConfigError(f"{what} file {path}: key {err.key!r} is given twice (lines {err.first} and {err.second}); "
                          "keep one") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    except OSError as err:
        raise ConfigError(f"{what} file {path} cannot be read: {err.strerror}") from None
    if data is None:
        raise ConfigError(f"{what} file {path} is empty (or only comments); give its fields as `name: value` lines")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must be a mapping of `name: value` lines at the top level, "
                          f"not a {type(data).__name__}")
    return data


def load_config(path: str | Path) -> GenerationConfig:
    return from_dict(read_yaml(path, "generation config"), str(path), Path(path).parent)


def default_config() -> GenerationConfig:
    return GenerationConfig()


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str, **overrides: Any) -> GenerationConfig:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset {name!r}; available: {preset_names()}")
    return from_dict(set_dotted(read_yaml(path, "preset"), overrides, "override"), f"preset {name}")


def set_dotted(data: dict, overrides: dict[str, Any], where: str = "--set") -> dict:
    """Set dotted fields (`structure.radius_A`) of a config mapping in place, making sections as needed; returns
    it. A step through a value that is not a section is one line naming the key (`where`: how it was given)."""
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where} {key}: {p} is not a section of the config")
        node[leaf] = value
    return data


# ---------------------------------------------------------------- resources
# Peak memory of one worker: the interpreter with abTEM, czone and Dask loaded, plus bytes per simulation grid
# point (multislice wave and FFT buffers, transmission functions, exit waves and their stacked copies, the image
# former's frequency grids, the detector's arrays), plus per frozen phonon its two exit waves. Calibrated on
# the demo preset, one structure in process (peak RSS): 512² grid 0.60 GiB, 2048² grid 2.49 GiB.
WORKER_BASE_BYTES = 500 * 2 ** 20
BYTES_PER_GRID_POINT = 448
BYTES_PER_GRID_POINT_PER_PHONON = 32


def estimate_worker_bytes(cfg: GenerationConfig) -> int:
    """Peak memory of one worker simulating one structure (an estimate; the refusal quotes it)."""
    n2 = cfg.sim_gpts ** 2
    images = cfg.conditions_per_structure * cfg.imaging.field_px ** 2 * (4 + 4 + 1)  # intensities, images, masks
    return int(WORKER_BASE_BYTES + n2 * (BYTES_PER_GRID_POINT + BYTES_PER_GRID_POINT_PER_PHONON *
                                         cfg.simulation.n_frozen_phonons) + images)


def estimate_dataset_bytes(cfg: GenerationConfig) -> int:
    """Disk for the finished folder: float32 image + uint8 mask per record, in Parquet and in WebDataset (noisy
    counts barely compress), plus the parts kept until assembly."""
    per_record = cfg.imaging.image_size_px ** 2 * 5
    return int(cfg.n_structures * cfg.conditions_per_structure * per_record * 3 + estimate_carbon_cache_bytes(cfg))


def estimate_carbon_cache_bytes(cfg: GenerationConfig) -> int:
    """The carbon's transmission functions kept in the work folder during a run (complex64 per slice of every
    bank block, `multislice.CarbonSlices`); dropped with it when the folder is finished."""
    sub, dz = cfg.structure.substrate, cfg.simulation.slice_thickness_A
    slices = math.ceil(sub.thickness_A.support()[1] / dz)
    # one set of transmission functions per beam energy (the interaction constant scales the potential's phase)
    per_energy = sub.bank_size * slices * cfg.multislice_gpts ** 2 * 8
    return int(per_energy * len(cfg.simulation.energies_keV)) if cfg.simulation.backend == "abtem" else 0


# ---------------------------------------------------------------- seeds
STAGE_STRUCTURE, STAGE_PHONONS, STAGE_CONDITIONS, STAGE_NOISE, STAGE_SUBSTRATE, STAGE_SPLITS, STAGE_DETECTOR, \
    STAGE_BEAM = range(8)


def rng_for(root_seed: int, stage: int, *ids: int) -> np.random.Generator:
    """Independent stream per (stage, ids): any record's randomness is rebuilt from the root seed alone."""
    return np.random.default_rng(np.random.SeedSequence(root_seed, spawn_key=(stage, *ids)))


def seed_for(root_seed: int, stage: int, *ids: int) -> int:
    return int(np.random.SeedSequence(root_seed, spawn_key=(stage, *ids)).generate_state(1, np.uint32)[0])


def _smooth(n: int) -> bool:
    """Only factors 2, 3, 5 and 7: the sizes FFTs are fast on."""
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1
