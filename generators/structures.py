"""Structures: a czone nanoparticle (material, radius, planar defects, orientation) resting on amorphous carbon.

Geometry (beam along +z, entering at z = 0): the particle occupies the top `particle_height_A` of the cell, the
substrate the `substrate_height_A` below it. Both heights are whole numbers of slices, so the potentials of the
two parts slice independently and add exactly, and the particle-only exit wave is the wave after the particle's
own slices.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from .config import (STAGE_STRUCTURE, STAGE_SUBSTRATE, GenerationConfig, rng_for, seed_for)
from .materials import MATERIALS


@dataclass
class Structure:
    structure_id: str
    structure_index: int
    particle_positions: np.ndarray  # (N, 3) Å, in the particle's own slab (z from 0)
    particle_numbers: np.ndarray
    substrate_positions: np.ndarray  # (M, 3) Å, in the substrate's own slab (z from 0)
    substrate_numbers: np.ndarray
    cell_xy_A: float
    particle_height_A: float
    substrate_height_A: float
    rotation: np.ndarray  # 3x3, crystal frame -> lab frame
    center_A: np.ndarray  # particle centre in the lab frame (x, y, z in the particle slab)
    meta: dict = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return len(self.particle_numbers) + len(self.substrate_numbers)

    def to_ase(self):
        """The whole specimen as one ase.Atoms with a per-atom `is_particle` flag; cell = simulation cell."""
        import ase

        sub = self.substrate_positions + np.array([0.0, 0.0, self.particle_height_A])
        atoms = ase.Atoms(numbers=np.concatenate([self.particle_numbers, self.substrate_numbers]),
                          positions=np.concatenate([self.particle_positions, sub]),
                          cell=[self.cell_xy_A, self.cell_xy_A, self.particle_height_A + self.substrate_height_A],
                          pbc=[True, True, False])
        atoms.new_array("is_particle", np.r_[np.ones(len(self.particle_numbers), bool),
                                             np.zeros(len(self.substrate_numbers), bool)])
        atoms.info.update({k: v for k, v in self.meta.items() if isinstance(v, (int, float, str))})
        atoms.info["particle_height_A"] = self.particle_height_A
        return atoms

    def write_extxyz(self, path: Path) -> None:
        from ase.io import write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        write(tmp, self.to_ase(), format="extxyz")
        tmp.replace(path)


# ---------------------------------------------------------------- randomness hygiene
@contextlib.contextmanager
def _seeded_czone(seed: int):
    """czone 2022.9.20 draws from numpy's global RNG and calls get_N_splits without a seed; pin both so a
    structure is a pure function of its seed, and restore the caller's global state afterwards."""
    import czone.prefab.prefab as prefab_mod

    state = np.random.get_state()
    original = prefab_mod.get_N_splits
    split_seeds = np.random.SeedSequence(seed)

    def seeded_get_N_splits(n, m, l, seed=None):
        return original(n, m, l, seed=int(split_seeds.spawn(1)[0].generate_state(1)[0]))

    np.random.seed(seed % 2**32)
    prefab_mod.get_N_splits = seeded_get_N_splits
    try:
        yield
    finally:
        prefab_mod.get_N_splits = original
        np.random.set_state(state)


# ---------------------------------------------------------------- particle
def build_particle(material: str, radius_A: float, defect_type: str, n_defects: int, defects_cfg, seed: int):
    """Atoms of a spherical particle in its crystal frame (centred at the origin) and the realised defects."""
    from czone.volume import Volume
    from czone.volume.algebraic import Sphere

    mat = MATERIALS[material]
    with _seeded_czone(seed):
        gen = mat.generator()
        vol = Volume(alg_objects=[Sphere(radius=radius_A, center=np.zeros(3))], generator=gen)
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
    gen = MATERIALS[material].generator()
    axis = np.asarray(o.zone_axis, float) @ np.asarray(gen.lattice.matrix)
    axis /= np.linalg.norm(axis)
    onto_beam, _ = Rotation.align_vectors([[0, 0, 1]], [axis])
    spin = Rotation.from_euler("z", rng.uniform(0, 360), degrees=True)
    tilt_deg = float(o.tilt_deg.sample(rng))
    tilt_axis_angle = rng.uniform(0, 2 * np.pi)
    tilt = Rotation.from_rotvec(np.radians(tilt_deg) * np.array([np.cos(tilt_axis_angle), np.sin(tilt_axis_angle), 0]))
    return tilt * spin * onto_beam


# ---------------------------------------------------------------- substrate
def _bank_block(cfg: GenerationConfig, index: int, cache_dir: Path | None) -> np.ndarray:
    """A periodic (in x, y) amorphous carbon block of the full field and the deepest thickness asked for."""
    from czone.generator.amorphous_algorithms import gen_p_substrate

    sub = cfg.structure.substrate
    L = cfg.field_of_view_A
    depth = math.ceil(sub.thickness_A.support()[1] / cfg.simulation.slice_thickness_A) * cfg.simulation.slice_thickness_A
    key = f"carbon-{index}-L{L:g}-t{depth:g}-rho{sub.density_atoms_per_A3:g}-d{sub.min_dist_A:g}-s{cfg.seed}"
    if key in _BANK:
        return _BANK[key]
    path = cache_dir / f"{key}.npy" if cache_dir else None
    if path is not None and path.exists():
        block = np.load(path)
    else:
        state = np.random.get_state()
        np.random.seed(seed_for(cfg.seed, STAGE_SUBSTRATE, index))
        try:
            block = gen_p_substrate([L, L, depth], min_dist=sub.min_dist_A, density=sub.density_atoms_per_A3) if depth > 0 \
                else np.zeros((0, 3))
        finally:
            np.random.set_state(state)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{np.random.default_rng().integers(1 << 30)}.tmp.npy")
            np.save(tmp, block)
            tmp.replace(path)
    _BANK.clear() if len(_BANK) > 64 else None
    _BANK[key] = block
    return block


_BANK: dict[str, np.ndarray] = {}


def _substrate(cfg, rng, thickness_A: float, cache_dir: Path | None):
    """Carbon of the given thickness cut from a bank block, shifted and flipped at random (exact: the block is
    periodic in x and y), so thousands of structures need only `bank_size` slow amorphous generations."""
    sub = cfg.structure.substrate
    L = cfg.field_of_view_A
    bank_index = int(rng.integers(sub.bank_size))
    shift = rng.uniform(0, L, size=2)
    flip = rng.integers(0, 2, size=2).astype(bool)
    swap = bool(rng.integers(0, 2))
    block = _bank_block(cfg, bank_index, cache_dir)
    pos = block[block[:, 2] < thickness_A].copy()
    pos[:, :2] = np.mod(pos[:, :2] + shift, L)
    for ax in (0, 1):
        if flip[ax]:
            pos[:, ax] = np.mod(L - pos[:, ax], L)
    if swap:
        pos[:, [0, 1]] = pos[:, [1, 0]]
    return pos, {"substrate_bank_index": bank_index}


# ---------------------------------------------------------------- structure
def structure_id(index: int) -> str:
    return f"s{index:06d}"


def build_structure(cfg: GenerationConfig, index: int, cache_dir: Path | None = None) -> Structure:
    st = cfg.structure
    rng = rng_for(cfg.seed, STAGE_STRUCTURE, index)
    material = str(st.material.sample(rng))
    radius = float(st.radius_A.sample(rng))
    requested = str(st.defects.type.sample(rng))
    n_req = int(st.defects.n_defects.sample(rng))
    if requested == "none":
        n_req = 0
    czone_seed = int(rng.integers(2**31))
    pos, numbers, counts = build_particle(material, radius, requested, n_req, st.defects, czone_seed)

    rot = _orientation(cfg, rng, material)
    L = cfg.field_of_view_A
    dz = cfg.simulation.slice_thickness_A
    lo, hi = radius + st.edge_margin_A, L - radius - st.edge_margin_A
    if cfg.imaging.field_px > cfg.imaging.image_size_px:
        # Keep the particle where every crop of image_size_px can still hold it whole.
        half_img = cfg.imaging.image_size_px * cfg.imaging.pixel_size_A / 2
        lo, hi = max(lo, L / 2 - half_img + radius + st.edge_margin_A), min(hi, L / 2 + half_img - radius - st.edge_margin_A)
    cx, cy = rng.uniform(lo, hi, size=2)
    particle_height = math.ceil((2 * radius + 1.5) / dz) * dz
    # Rest the particle on the carbon: lowest atom plane ~0.5 Å above the top surface.
    cz = particle_height - radius - 0.5
    center = np.array([cx, cy, cz])
    lab = rot.apply(pos) + center

    thickness = float(st.substrate.thickness_A.sample(rng))
    sub_pos, sub_meta = _substrate(cfg, rng, thickness, cache_dir)
    substrate_height = math.ceil(thickness / dz) * dz if thickness > 0 else 0.0

    beam_in_crystal = rot.inv().apply([0.0, 0.0, 1.0])
    meta = {
        "material": material,
        "particle_radius_A": radius,
        "particle_center_A": [float(cx), float(cy)],
        "orientation_euler_deg": [float(a) for a in rot.as_euler("ZXZ", degrees=True)],
        "beam_direction_crystal": [float(v) for v in beam_in_crystal],
        "defect_type": classify_defects(counts["n_twins"], counts["n_stacking_faults"]),
        "defect_type_requested": requested,
        "n_defects": counts["n_twins"] + counts["n_stacking_faults"],
        "n_twins": counts["n_twins"],
        "n_stacking_faults": counts["n_stacking_faults"],
        "substrate_thickness_A": thickness,
        "n_particle_atoms": len(numbers),
        "n_atoms": len(numbers) + len(sub_pos),
        "czone_seed": czone_seed,
        **sub_meta,
    }
    return Structure(
        structure_id=structure_id(index), structure_index=index,
        particle_positions=lab, particle_numbers=numbers,
        substrate_positions=sub_pos, substrate_numbers=np.full(len(sub_pos), 6, int),
        cell_xy_A=L, particle_height_A=particle_height, substrate_height_A=substrate_height,
        rotation=rot.as_matrix(), center_A=center, meta=meta,
    )
