"""The sections of a generation config, each checked on its own: structure (particles, defects, orientation,
support film, core-shell), simulation, imaging (aberrations, chromatic blur, detector), mask, splits, and the
materials a config defines. `config_schema.GenerationConfig` holds them and checks them against each other."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from . import materials as mats
from .distributions import Choice, Fixed, Integers, Strict, Uniform, choice_of, names_of, ranged

# Krivanek polar aberration symbols (abTEM's names): magnitudes C_nm, angles phi_nm.
POLAR_SYMBOLS = frozenset(
    ["C10", "C12", "phi12", "C21", "phi21", "C23", "phi23", "C30", "C32", "phi32", "C34", "phi34", "C41", "phi41",
     "C43", "phi43", "C45", "phi45", "C50", "C52", "phi52", "C54", "phi54", "C56", "phi56"])


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
# Multiply twinned shapes come in whole shells: materials.build_multiply_twinned takes the nearest size within this
# reach (an ideal icosahedron's vertices 1.18, a Marks decahedron's ~1.1).
SHAPE_REACH = {"sphere": 1.0, "octahedron": 1.47, "cuboctahedron": 1.25, "truncated_octahedron": 1.2,
               "icosahedron": 1.22, "decahedron": 1.18}


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
    # sphere, a Wulff construction (czone's prefab.wulff) of the material's surface energies, or a multiply twinned
    # icosahedron / Marks decahedron (ase.cluster; one-element fcc crystals, docs/materials.md)
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


def _odd_or_zero(n: int) -> int:
    if n and n % 2 == 0:
        raise ValueError(f"must be odd (a window centred on its pixel) or 0 for none, got {n}")
    return n


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
    # Image spread (A. Thust, PRL 102, 220801, 2009): a Gaussian blur of the image intensity, standard deviation per
    # direction in Å, from vibration, drift and the like during the exposure. It damps lattice fringes (2-2.4 Å)
    # much more than carbon speckle (3-6 Å) and, unlike the focal spread, whatever the defocus; before the camera,
    # so its noise stays white. Drawn per condition from its own random stream: 0 keeps every other draw.
    image_spread_A: ranged(0, 10, "image_spread_A") = Fixed(value=0.0)
    dose_e_per_A2: ranged(1e-3, 1e7, "dose_e_per_A2") = Uniform(uniform=(100, 1200))
    # 1: quasi-coherent temporal envelope on the wave; N > 1: incoherent sum over an N-point defocus
    # series spanning +-3 sigma (the seed study's 25-point recipe), exact for non-linear imaging.
    focal_series_points: int = Field(default=1, ge=1, le=101)
    objective_aperture_mrad: float | None = Field(default=None, gt=0)
    # Further fixed polar aberrations (Krivanek notation), magnitudes in Angstrom, angles in degrees,
    # e.g. {C23: 179.8, phi23: 0, C50: 1.048e7}. Merged under the sampled ones.
    residual_aberrations_A: dict[str, float] = Field(default_factory=dict)
    # What a micrograph saved for display holds (the seed study's last imaging step): each image's counts cast to
    # 2^output_bits grey levels between its own minimum and maximum, then a median filter of median_filter_px.
    # None / 0: the camera's counts are stored as they are.
    output_bits: int | None = Field(default=None, ge=1, le=16)
    median_filter_px: Annotated[int, Field(ge=0, le=15), AfterValidator(_odd_or_zero)] = 0
    # A Gaussian blur of the recorded image, σ in Å, before those grey levels: a file exported or rendered at
    # another size is resampled, and its resampling filter smooths signal and noise alike (unlike image_spread_A,
    # the noise's power then falls as exp(-4π²σ²k²): `temsynth calibrate` reads σ off display files' spectra).
    # Drawn per condition from its own random stream: 0 keeps every other draw.
    output_blur_A: ranged(0, 10, "output_blur_A") = Fixed(value=0.0)

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
        bad = [sh for sh in (self.shapes or ()) if sh not in full.shapes]
        if bad:
            raise ValueError(f"shapes {bad} are not defined for a {lattice} lattice (it takes "
                             f"{list(full.shapes)}); faceted and multiply twinned shapes are built for fcc crystals")
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
