"""Support films: a seeded bank of periodic blocks, cut, shifted and flipped per structure.

Amorphous films (carbon, silicon nitride, silica: any composition) are random close packings; graphene is
AB-stacked sheets, strained by under 1 % so that a whole number of rectangular cells spans the field (the cut's
shifts and flips need a block periodic in x and y; the sheets' lattice therefore lies along the image axes, up
to the cut's flips and x/y swap).

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

from .config import GRAPHENE_INTERLAYER_A, STAGE_SUBSTRATE, GenerationConfig, composition_numbers, rng_for, seed_for
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
GRAPHENE_A = 2.46  # lattice constant; C-C 1.42 Å


def is_plain_carbon(cfg: GenerationConfig) -> bool:
    sub = cfg.structure.substrate
    return sub.kind == "amorphous" and sub.composition in ("C", "C1") and sub.density_g_per_cm3 is None


def block_key(cfg: GenerationConfig, index: int) -> str:
    sub = cfg.structure.substrate
    common = f"{index}-L{cfg.field_of_view_A:g}-t{_depth(cfg):g}"
    if sub.kind == "graphene":
        return f"graphene-v1-{common}-s{cfg.seed}"
    # plain amorphous carbon keeps its key (and every cached block and record made before other films existed)
    head = "carbon-v2" if is_plain_carbon(cfg) else f"amorphous-{sub.composition}-v1"
    return f"{head}-{common}-rho{sub.atoms_per_A3:g}-d{sub.min_dist_A:g}-s{cfg.seed}"


def _depth(cfg: GenerationConfig) -> float:
    dz = cfg.simulation.slice_thickness_A
    sub = cfg.structure.substrate
    deepest = (sub.graphene_layers.support()[1] * GRAPHENE_INTERLAYER_A if sub.kind == "graphene"
               else sub.thickness_A.support()[1])
    return math.ceil(deepest / dz) * dz


def block_numbers(cfg: GenerationConfig, index: int, n: int) -> np.ndarray:
    """Atomic numbers of a block's atoms: the composition's proportions, whole, assigned by a seeded shuffle."""
    zs, fractions = composition_numbers(cfg.structure.substrate.composition)
    if len(zs) == 1:
        return np.full(n, int(zs[0]), int)
    counts = np.floor(fractions * n).astype(int)
    counts[np.argsort(-(fractions * n - counts))[: n - counts.sum()]] += 1  # largest remainders take the rest
    numbers = np.repeat(zs, counts)
    return rng_for(cfg.seed, STAGE_SUBSTRATE, index, 1).permutation(numbers)


def graphene_block(L: float, layers: int, rng: np.random.Generator) -> np.ndarray:
    """`layers` AB-stacked sheets periodic in an L x L cell, layer i at z = (i + 1/2) x 3.35 Å, laterally at a
    random registry."""
    from ase.build import graphene, make_supercell

    sheet = make_supercell(graphene(a=GRAPHENE_A, vacuum=0.0), [[1, 0, 0], [1, 2, 0], [0, 0, 1]])  # a x sqrt(3) a
    cell_x, cell_y = sheet.cell[0, 0], sheet.cell[1, 1]
    nx, ny = max(1, round(L / cell_x)), max(1, round(L / cell_y))
    base = np.mod(sheet.positions[:, :2], [cell_x, cell_y])
    tiles = np.array([(i * cell_x, j * cell_y) for i in range(nx) for j in range(ny)])
    xy = (base[None, :, :] + tiles[:, None, :]).reshape(-1, 2) * [L / (nx * cell_x), L / (ny * cell_y)]
    out = []
    origin = rng.uniform(0, [cell_x, cell_y])
    for i in range(layers):
        shift = origin + (0.0, (i % 2) * GRAPHENE_A / math.sqrt(3))  # B on A: one C-C bond along y
        out.append(np.c_[np.mod(xy + shift, L), np.full(len(xy), (i + 0.5) * GRAPHENE_INTERLAYER_A)])
    return np.concatenate(out)


def bank_block(cfg: GenerationConfig, index: int, cache_dir: Path | None) -> np.ndarray:
    """A periodic (in x, y) support block of the full field and the deepest thickness asked for (positions;
    `block_numbers` gives its atoms' elements)."""
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
            if sub.kind == "graphene":
                layers = int(round(depth / GRAPHENE_INTERLAYER_A + 0.5)) if depth > 0 else 0
                block = graphene_block(L, layers, rng_for(cfg.seed, STAGE_SUBSTRATE, index, 2))
                block = block[block[:, 2] < depth]
            else:
                state = np.random.get_state()
                np.random.seed(seed_for(cfg.seed, STAGE_SUBSTRATE, index))
                try:
                    block = gen_p_substrate([L, L, depth], min_dist=sub.min_dist_A, density=sub.atoms_per_A3) \
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
    """Support of a sampled thickness cut from a bank block, shifted by whole multislice samples and flipped at
    random (exact: the block is periodic in x and y), so thousands of structures need only `bank_size` slow
    amorphous generations and `bank_size` sliced potentials.

    Returns positions (z from 0 at the top surface, growing with depth) and their atomic numbers, the cut's
    description, the block and its atomic numbers."""
    sub = cfg.structure.substrate
    L = cfg.field_of_view_A
    n = cfg.multislice_gpts
    if sub.kind == "graphene":
        thickness = int(sub.graphene_layers.sample(rng)) * GRAPHENE_INTERLAYER_A
    else:
        thickness = float(sub.thickness_A.sample(rng))
    bank_index = int(rng.integers(sub.bank_size))
    shift_px = rng.integers(0, n, size=2)
    flip = rng.integers(0, 2, size=2).astype(bool)
    swap = bool(rng.integers(0, 2))
    block = bank_block(cfg, bank_index, cache_dir)
    cut = SubstrateCut(thickness_A=thickness, bank_index=bank_index, block_key=block_key(cfg, bank_index), grid_px=n,
                       shift_px=(int(shift_px[0]), int(shift_px[1])), flip=(bool(flip[0]), bool(flip[1])), swap=swap)
    numbers = block_numbers(cfg, bank_index, len(block))
    return cut_positions(block, cut, L), numbers[block[:, 2] < cut.thickness_A], cut, block, numbers


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
