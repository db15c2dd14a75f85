"""The generation config's schema: `GenerationConfig`, which holds the sections (`config_sections`), checks them
against each other and derives the grids, the record fields and the canonical hash (`config_sha256`)."""
from __future__ import annotations

import functools
import hashlib
import json
import math
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from . import materials as mats
from .config_sections import (
    PLACEMENT_COVERAGE,
    SHAPE_REACH,
    ImagingConfig,
    MaskConfig,
    MaterialSpec,
    SimulationConfig,
    Splits,
    StructureConfig,
    graphene_strain,
)
from .distributions import Choice, Strict
from .errors import TemsynthError


class ConfigError(TemsynthError, ValueError):
    """A config that cannot be used; the message names the field and the fix."""


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

    def least_radius_A(self) -> tuple[float, str, str] | None:
        """(the least structure.radius_A every drawn shape can be built at, its shape, its material), or None where
        any radius will do: the smallest icosahedron or decahedron ase builds sets a floor for those shapes."""
        st, registry = self.structure, self.material_registry()
        floors = [(mats.smallest_multiply_twinned_radius_A(registry[m], sh), sh, m)
                  for m in _values(st.material) if m in registry
                  for sh in _values(st.shape) if sh in registry[m].multiply_twinned_shapes]
        return max(floors) if floors else None

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
            shapes = [sh for sh in _values(st.shape) if sh not in mat.shapes]
            if shapes:
                raise ValueError(f"structure.shape {shapes} is not available for material {m}; {m} takes "
                                 f"{list(mat.shapes)}")
            twinned = [sh for sh in _values(st.shape) if sh in mat.multiply_twinned_shapes]
            if st.core_shell is not None and twinned:
                raise ValueError(f"structure.shape {twinned} with structure.core_shell: core-shell particles are "
                                 "cut from one crystal frame; draw sphere or Wulff shapes with a core_shell")
            unsupported = [d for d in defects if d not in mat.defect_types]
            if unsupported:
                raise ValueError(
                    f"structure.defects.type {unsupported} is not available for material {m}; "
                    f"{m} supports {list(mat.defect_types)}"
                )
        least = self.least_radius_A()
        if least is not None and st.radius_A.support()[0] < least[0]:
            floor, shape, m = least
            raise ValueError(f"structure.radius_A down to {st.radius_A.support()[0]:g} Å: the smallest {shape} of "
                             f"{m} ase builds needs {floor:.1f} Å; draw radii from {math.ceil(floor)} Å up")

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
                "output_bits": im.output_bits or 0, "median_filter_px": im.median_filter_px,
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
                "structure.substrate.density_g_per_cm3", "structure.substrate.graphene_layers", "imaging.chromatic",
                "imaging.output_bits", "imaging.median_filter_px", "imaging.image_spread_A",
                "imaging.output_blur_A")


@functools.lru_cache(maxsize=1)
def _default_dump() -> dict:
    return GenerationConfig().model_dump(mode="json")


def _values(d) -> tuple:
    return tuple(d.choice) if isinstance(d, Choice) else (d.value,)


@functools.lru_cache(maxsize=64)
def _registry(specs: tuple[tuple[str, str], ...]) -> dict[str, "mats.Material"]:
    """Built-in materials and a config's own (by their specs' JSON, so each is built once per process)."""
    own = {name: MaterialSpec.model_validate_json(js).material(name) for name, js in specs}
    return {**mats.BUILT_IN, **own}


def _smooth(n: int) -> bool:
    """Only factors 2, 3, 5 and 7: the sizes FFTs are fast on."""
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1
