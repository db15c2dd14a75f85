"""Amorphous carbon substrates: a seeded bank of periodic blocks, cut, shifted and flipped per structure.

czone's `gen_p_substrate` builds the blocks (random close packing at a density with a minimum distance). Its
periodicity in x and y is not exact: pairs across the block's seam, and a few inside it, come closer than the
minimum distance (down to 1.03 Å, unphysical for carbon). Every block is therefore pruned under periodic
boundary conditions before use, so the minimum C-C distance holds everywhere, the seam included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from .config import STAGE_SUBSTRATE, GenerationConfig, seed_for


@dataclass(frozen=True)
class SubstrateCut:
    """Where one structure's carbon came from: enough to rebuild it from the bank."""
    thickness_A: float
    bank_index: int


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


def bank_block(cfg: GenerationConfig, index: int, cache_dir: Path | None) -> np.ndarray:
    """A periodic (in x, y) amorphous carbon block of the full field and the deepest thickness asked for."""
    from czone.generator.amorphous_algorithms import gen_p_substrate

    sub = cfg.structure.substrate
    L = cfg.field_of_view_A
    depth = math.ceil(sub.thickness_A.support()[1] / cfg.simulation.slice_thickness_A) * cfg.simulation.slice_thickness_A
    key = f"carbon-v2-{index}-L{L:g}-t{depth:g}-rho{sub.density_atoms_per_A3:g}-d{sub.min_dist_A:g}-s{cfg.seed}"
    if key in _BANK:
        return _BANK[key]
    path = cache_dir / f"{key}.npy" if cache_dir else None
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
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{np.random.default_rng().integers(1 << 30)}.tmp.npy")
            np.save(tmp, block)
            tmp.replace(path)
    if len(_BANK) > 64:
        _BANK.clear()
    _BANK[key] = block
    return block


def cut_substrate(cfg: GenerationConfig, rng: np.random.Generator, cache_dir: Path | None):
    """Carbon of a sampled thickness cut from a bank block, shifted and flipped at random (exact: the block is
    periodic in x and y), so thousands of structures need only `bank_size` slow amorphous generations.

    Returns positions (z from 0 at the top surface, growing with depth) and the cut's description."""
    sub = cfg.structure.substrate
    L = cfg.field_of_view_A
    thickness = float(sub.thickness_A.sample(rng))
    bank_index = int(rng.integers(sub.bank_size))
    shift = rng.uniform(0, L, size=2)
    flip = rng.integers(0, 2, size=2).astype(bool)
    swap = bool(rng.integers(0, 2))
    block = bank_block(cfg, bank_index, cache_dir)
    pos = block[block[:, 2] < thickness].copy()
    pos[:, :2] = np.mod(pos[:, :2] + shift, L)
    for ax in (0, 1):
        if flip[ax]:
            pos[:, ax] = np.mod(L - pos[:, ax], L)
    if swap:
        pos[:, [0, 1]] = pos[:, [1, 0]]
    return pos, SubstrateCut(thickness_A=thickness, bank_index=bank_index)
