"""Resampling to a target pixel size (area average, majority for masks) and square tiles covering an image.

Used by the importer, by `temsynth predict` (a micrograph at the model's pixel size) and by the generation run
(detector pixels to the record's pixel size).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .readers import MicrographError


# ---------------------------------------------------------------- resampling and tiling
def resampled_shape(shape: tuple[int, int], from_A: float, to_A: float) -> tuple[int, int]:
    """The shape `resample` returns: the same field of view at `to_A`, to the nearest pixel."""
    return tuple(max(1, int(round(n * from_A / to_A))) for n in shape)


def resample(image: np.ndarray, from_A: float, to_A: float, order: int = 1) -> np.ndarray:
    """Change the pixel size from `from_A` to `to_A` Å, keeping the field of view (pixel edges, not centres).

    order 1: area average when shrinking (interpolation would alias the lattice fringes), linear when
    enlarging; order 0: nearest neighbour, for labels.
    """
    out_shape = resampled_shape(image.shape, from_A, to_A)
    if out_shape == image.shape:
        return image.copy()
    if order == 1 and to_A > from_A:
        return _area_average(image, out_shape)
    from scipy import ndimage

    zoom = [o / n for o, n in zip(out_shape, image.shape)]
    out = ndimage.zoom(image, zoom, order=order, grid_mode=True, mode="nearest")
    assert out.shape == out_shape, (out.shape, out_shape)
    return out.astype(image.dtype, copy=False)


def _area_average(image: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    # Pillow's BOX filter weights each source pixel by its overlap with the target pixel: exact area averaging.
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    return np.asarray(im.resize((out_shape[1], out_shape[0]), Image.Resampling.BOX), dtype=np.float32)


def resample_mask(mask: np.ndarray, from_A: float, to_A: float) -> np.ndarray:
    """Resample the particle fraction, then take the majority: the boundary moves by under half a pixel."""
    frac = resample(mask.astype(np.float32), from_A, to_A, order=1)
    return (frac >= 0.5).astype(np.uint8)


class Tile(NamedTuple):
    image: np.ndarray
    mask: np.ndarray
    origin_px: tuple[int, int]  # (x, y) of the tile corner in the resampled micrograph
    valid_px: tuple[int, int]  # (width, height) of real data; the rest is padding
    padded: bool


def tile_starts(length: int, size: int, overlap: int = 0) -> list[int]:
    """Tile starts along one axis: regular steps, the last tile flush with the border."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size, size - overlap))
    return starts + [length - size]


def tile_count(shape: tuple[int, int], size_px: int, overlap_px: int = 0) -> int:
    return len(tile_starts(shape[0], size_px, overlap_px)) * len(tile_starts(shape[1], size_px, overlap_px))


def tile(image: np.ndarray, mask: np.ndarray, size_px: int, overlap_px: int = 0) -> list[Tile]:
    """Square tiles covering the image, row by row; an image smaller than a tile is padded at the far edges
    (image by reflection, so no artificial edge; mask by zeros, as padding holds no particle)."""
    if not 0 <= overlap_px < size_px:
        raise MicrographError(f"overlap ({overlap_px} px) must be at least 0 and less than the tile ({size_px} px)")
    h, w = image.shape
    pad = ((0, max(0, size_px - h)), (0, max(0, size_px - w)))
    padded = pad != ((0, 0), (0, 0))
    if padded:
        image = np.pad(image, pad, mode="reflect" if min(h, w) > 1 else "edge")
        mask = np.pad(mask, pad, mode="constant")
    tiles = []
    for y in tile_starts(h, size_px, overlap_px):
        for x in tile_starts(w, size_px, overlap_px):
            sl = np.s_[y:y + size_px, x:x + size_px]
            tiles.append(Tile(image[sl], mask[sl], (x, y), (min(w, size_px), min(h, size_px)), padded))
    return tiles
