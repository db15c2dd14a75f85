"""Structures: a scene of czone nanoparticles (material, shape, radius, planar defects, orientation) resting on
amorphous carbon.

Geometry (beam along +z, entering at z = 0): the particles occupy the top `particle_height_A` of the cell, the
substrate the `substrate_height_A` below it. Both heights are whole numbers of slices, so the potentials of the
two parts slice independently and add exactly, and the particle-only exit wave is the wave after the particles'
own slices. Every particle rests on the carbon: its lowest atom lies `contact_distance_A` above the highest
carbon atom. Particles never overlap in projection (their bounding circles keep `particle_gap_A` apart), so they
may touch but never interpenetrate.

Over 400 lines: the typed particle, its record columns and the scene placement share the geometry above.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from .config import STAGE_STRUCTURE, GenerationConfig, rng_for
from .errors import TemsynthError
from .files import atomic_path
from .folder import structure_id
from .materials import BUILT_IN, Material, build_multiply_twinned
from .substrate import SubstrateCut, cut_substrate


def column(doc: str, name: str | None = None):
    """A dataclass field that becomes a record column (per particle: a list column `particle_<name>`)."""
    return field(metadata={"doc": doc, "column": name})


def internal(doc: str):
    """A dataclass field kept off the records on purpose (it lives in the structure file or is derived)."""
    return field(metadata={"doc": doc, "column": False})


@dataclass(frozen=True)
class Particle:
    """One particle's typed metadata; every `column` field becomes the list column `particle_<name>`."""
    material: str = column("material of each particle (of its shell when it has a core)")
    shape: str = column("sphere or a Wulff shape (octahedron, cuboctahedron, truncated_octahedron)")
    radius_A: float = column("sphere radius, or the equivalent-volume radius of a faceted shape")
    bounding_radius_A: float = column("largest distance of an atom from the particle's axis along the beam")
    defect_type: str = column("realised planar defects: none, twin, multiple_twins, stacking_fault, mixed")
    defect_type_requested: str = internal("the defect type asked for; small particles may hold fewer planes")
    n_twins: int = column("twin boundaries")
    n_stacking_faults: int = column("stacking faults")
    orientation_euler_deg: tuple[float, float, float] = column("ZXZ Euler angles crystal -> lab frame (beam = +z)")
    beam_direction_crystal: tuple[float, float, float] = column("unit beam direction in the crystal's frame")
    center_A: tuple[float, float, float] = internal("centre in the cell, Å; records give it in image pixels")
    n_atoms: int = column("atoms in the particle")
    czone_seed: int = column("seed handed to czone for this particle")
    core_material: str = column("material of a core-shell particle's core ('' for a particle of one crystal)")
    core_radius_A: float = column("radius of a core-shell particle's core (0 for a particle of one crystal)")

    @property
    def n_defects(self) -> int:
        return self.n_twins + self.n_stacking_faults


def particle_columns() -> list[tuple[str, str, object]]:
    """(record column, Particle attribute, doc) for every field that reaches the records."""
    return [(f"particle_{f.metadata['column'] or f.name}", f.name, f.metadata["doc"])
            for f in fields(Particle) if f.metadata.get("column") is not False]


@dataclass
class Structure:
    structure_id: str
    structure_index: int
    particle_positions: np.ndarray  # (N, 3) Å, in the particles' own slab (z from 0)
    particle_numbers: np.ndarray
    particle_index: np.ndarray  # (N,) which particle each atom belongs to (0-based)
    substrate_positions: np.ndarray  # (M, 3) Å, in the substrate's own slab (z from 0)
    substrate_numbers: np.ndarray
    cell_xy_A: float
    particle_height_A: float
    substrate_height_A: float
    particles: list[Particle]
    substrate: SubstrateCut
    n_particles_requested: int
    substrate_block: np.ndarray | None = None  # the bank block the support was cut from (block frame, z from 0)
    substrate_block_numbers: np.ndarray | None = None  # its atoms' atomic numbers (None: all carbon)
    substrate_kind: str = "amorphous"
    substrate_composition: str = "C"
    placement: str = "random"  # how the particles were laid out (StructureConfig.placement)

    @property
    def n_atoms(self) -> int:
        return len(self.particle_numbers) + len(self.substrate_numbers)

    @property
    def n_particles(self) -> int:
        return len(self.particles)

    def record_fields(self) -> dict:
        """What every record of this structure carries of it: its ids, the particle counts, one list per Particle
        field that reaches the records (`particle_columns`; a field marked `column=False` does not), the carbon
        cut and the atom count. Atom arrays stay out: they are in the structure file."""
        return {"structure_id": self.structure_id, "structure_index": self.structure_index,
                "n_particles": self.n_particles, "n_particles_requested": self.n_particles_requested,
                "placement": self.placement,
                **{name: [getattr(pt, attr) for pt in self.particles] for name, attr, _ in particle_columns()},
                "substrate_kind": self.substrate_kind, "substrate_composition": self.substrate_composition,
                "substrate_thickness_A": self.substrate.thickness_A,
                "substrate_bank_index": self.substrate.bank_index, "n_atoms": self.n_atoms}

    def to_ase(self):
        """The whole specimen as one ase.Atoms with per-atom `is_particle` and `particle_index` (-1: carbon)."""
        import ase

        sub = self.substrate_positions + np.array([0.0, 0.0, self.particle_height_A])
        atoms = ase.Atoms(numbers=np.concatenate([self.particle_numbers, self.substrate_numbers]),
                          positions=np.concatenate([self.particle_positions, sub]),
                          cell=[self.cell_xy_A, self.cell_xy_A, self.particle_height_A + self.substrate_height_A],
                          pbc=[True, True, False])
        atoms.new_array("is_particle", np.r_[np.ones(len(self.particle_numbers), bool),
                                             np.zeros(len(self.substrate_numbers), bool)])
        atoms.new_array("particle_index", np.r_[self.particle_index, -np.ones(len(self.substrate_numbers), int)])
        atoms.info.update({"structure_id": self.structure_id, "n_particles": self.n_particles,
                           "placement": self.placement,
                           "substrate_kind": self.substrate_kind, "substrate_composition": self.substrate_composition,
                "substrate_thickness_A": self.substrate.thickness_A,
                           "particle_height_A": self.particle_height_A})
        return atoms

    def write_extxyz(self, path: Path) -> None:
        from ase.io import write

        with atomic_path(path) as tmp:
            write(tmp, self.to_ase(), format="extxyz")


# ---------------------------------------------------------------- randomness hygiene
def _separated_indices(n: int, m: int, length: int, rng: np.random.Generator) -> list[int]:
    """n sorted integers in [m, length - m), consecutive ones at least m apart, uniformly over all such sets.

    czone's get_N_splits draws them by rejection and re-seeding, which never ends when few arrangements exist
    (a thin particle asked for three defects); choosing n of the free slack positions is exact and always ends."""
    if n == 0:
        return []
    slack = length - 2 * m - (n - 1) * (m - 1)
    if slack < n:
        raise ValueError(f"{n} planes {m} apart do not fit in {length}")
    z = np.sort(rng.choice(slack, size=n, replace=False))
    return [int(m + zi + i * (m - 1)) for i, zi in enumerate(z)]


@contextlib.contextmanager
def _seeded_czone(seed: int):
    """czone 2022.9.20 draws from numpy's global RNG and calls get_N_splits without a seed; pin both so a
    structure is a pure function of its seed, and restore the caller's global state afterwards."""
    import czone.prefab.prefab as prefab_mod

    state = np.random.get_state()
    original = prefab_mod.get_N_splits
    split_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])

    def seeded_get_N_splits(n, m, l, seed=None):
        return _separated_indices(n, m, l, split_rng)

    np.random.seed(seed % 2**32)
    prefab_mod.get_N_splits = seeded_get_N_splits
    try:
        yield
    finally:
        prefab_mod.get_N_splits = original
        np.random.set_state(state)


# ---------------------------------------------------------------- particle
def _volume(mat, shape: str, radius_A: float, gen):
    """czone volume of one particle centred at the origin: a sphere, or a Wulff construction whose volume
    equals the sphere's (wulffpack scales the shape to an atom count)."""
    from czone.volume import Volume
    from czone.volume.algebraic import Sphere

    if shape == "sphere":
        return Volume(alg_objects=[Sphere(radius=radius_A, center=np.zeros(3))], generator=gen)
    from czone.prefab.wulff import WulffSingle
    from pymatgen.io.ase import AseAtomsAdaptor

    natoms = max(13, int(round(4 / 3 * math.pi * radius_A**3 * mat.atoms_per_A3)))
    wulff = WulffSingle(gen, {k: float(v) for k, v in mat.wulff_shapes[shape].items()}, natoms=natoms)
    # czone 2022.9.20 hands wulffpack a primitive cell without its lattice (spglib then fails): give it the real one.
    wulff._p_atoms = AseAtomsAdaptor.get_atoms(gen.structure.get_primitive_structure())
    return wulff.get_construction()


def _material(material: str | Material) -> Material:
    if isinstance(material, Material):
        return material
    try:
        return BUILT_IN[material]
    except KeyError:
        raise SceneError(f"unknown material {material!r}; built in: {list(BUILT_IN)} (a config's own materials "
                         "are passed as Material objects: GenerationConfig.material_registry())") from None


def build_particle(material: str | Material, radius_A: float, defect_type: str, n_defects: int, defects_cfg,
                   seed: int, shape: str = "sphere"):
    """Atoms of one particle in its crystal frame (centred at the origin) and the realised defects (a multiply
    twinned shape's own twins; it takes no others)."""
    mat = _material(material)
    if shape in mat.multiply_twinned_shapes:
        return build_multiply_twinned(mat, shape, radius_A)
    with _seeded_czone(seed):
        gen = mat.generator()
        vol = _volume(mat, shape, radius_A, gen)
        n = n_defects
        while True:
            try:
                obj, counts = mat.defect_builders[defect_type](gen, vol, n, defects_cfg)
                break
            except ValueError:
                # Too few planes for n defects at this separation (small particles): place fewer.
                if n <= 1:
                    obj, counts = vol, {"n_twins": 0, "n_stacking_faults": 0}
                    break
                n -= 1
        obj.populate_atoms()
        pos = np.asarray(obj.atoms, float)
        numbers = np.asarray(obj.species, int)
    return pos, numbers, counts


def build_core_shell(core: str | Material, shell: str | Material, radius_A: float, core_radius_A: float, seed: int,
                     shape: str = "sphere"):
    """Atoms of a core-shell particle in the shared crystal frame (centred at the origin), their numbers, and a
    boolean per atom: in the core. czone composes the two volumes: the core (priority 0) takes precedence over the
    shell (priority 1), so the shell loses its atoms inside the core sphere; shell atoms that would sit closer to
    a core atom than 0.85 of the smaller nearest-neighbour distance of the two crystals are left out too (two
    lattices meeting at a sphere leave such pairs, which no real interface holds)."""
    from czone.volume import MultiVolume, Volume
    from czone.volume.algebraic import Sphere

    core, shell = _material(core), _material(shell)
    with _seeded_czone(seed):
        shell_vol = _volume(shell, shape, radius_A, shell.generator())
        shell_vol.priority = 1
        core_vol = Volume(alg_objects=[Sphere(radius=core_radius_A, center=np.zeros(3))], generator=core.generator(),
                          priority=0)
        obj = MultiVolume(volumes=[core_vol, shell_vol])
        obj.populate_atoms()
        pos = np.asarray(obj.atoms, float)
        numbers = np.asarray(obj.species, int)
    # MultiVolume stacks the volumes by priority: the core's atoms come first, and they are the atoms inside it.
    in_core = np.zeros(len(pos), bool)
    in_core[:len(core_vol.atoms)] = core_vol.checkIfInterior(pos[:len(core_vol.atoms)])
    if in_core.any() and (~in_core).any():
        d, _ = cKDTree(pos[in_core]).query(pos[~in_core])
        keep = np.ones(len(pos), bool)
        keep[np.flatnonzero(~in_core)[d < 0.85 * min(core.nearest_neighbour_A, shell.nearest_neighbour_A)]] = False
        pos, numbers, in_core = pos[keep], numbers[keep], in_core[keep]
    return pos, numbers, in_core


def classify_defects(n_twins: int, n_faults: int) -> str:
    if n_twins and n_faults:
        return "mixed"
    if n_twins:
        return "twin" if n_twins == 1 else "multiple_twins"
    return "stacking_fault" if n_faults else "none"


def _orientation(cfg: GenerationConfig, rng: np.random.Generator, material: str) -> Rotation:
    o = cfg.structure.orientation
    if o.mode == "random":
        return Rotation.random(random_state=rng)
    # The crystal frame czone builds in (the symmetric cell of materials.symmetric_cell).
    gen = cfg.material_registry()[material].generator()
    axis = np.asarray(o.zone_axis, float) @ np.asarray(gen.lattice.matrix)
    axis /= np.linalg.norm(axis)
    onto_beam, _ = Rotation.align_vectors([[0, 0, 1]], [axis])
    spin = Rotation.from_euler("z", rng.uniform(0, 360), degrees=True)
    tilt_deg = float(o.tilt_deg.sample(rng))
    tilt_axis_angle = rng.uniform(0, 2 * np.pi)
    tilt = Rotation.from_rotvec(np.radians(tilt_deg) * np.array([np.cos(tilt_axis_angle), np.sin(tilt_axis_angle), 0]))
    return tilt * spin * onto_beam


# ---------------------------------------------------------------- structure
class SceneError(TemsynthError, RuntimeError):
    pass


def _draw_particle(cfg: GenerationConfig, rng: np.random.Generator, radius: float):
    """Sample and build one particle; returns its lab-frame atoms about its own centre and its metadata."""
    st = cfg.structure
    material = str(st.material.sample(rng))
    shape = str(st.shape.sample(rng))
    requested = str(st.defects.type.sample(rng))
    n_req = 0 if requested == "none" else int(st.defects.n_defects.sample(rng))
    czone_seed = int(rng.integers(2**31))
    registry = cfg.material_registry()
    core, core_radius = "", 0.0
    # Drawn only when core_shell is set: configs without it draw exactly what they always drew.
    if st.core_shell is not None and rng.uniform() < st.core_shell.probability:
        core = str(st.core_shell.core_material.sample(rng))
        core_radius = radius * float(st.core_shell.core_radius_fraction.sample(rng))
        if core == material:  # a core of the shell's own crystal is no core: one crystal, recorded as such
            core, core_radius = "", 0.0
    if core:
        pos, numbers, _ = build_core_shell(registry[core], registry[material], radius, core_radius, czone_seed, shape)
        counts = {"n_twins": 0, "n_stacking_faults": 0}
    else:
        pos, numbers, counts = build_particle(registry[material], radius, requested, n_req, st.defects, czone_seed,
                                              shape)
    rot = _orientation(cfg, rng, material)
    lab = rot.apply(pos - pos.mean(axis=0)) if len(pos) else pos
    meta = dict(material=material, shape=shape, radius_A=radius,
                bounding_radius_A=float(np.max(np.hypot(lab[:, 0], lab[:, 1]))) if len(lab) else 0.0,
                defect_type=classify_defects(counts["n_twins"], counts["n_stacking_faults"]),
                defect_type_requested=requested, n_twins=counts["n_twins"],
                n_stacking_faults=counts["n_stacking_faults"],
                orientation_euler_deg=tuple(float(a) for a in rot.as_euler("ZXZ", degrees=True)),
                beam_direction_crystal=tuple(float(v) for v in rot.inv().apply([0.0, 0.0, 1.0])),
                n_atoms=len(numbers), czone_seed=czone_seed, core_material=core, core_radius_A=core_radius)
    return lab, numbers, meta


def _place(cfg: GenerationConfig, rng: np.random.Generator, radii: list[float],
           placement: str = "random") -> list[tuple[float, float]]:
    """Centres (x, y) for bounding circles of `radii`, largest first: circles keep `particle_gap_A` apart
    (periodic distances when border cuts are allowed). `random`: uniform draws. `aggregate`: after the first,
    each particle is drawn touching a random one already placed, in a random direction (falling back to uniform
    draws when no contact has room). A particle that finds no room in 200 draws is left out (the config check
    keeps that rare); the record counts what was placed."""
    st = cfg.structure
    L = cfg.field_of_view_A
    im = cfg.imaging
    placed: list[tuple[float, float, float]] = []
    out: dict[int, tuple[float, float]] = {}
    for k in sorted(range(len(radii)), key=lambda i: -radii[i]):
        r = radii[k]
        if st.allow_border_cuts:
            lo, hi = 0.0, L
        else:
            lo, hi = r + st.edge_margin_A, L - r - st.edge_margin_A
            if im.field_px > im.image_size_px:
                # Keep particles where every crop of image_size_px can still hold them whole.
                half_img = im.image_size_px * im.pixel_size_A / 2
                lo = max(lo, L / 2 - half_img + r + st.edge_margin_A)
                hi = min(hi, L / 2 + half_img - r - st.edge_margin_A)
        for attempt in range(400 if placement == "aggregate" and placed else 200):
            if placement == "aggregate" and placed and attempt < 200:
                x, y, rr = placed[int(rng.integers(len(placed)))]
                theta = rng.uniform(0, 2 * np.pi)
                c = np.array([x, y]) + (r + rr + st.particle_gap_A) * np.array([np.cos(theta), np.sin(theta)])
                if st.allow_border_cuts:
                    c = np.mod(c, L)
                elif not (lo <= c[0] <= hi and lo <= c[1] <= hi):
                    continue
            else:
                c = rng.uniform(lo, hi, size=2) if hi > lo else np.array([L / 2, L / 2])
            ok = True
            for (x, y, rr) in placed:
                d = np.array([c[0] - x, c[1] - y])
                if st.allow_border_cuts:
                    d -= L * np.round(d / L)
                if np.hypot(*d) < r + rr + st.particle_gap_A - 1e-9:  # a contact draw sits exactly at the gap
                    ok = False
                    break
            if ok:
                placed.append((float(c[0]), float(c[1]), r))
                out[k] = (float(c[0]), float(c[1]))
                break
    return [out.get(k) for k in range(len(radii))]


def _draw_radii(cfg: GenerationConfig, rng: np.random.Generator) -> list[float]:
    """The radii of one scene: n_particles draws, or draws until their discs cover area_fraction of the field."""
    st = cfg.structure
    n_max = int(st.n_particles.sample(rng))
    lo, hi = st.radius_A.support()
    scene_radius = float(st.radius_A.sample(rng)) if st.radius_spread is not None else None

    def one() -> float:
        if scene_radius is None:
            return float(st.radius_A.sample(rng))
        return float(np.clip(scene_radius * np.exp(rng.normal(0.0, st.radius_spread)), lo, hi))

    if st.area_fraction is None:
        return [one() for _ in range(n_max)]
    target = float(st.area_fraction.sample(rng)) * cfg.field_of_view_A**2
    radii: list[float] = []
    while len(radii) < n_max and sum(math.pi * r * r for r in radii) < target:
        radii.append(one())
    return radii


def contact_distance(particle_numbers: np.ndarray, support_numbers: np.ndarray) -> float:
    """The closest approach of a particle to its support: the largest sum of covalent radii over the element
    pairs present (Au-C 2.12 Å, Ce-Si 3.15 Å)."""
    from ase.data import covalent_radii

    p, s = np.unique(particle_numbers), np.unique(support_numbers)
    if not len(p) or not len(s):
        return 2.2
    return float(covalent_radii[p].max() + covalent_radii[s].max())


def build_structure(cfg: GenerationConfig, index: int, cache_dir: Path | None = None) -> Structure:
    """A pure function of (config, index): particles drawn, placed on the carbon, and the carbon cut."""
    st = cfg.structure
    rng = rng_for(cfg.seed, STAGE_STRUCTURE, index)
    radii = _draw_radii(cfg, rng)
    n_requested = len(radii)
    drawn = [_draw_particle(cfg, rng, r) for r in radii]
    placement = str(st.placement.sample(rng))  # a fixed placement draws nothing: older configs keep their scenes
    centres = _place(cfg, rng, [m["bounding_radius_A"] for _, _, m in drawn], placement)
    drawn = [(d, c) for d, c in zip(drawn, centres) if c is not None]

    sub_pos, sub_numbers, cut, block, block_numbers = cut_substrate(cfg, rng, cache_dir)
    dz = cfg.simulation.slice_thickness_A
    L = cfg.field_of_view_A
    # Every particle's lowest atom sits contact_distance_A above the highest support atom (z grows downwards).
    top_carbon = float(sub_pos[:, 2].min()) if len(sub_pos) else 0.0
    contact = st.contact_distance_A
    if contact is None:
        contact = contact_distance(np.concatenate([nums for (_, nums, _), _ in drawn]) if drawn else np.zeros(0, int),
                                   sub_numbers)
    gap = max(0.0, contact - top_carbon)
    tallest = max((float(np.ptp(lab[:, 2])) for (lab, _, _), _ in drawn if len(lab)), default=0.0)
    particle_height = math.ceil((tallest + gap + 1.0) / dz) * dz if drawn else 0.0

    positions, numbers, owner, particles = [], [], [], []
    for k, ((lab, nums, meta), (cx, cy)) in enumerate(drawn):
        shift = np.array([cx, cy, particle_height - gap - lab[:, 2].max()])
        atoms = lab + shift
        atoms[:, :2] = np.mod(atoms[:, :2], L)
        positions.append(atoms)
        numbers.append(nums)
        owner.append(np.full(len(nums), k))
        particles.append(Particle(center_A=(float(cx), float(cy), float(shift[2])), **meta))
    cat = lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape)
    substrate_height = math.ceil(cut.thickness_A / dz) * dz if cut.thickness_A > 0 else 0.0
    return Structure(
        structure_id=structure_id(index), structure_index=index,
        particle_positions=cat(positions, (0, 3)), particle_numbers=cat(numbers, (0,)).astype(int),
        particle_index=cat(owner, (0,)).astype(int),
        substrate_positions=sub_pos, substrate_numbers=np.asarray(sub_numbers, int),
        cell_xy_A=L, particle_height_A=particle_height, substrate_height_A=substrate_height,
        particles=particles, substrate=cut, n_particles_requested=n_requested, substrate_block=block,
        substrate_block_numbers=block_numbers, substrate_kind=st.substrate.kind,
        substrate_composition=st.substrate.composition, placement=placement,
    )
