"""Amorphous carbon substrates: a seeded bank of periodic blocks, cut, shifted and flipped per structure.

czone's `gen_p_substrate` builds the blocks (random close packing at a density with a minimum distance). Its
periodicity in x and y is not exact: pairs across the block's seam, and a few inside it, come closer than the
minimum distance (down to 1.03 Å, unphysical for carbon). Every block is therefore pruned under periodic
boundary conditions before use, so the minimum C-C distance holds everywhere, the seam included.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from .config import STAGE_SUBSTRATE, GenerationConfig, seed_for
from .files import atomic_path, build_once


@dataclass(frozen=True)
class SubstrateCut:
    """Where one structure's carbon came from: enough to rebuild it from the bank.

    The shift is a whole number of multislice samples, and flips and the x/y swap map the sample grid onto
    itself, so the cut's sliced potential is the block's, re-indexed: `multislice.py` builds each block's slices
    once and reuses them for every structure cut from it."""
    thickness_A: float
    bank_index: int
    block_key: str = ""
    grid_px: int = 1  # the multislice grid the shift is counted on
    shift_px: tuple[int, int] = (0, 0)
    flip: tuple[bool, bool] = (False, False)
    swap: bool = False


def prune_close_pairs(pos: np.ndarray, box_xy: float, min_dist_A: float) -> np.ndarray:
    """Drop atoms until no two are closer than `min_dist_A`, with periodic images in x and y."""
    if len(pos) < 2:
        return pos
    wrapped = np.c_[np.mod(pos[:, :2], box_xy), pos[:, 2]]
    # z is open: a box far larger than the block keeps it from wrapping.
    zbox = float(np.ptp(wrapped[:, 2])) * 4 + 10 * min_dist_A + 1.0
    wrapped[:, 2] -= wrapped[:, 2].min()
    tree = cKDTree(wrapped, boxsize=[box_xy, box_xy, zbox])
    pairs = tree.query_pairs(min_dist_A * (1 - 1e-9), output_type="ndarray")
    if len(pairs) == 0:
        return pos
    keep = np.ones(len(pos), bool)
    for i, j in pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]:
        if keep[i] and keep[j]:
            keep[j] = False
    return pos[keep]


_BANK: dict[str, np.ndarray] = {}


def block_key(cfg: GenerationConfig, index: int) -> str:
    sub = cfg.structure.substrate
    return (f"carbon-v2-{index}-L{cfg.field_of_view_A:g}-t{_depth(cfg):g}-rho{sub.density_atoms_per_A3:g}"
            f"-d{sub.min_dist_A:g}-s{cfg.seed}")


def _depth(cfg: GenerationConfig) -> float:
    dz = cfg.simulation.slice_thickness_A
    return math.ceil(cfg.structure.substrate.thickness_A.support()[1] / dz) * dz


def bank_block(cfg: GenerationConfig, index: int, cache_dir: Path | None) -> np.ndarray:
    """A periodic (in x, y) amorphous carbon block of the full field and the deepest thickness asked for."""
    from czone.generator.amorphous_algorithms import gen_p_substrate

    sub = cfg.structure.substrate
    L = cfg.field_of_view_A
    depth = _depth(cfg)
    key = block_key(cfg, index)
    if key in _BANK:
        return _BANK[key]
    path = cache_dir / f"{key}.npy" if cache_dir else None
    with build_once(path) if path is not None else contextlib.nullcontext():
        if path is not None and path.exists():
            block = np.load(path)
        else:
            state = np.random.get_state()
            np.random.seed(seed_for(cfg.seed, STAGE_SUBSTRATE, index))
            try:
                block = gen_p_substrate([L, L, depth], min_dist=sub.min_dist_A, density=sub.density_atoms_per_A3) \
                    if depth > 0 else np.zeros((0, 3))
            finally:
                np.random.set_state(state)
            block = prune_close_pairs(np.asarray(block, float), L, sub.min_dist_A)
            if path is not None:
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.save(f, block)
    if len(_BANK) > 64:
        _BANK.clear()
    _BANK[key] = block
    return block


def cut_substrate(cfg: GenerationConfig, rng: np.random.Generator, cache_dir: Path | None):
    """Carbon of a sampled thickness cut from a bank block, shifted by whole multislice samples and flipped at
    random (exact: the block is periodic in x and y), so thousands of structures need only `bank_size` slow
    amorphous generations and `bank_size` sliced potentials.

    Returns positions (z from 0 at the top surface, growing with depth), the cut's description and the block."""
    sub = cfg.structure.substrate
    L = cfg.field_of_view_A
    n = cfg.multislice_gpts
    thickness = float(sub.thickness_A.sample(rng))
    bank_index = int(rng.integers(sub.bank_size))
    shift_px = rng.integers(0, n, size=2)
    flip = rng.integers(0, 2, size=2).astype(bool)
    swap = bool(rng.integers(0, 2))
    block = bank_block(cfg, bank_index, cache_dir)
    cut = SubstrateCut(thickness_A=thickness, bank_index=bank_index, block_key=block_key(cfg, bank_index), grid_px=n,
                       shift_px=(int(shift_px[0]), int(shift_px[1])), flip=(bool(flip[0]), bool(flip[1])), swap=swap)
    return cut_positions(block, cut, L), cut, block


def cut_positions(block: np.ndarray, cut: SubstrateCut, field_A: float) -> np.ndarray:
    """The cut's atoms: the block above `thickness_A`, shifted by `shift_px` samples of `field_A / grid_px`,
    flipped, then x and y swapped (`multislice.to_cut_frame` moves fields on the sample grid the same way)."""
    L = field_A
    pos = block[block[:, 2] < cut.thickness_A].copy()
    pos[:, :2] = np.mod(pos[:, :2] + np.asarray(cut.shift_px) * (L / cut.grid_px), L)
    for ax in (0, 1):
        if cut.flip[ax]:
            pos[:, ax] = np.mod(L - pos[:, ax], L)
    if cut.swap:
        pos[:, [0, 1]] = pos[:, [1, 0]]
    return pos
