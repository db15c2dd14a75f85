"""Experimental HRTEM micrographs + hand-labelled masks -> a dataset folder laid out like a generated one.

The folder holds Parquet and WebDataset shards of square tiles at one target pixel size, a dataset card and a
manifest with per-shard checksums, so the trainer reads it like synthetic data: the `finetune` split for
fine-tuning, the `benchmark` split for evaluation. Splits are drawn per source micrograph, so tiles of one
micrograph (which overlap in content and share its noise, focus and thickness) never leak across splits.

Files are read with rosettasciio, ncempy (NCEM/Berkeley EMD), tifffile and Pillow; nothing here parses a file
format by hand. Every failure to read or pair a file is a `MicrographError` whose one-line message names the
file and what to do about it.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pyarrow as pa

from temsynth.errors import TemsynthError

from . import __version__
from . import records
from .records import Column, fixed_list, nested_list_array
from .writers import CARDS_DIR, atomic_path, card_data_files, sha256_file, versions, write_manifest, write_split

EXTENSIONS = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".npy": "npy",
              ".dm3": "dm3", ".dm4": "dm4", ".emd": "emd", ".mrc": "mrc"}
SPLITS = ("finetune", "benchmark")
MASK_SUFFIX = "_mask"
# Å per unit. Print units (inch, cm, mm) are deliberately absent: in a micrograph they are a DPI, not a calibration.
_A_PER_UNIT = {"m": 1e10, "µm": 1e4, "um": 1e4, "micron": 1e4, "microns": 1e4, "nm": 10.0, "nanometer": 10.0,
               "å": 1.0, "a": 1.0, "angstrom": 1.0, "angstroms": 1.0, "pm": 1e-2}
# A TIFF resolution tag in px/cm is read as a calibration only below this: print DPIs give ~40-350 µm.
_MAX_TIFF_TAG_PIXEL_A = 1e4


READER_PACKAGES = ("rosettasciio", "ncempy", "tifffile", "pillow", "h5py")


class MicrographError(TemsynthError, ValueError):
    """A micrograph or mask that cannot be used, with a one-line message naming the file and the fix."""


def _supported() -> str:
    return ", ".join(sorted(EXTENSIONS))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:200]}"


# ---------------------------------------------------------------- units
def unit_to_A(unit) -> float | None:
    """Å per `unit`, or None for pixel, empty or unknown units (which are no calibration)."""
    if not isinstance(unit, str):
        return None
    u = unit.strip()
    if "\\u" in u:  # ImageJ escapes non-ASCII units in its description, e.g. "\u00C5"
        u = u.encode("ascii", "backslashreplace").decode("unicode_escape")
    u = u.strip("[]").replace("_", "").replace("\u212b", "å").replace("\u03bc", "µ").lower()  # ncempy writes "n_m"
    return _A_PER_UNIT.get(u)


def _scale_to_A(scale, unit) -> float | None:
    factor = unit_to_A(unit)
    if factor is None or scale is None or not np.isfinite(scale) or scale == 0:
        return None
    return abs(float(scale)) * factor


def _pixel_size_A(path: Path, calibration) -> float | None:
    """One pixel size from the (row, column) axis calibrations; None if either axis is uncalibrated."""
    if calibration is None:
        return None
    sy, sx = (_scale_to_A(s, u) for s, u in calibration)
    if sy is None or sx is None:
        return None
    if not math.isclose(sy, sx, rel_tol=1e-3):
        raise MicrographError(f"{path.name}: non-square pixels ({sx:.4g} x {sy:.4g} Å); resample it to square "
                              "pixels before importing")
    return sx


# ---------------------------------------------------------------- readers: each returns [(data, calibration)]
def _rsciio_images(signals) -> list:
    out = []
    for s in signals:
        data = np.asarray(s["data"])
        axes = sorted(s["axes"], key=lambda a: a.get("index_in_array", 0))
        cal = [(a.get("scale"), a.get("units")) for a in axes][-2:] if len(axes) >= 2 else None
        out.append((_gray(data), cal))
    return out


def _gray(data: np.ndarray) -> np.ndarray:
    """RGB(A) -> luminance; rosettasciio returns colour images as structured arrays."""
    if data.dtype.names:
        rgb = np.stack([data[c] for c in ("R", "G", "B") if c in data.dtype.names], axis=-1)
        return _luminance(rgb)
    return data


def _luminance(rgb: np.ndarray) -> np.ndarray:
    if rgb.shape[-1] < 3:
        return rgb[..., 0]
    w = np.array([0.299, 0.587, 0.114], np.float64)  # ITU-R 601, as Pillow's "L" conversion
    return rgb[..., :3].astype(np.float64) @ w


def _read_tiff(path: Path) -> list:
    from rsciio.tiff import file_reader

    images = _rsciio_images(file_reader(str(path)))
    if len(images) == 1 and _pixel_size_A(path, images[0][1]) is None:
        images = [(images[0][0], _tiff_tag_calibration(path) or images[0][1])]
    return images


def _tiff_tag_calibration(path: Path):
    """What rosettasciio leaves out: ImageJ units other than micron, and resolution tags in px/cm."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return None
        per_unit = [tags[k].value[0] / tags[k].value[1] for k in ("YResolution", "XResolution")]
        if tif.is_imagej and (tif.imagej_metadata or {}).get("unit"):
            unit = tif.imagej_metadata["unit"]
            return [(1 / r, unit) for r in per_unit]
        if "ResolutionUnit" in tags and tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER:
            cal = [(1e4 / r, "µm") for r in per_unit]
            if all(s * 1e4 < _MAX_TIFF_TAG_PIXEL_A for s, _ in cal):
                return cal
    return None


def _read_pil(path: Path) -> list:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("1", "L", "I", "F") or im.mode.startswith("I;"):
            data = np.asarray(im)
        else:  # palette, RGB, RGBA, LA, CMYK
            data = _luminance(np.asarray(im.convert("RGB")))
    return [(data, None)]  # PNG/JPEG carry a print DPI at most, never a microscope calibration


def _read_npy(path: Path) -> list:
    return [(np.load(path, allow_pickle=False), None)]


def _read_dm(path: Path) -> list:
    from rsciio.digitalmicrograph import file_reader

    return _rsciio_images(file_reader(str(path)))


def _emd_variant(path: Path) -> str:
    """velox, hyperspy (Berkeley EMD written by rosettasciio) or ncem (Berkeley EMD of any other writer)."""
    import h5py

    with h5py.File(path, "r") as f:
        # The test rosettasciio applies (only in a private module): Velox files carry a JSON "Version" dataset.
        if "Version" in f and '"Velox"' in f["Version"][0].decode("utf-8", "replace").replace(" ", ""):
            return "velox"
        signals = f.get("signals")
        return "hyperspy" if signals is not None and signals.attrs.get("emd_group_type") == 1 else "ncem"


def _read_emd(path: Path) -> list:
    if _emd_variant(path) in ("velox", "hyperspy"):
        from rsciio.emd import file_reader

        return _rsciio_images(file_reader(str(path), select_type="image"))
    # rosettasciio stores and reads Berkeley EMD arrays transposed (its own files round-trip); ncempy, the format
    # authors' reader, takes the array as stored, which is how ncempy and the NCEM tools write them.
    from ncempy.io.emd import emdReader

    d = emdReader(path, dsetNum=0)
    cal = list(zip(d["pixelSize"], d["pixelUnit"]))[-2:]
    return [(np.asarray(d["data"]), cal if len(cal) == 2 else None)]


def _read_mrc(path: Path) -> list:
    from rsciio.mrc import file_reader

    return _rsciio_images(file_reader(str(path)))


_READERS: dict[str, Callable[[Path], list]] = {
    "tiff": _read_tiff, "png": _read_pil, "jpeg": _read_pil, "npy": _read_npy, "dm3": _read_dm, "dm4": _read_dm,
    "emd": _read_emd, "mrc": _read_mrc}


def _format_of(path: Path) -> str:
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise MicrographError(f"{path.name}: unsupported extension {path.suffix or '(none)'!r}; supported: "
                              f"{_supported()}; export it to TIFF from the acquisition software")
    return fmt


def _read_any(path: Path) -> tuple[np.ndarray, object, str]:
    path = Path(path)
    fmt = _format_of(path)
    if not path.is_file():
        raise MicrographError(f"{path}: no such file")
    try:
        images = _READERS[fmt](path)
    except MicrographError:
        raise
    except Exception as e:  # every reader has its own exception types; the user needs the file name
        raise MicrographError(f"{path.name}: cannot be read as {fmt} ({_one_line(e)}); check the file is "
                              "complete (not a truncated copy) or re-export it") from None
    data, cal = _only_image(path, images)
    return data, cal, _format_detail(path, fmt)


def _format_detail(path: Path, fmt: str) -> str:
    if fmt != "emd":
        return fmt
    return "emd-velox" if _emd_variant(path) == "velox" else "emd-ncem"


def _only_image(path: Path, images: list) -> tuple[np.ndarray, object]:
    """The one 2-D image of a file; DM and Velox files may also hold thumbnails or other signals."""
    squeezed = [(_squeeze_leading(d), c) for d, c in images]
    flat = [(d, c) for d, c in squeezed if d.ndim == 2]
    if not flat:
        shapes = ", ".join(" x ".join(map(str, d.shape)) for d, _ in squeezed) or "nothing"
        raise MicrographError(f"{path.name}: holds {shapes}, not a 2-D image; export one 2-D frame (or the sum "
                              "of a stack) before importing")
    data, cal = max(flat, key=lambda dc: dc[0].size)  # thumbnails are the smaller ones
    if np.iscomplexobj(data):
        raise MicrographError(f"{path.name}: complex data (an FFT or exit wave?), expected a recorded intensity")
    return data, cal


def _squeeze_leading(data: np.ndarray) -> np.ndarray:
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    return data


def read_micrograph(path) -> tuple[np.ndarray, float | None, str]:
    """(2-D float32 image, pixel size in Å or None if the file is uncalibrated, format name)."""
    path = Path(path)
    data, cal, fmt = _read_any(path)
    image = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(image)):
        raise MicrographError(f"{path.name}: contains NaN or infinite pixels; replace them before importing")
    return image, _pixel_size_A(path, cal), fmt


def parse_mask_values(text: str | None) -> dict[float, int] | None:
    """`--mask-values 0=0,1=1,2=1` (or `255=0,0=1` for a white background) -> {file value: 0 or 1}."""
    if text is None:
        return None
    out: dict[float, int] = {}
    for item in str(text).split(","):
        k, sep, v = item.partition("=")
        try:
            key, label = float(k), int(v)
        except ValueError:
            key, label = None, None
        if not sep or key is None or label not in (0, 1) or not math.isfinite(key):
            raise MicrographError(f"--mask-values {text!r}: write VALUE=LABEL pairs with LABEL 0 (background) or 1 "
                                  "(particle), e.g. --mask-values 0=0,1=1,2=1 or 255=0,0=1")
        if key in out:
            raise MicrographError(f"--mask-values {text!r}: value {k.strip()} is mapped twice")
        out[key] = label
    return out


def _values(data: np.ndarray, limit: int = 8) -> str:
    vals = np.unique(data)
    shown = ", ".join(f"{v:g}" for v in vals[:limit])
    return "{" + shown + (f", … ({len(vals)} values)" if len(vals) > limit else "") + "}"


def read_mask(path, shape: tuple[int, int] | None = None, image_path=None,
              mask_values: dict[float, int] | None = None) -> np.ndarray:
    """Binary uint8 mask (1 = particle). With `shape`, it must match the image's shape.

    Accepted as they are: {0, 1} labels (and booleans), and {0, 255} images with 255 = particle unless 255 is
    most of the field and of its border (a white background). Anything else needs `mask_values`
    ({file value: 0/1}, every value present mapped) and is otherwise refused naming the values found.
    """
    path = Path(path)
    data, _, fmt = _read_any(path)
    data = np.asarray(data, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise MicrographError(f"{path.name}: mask holds NaN or infinite values; a mask is 0 = background, 1 = particle")
    if mask_values is not None:
        present = np.unique(data)
        unmapped = [v for v in present if float(v) not in mask_values]
        if unmapped:
            raise MicrographError(f"{path.name}: mask values {_values(np.asarray(unmapped))} are not in --mask-values "
                                  f"({', '.join(f'{k:g}={v}' for k, v in mask_values.items())}); map every value")
        mask = np.zeros(data.shape, np.uint8)
        for v, label in mask_values.items():
            if label:
                mask[data == v] = 1
    elif fmt == "jpeg":
        # JPEG compression leaves faint non-zero pixels around every edge; a half-maximum threshold ignores them.
        mask = (data > data.max() / 2).astype(np.uint8)
        _refuse_white_background(path, mask, "the bright value")
    else:
        present = set(np.unique(data).tolist())
        if present <= {0.0, 1.0}:
            mask = (data == 1).astype(np.uint8)
        elif present <= {0.0, 255.0}:
            mask = (data == 255).astype(np.uint8)
            _refuse_white_background(path, mask, "255")
        else:
            raise MicrographError(
                f"{path.name}: mask values {_values(data)} are not a binary mask ({{0, 1}}, {{0, 255}} or true/false); "
                "say which are particle with --mask-values, e.g. --mask-values "
                + ",".join(f"{v:g}={int(v != min(present))}" for v in sorted(present)[:4]))
    if shape is not None and mask.shape != tuple(shape):
        other = Path(image_path).name if image_path is not None else "the image"
        raise MicrographError(f"{path.name}: mask is {_hw(mask.shape)} px but {other} is {_hw(shape)} px; "
                              "masks must be drawn on the full-size micrograph")
    return mask


def _refuse_white_background(path: Path, mask: np.ndarray, what: str) -> None:
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if mask.mean() > 0.5 and border.mean() > 0.5:
        raise MicrographError(
            f"{path.name}: {what} covers {mask.mean():.0%} of the mask and {border.mean():.0%} of its border, like a "
            "white background with dark particles; pass --mask-values 255=0,0=1 if so (or --mask-values 0=0,255=1 "
            "to import it as particle)")


def _hw(shape) -> str:
    return f"{shape[1]} x {shape[0]}"


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


# ---------------------------------------------------------------- schema
COLUMNS: tuple[Column, ...] = (
    Column("record_id", pa.string(), "unique id: {source stem, [A-Za-z0-9_-] only}-t{tile_index:04d}"),
    Column("split", pa.string(), "finetune / benchmark, assigned per source micrograph"),
    Column("source_file", pa.string(), "micrograph file name, relative to the imported folder"),
    Column("source_format", pa.string(), "tiff, png, jpeg, npy, dm3, dm4, emd-ncem, emd-velox, mrc"),
    Column("source_pixel_size_A", pa.float64(), "pixel size of the source micrograph as used for resampling"),
    Column("pixel_size_source", pa.string(), "where source_pixel_size_A came from: file / command line / csv"),
    Column("pixel_size_A", pa.float64(), "pixel size of the tile (the import's target pixel size)"),
    Column("image_size_px", pa.int32(), "tile side length"),
    Column("tile_index", pa.int32(), "tile number within its source micrograph, row by row"),
    Column("tile_origin_px", fixed_list(pa.int32(), 2), "(x, y) of the tile corner in the resampled micrograph"),
    Column("tile_valid_size_px", fixed_list(pa.int32(), 2), "(width, height) of real data from the corner; the rest "
                                                         "is padding (image reflected, mask 0)"),
    Column("padded", pa.bool_(), "the micrograph was smaller than a tile and was padded"),
    Column("material", pa.string(), "particle material, as given to the import"),
    Column("mask_area_px", pa.int32(), "pixels in the mask"),
    Column("experimental", pa.bool_(), "always true: a recorded micrograph, not a simulation"),
)


def arrow_schema() -> pa.Schema:
    return records.arrow_schema(COLUMNS)


def hf_features(size_px: int):
    return records.hf_features(size_px, COLUMNS)


# ---------------------------------------------------------------- pairing and planning
def _micrograph_files(folder: Path) -> tuple[list[Path], list[str]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return ([p for p in files if p.suffix.lower() in EXTENSIONS],
            [p.name for p in files if p.suffix.lower() not in EXTENSIONS])


def _names(items, limit: int = 8) -> str:
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _mask_index(masks: list[Path]) -> dict[str, Path]:
    """Mask files by the stem of the micrograph they label ("{stem}" or "{stem}_mask")."""
    index: dict[str, list[Path]] = {}
    for m in masks:
        stem = m.stem[:-len(MASK_SUFFIX)] if m.stem.endswith(MASK_SUFFIX) else m.stem
        index.setdefault(stem, []).append(m)
    clash = {k: v for k, v in index.items() if len(v) > 1}
    if clash:
        k, v = next(iter(clash.items()))
        raise MicrographError(f"several masks for {k!r}: {_names(p.name for p in v)}; keep one")
    return {k: v[0] for k, v in index.items()}


def pair_files(images_dir, masks_dir=None, allow_unlabelled: bool = False,
               log: Callable[[str], None] = print) -> list[tuple[Path, Path]]:
    """(micrograph, mask) pairs: masks in `masks_dir` with the micrograph's stem, or else next to it as
    `{stem}_mask.{ext}`. A micrograph without a mask is an error (most often a misnamed mask) unless
    `allow_unlabelled`, which skips it with a warning."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise MicrographError(f"{images_dir}: no such folder")
    files, ignored = _micrograph_files(images_dir)
    if masks_dir is None:
        images = [p for p in files if not p.stem.endswith(MASK_SUFFIX)]
        masks = _mask_index([p for p in files if p.stem.endswith(MASK_SUFFIX)])
        where = f"{{stem}}{MASK_SUFFIX}.{{ext}} next to each micrograph, or pass --masks DIR"
    else:
        masks_dir = Path(masks_dir)
        if not masks_dir.is_dir():
            raise MicrographError(f"{masks_dir}: no such masks folder")
        images, masks = files, _mask_index(_micrograph_files(masks_dir)[0])
        where = f"a file with the same stem in {masks_dir}"
    if ignored:
        log(f"warning: ignoring {len(ignored)} file(s) with unsupported extensions: {_names(ignored)}")
    unlabelled = [p.name for p in images if p.stem not in masks]
    if unlabelled and not allow_unlabelled:
        raise MicrographError(f"no mask for {len(unlabelled)} micrograph(s): {_names(unlabelled)}; expected "
                              f"{where} (or pass --allow-unlabelled to skip them)")
    if unlabelled:
        log(f"warning: skipping {len(unlabelled)} micrograph(s) without a mask: {_names(unlabelled)}")
    pairs = [(p, masks[p.stem]) for p in images if p.stem in masks]
    if not pairs:
        raise MicrographError(f"{images_dir}: no labelled micrographs (supported extensions: {_supported()})")
    return pairs


def _safe_stem(path: Path) -> str:
    # WebDataset splits a key at its first dot, so record ids have none.
    return re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)


@dataclass
class Source:
    image: Path
    mask: Path
    format: str
    file_pixel_size_A: float | None
    pixel_size_A: float
    pixel_size_source: str
    shape_px: tuple[int, int]  # (rows, columns) as recorded
    resampled_px: tuple[int, int]
    n_tiles: int
    split: str = ""
    record_stem: str = ""


def plan_source(image_path: Path, mask_path: Path, pixel_size_A: float | None, target_pixel_size_A: float,
                tile_px: int, overlap_px: int, log: Callable[[str], None] = print,
                mask_values: dict[float, int] | None = None, pixel_size_source: str = "command line") -> Source:
    """Read and check one pair (calibration, mask values and shape) without keeping the pixels."""
    image, file_px, fmt = read_micrograph(image_path)
    read_mask(mask_path, image.shape, image_path, mask_values)
    px = pixel_size_A if pixel_size_A is not None else file_px
    if px is None:
        raise MicrographError(f"{image_path.name}: the file has no pixel-size calibration; pass --pixel-size-A "
                              "or --pixel-sizes CSV")
    flag = (f"--pixel-size-A {pixel_size_A}" if pixel_size_source == "command line"
            else f"the pixel-size CSV's {pixel_size_A} Å")
    if pixel_size_A is not None and file_px is not None and not math.isclose(file_px, pixel_size_A, rel_tol=0.01):
        log(f"warning: {image_path.name}: {flag} overrides the file's {file_px:.4g} Å")
    shape = resampled_shape(image.shape, px, target_pixel_size_A)
    return Source(image_path, mask_path, fmt, file_px, float(px),
                  pixel_size_source if pixel_size_A is not None else "file", tuple(image.shape), shape,
                  tile_count(shape, tile_px, overlap_px), record_stem=_safe_stem(image_path))


def read_pixel_sizes(csv_path, images: list[Path], images_dir: Path) -> dict[Path, float]:
    """Per-micrograph pixel sizes from a CSV with (at least) the columns `file,pixel_size_A`; extra columns are
    ignored. `file` is the micrograph's name or its path relative to the imported folder. Every micrograph must
    have exactly one row with a positive, finite pixel size."""
    import csv

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MicrographError(f"--pixel-sizes {csv_path}: no such file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise MicrographError(f"--pixel-sizes {csv_path}: not a readable UTF-8 CSV ({err})") from None
    missing = [c for c in ("file", "pixel_size_A") if c not in header]
    if missing:
        raise MicrographError(f"--pixel-sizes {csv_path}: needs the columns file,pixel_size_A; missing "
                              f"{', '.join(missing)} (header: {','.join(header) or 'none'})")
    by_name: dict[str, float] = {}
    for line, row in enumerate(rows, start=2):
        name = (row.get("file") or "").strip()
        if not name:
            raise MicrographError(f"--pixel-sizes {csv_path}: line {line} has no file name")
        text = (row.get("pixel_size_A") or "").strip()
        try:
            px = float(text)
        except ValueError:
            px = float("nan")
        if not (math.isfinite(px) and px > 0):
            raise MicrographError(f"--pixel-sizes {csv_path}: {name}: pixel_size_A {text!r} is not a positive number "
                                  f"(line {line})")
        key = Path(name).as_posix()
        if key in by_name:
            raise MicrographError(f"--pixel-sizes {csv_path}: {name} has more than one row (line {line}); keep one")
        by_name[key] = px
    out = {}
    for p in images:
        rel = p.relative_to(images_dir).as_posix()
        hit = by_name.get(rel, by_name.get(p.name))
        if hit is None:
            raise MicrographError(f"--pixel-sizes {csv_path}: no row for micrograph {rel}; add `{rel},PIXEL_SIZE_A`")
        out[p] = hit
    return out


def assign_splits(names: list[str], finetune_fraction: float, seed: int) -> dict[str, str]:
    """Source name -> split from a seeded permutation of the sorted names. With two or more sources and a
    fraction strictly between 0 and 1, each split gets at least one source."""
    names = sorted(names)
    n = len(names)
    n_ft = math.floor(finetune_fraction * n + 0.5)  # half up: round() would send 1 of 1 and 2 of 5 to benchmark
    if 0 < finetune_fraction < 1 and n >= 2:
        n_ft = min(max(n_ft, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return {names[i]: SPLITS[0] if rank < n_ft else SPLITS[1] for rank, i in enumerate(order)}


# ---------------------------------------------------------------- records
def source_table(src: Source, target_pixel_size_A: float, tile_px: int, overlap_px: int, material: str,
                 images_dir: Path, mask_values: dict[float, int] | None = None) -> pa.Table:
    image, _, _ = read_micrograph(src.image)
    mask = read_mask(src.mask, image.shape, src.image, mask_values)
    image = resample(image, src.pixel_size_A, target_pixel_size_A)
    mask = resample_mask(mask, src.pixel_size_A, target_pixel_size_A)
    tiles = tile(image, mask, tile_px, overlap_px)
    n = len(tiles)
    cols = {
        "image": nested_list_array(np.stack([t.image for t in tiles]).astype(np.float32)),
        "mask": nested_list_array(np.stack([t.mask for t in tiles]).astype(np.uint8)),
        "record_id": [f"{src.record_stem}-t{i:04d}" for i in range(n)],
        "split": [src.split] * n,
        "source_file": [src.image.relative_to(images_dir).as_posix()] * n,
        "source_format": [src.format] * n,
        "source_pixel_size_A": [src.pixel_size_A] * n,
        "pixel_size_source": [src.pixel_size_source] * n,
        "pixel_size_A": [float(target_pixel_size_A)] * n,
        "image_size_px": [tile_px] * n,
        "tile_index": list(range(n)),
        "tile_origin_px": [list(t.origin_px) for t in tiles],
        "tile_valid_size_px": [list(t.valid_px) for t in tiles],
        "padded": [t.padded for t in tiles],
        "material": [material] * n,
        "mask_area_px": [int(t.mask.sum()) for t in tiles],
        "experimental": [True] * n,
    }
    schema = arrow_schema()
    return pa.table({k: pa.array(v, type=schema.field(k).type) for k, v in cols.items()}, schema=schema)


# ---------------------------------------------------------------- the import
def _check_args(target_pixel_size_A, tile_px, overlap_px, finetune_fraction, pixel_size_A, records_per_shard):
    if not (target_pixel_size_A and target_pixel_size_A > 0):
        raise MicrographError(f"--target-pixel-size-A must be positive, got {target_pixel_size_A}")
    if pixel_size_A is not None and not pixel_size_A > 0:
        raise MicrographError(f"--pixel-size-A must be positive, got {pixel_size_A}")
    if not (isinstance(tile_px, int) and tile_px >= 8):
        raise MicrographError(f"--tile-px must be an integer of at least 8, got {tile_px}")
    if not 0 <= overlap_px < tile_px:
        raise MicrographError(f"--overlap-px must lie in [0, {tile_px}), got {overlap_px}")
    if not 0 <= finetune_fraction <= 1:
        raise MicrographError(f"--finetune-fraction must lie in [0, 1], got {finetune_fraction}")
    if records_per_shard < 1:
        raise MicrographError(f"records per shard must be at least 1, got {records_per_shard}")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MicrographError(f"{out} exists and is not empty; choose a new --out or remove that folder")


def import_folder(images_dir, out_dir, *, masks_dir=None, pixel_size_A: float | None = None,
                  target_pixel_size_A: float, tile_px: int, finetune_fraction: float = 0.5, seed: int = 0,
                  material: str = "unknown", overlap_px: int = 0, allow_unlabelled: bool = False,
                  records_per_shard: int = 256, name: str | None = None,
                  pixel_sizes_csv=None, mask_values: str | dict | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Import labelled micrographs into a new dataset folder; returns its manifest.

    Every file is read and checked before anything is written, and the folder is assembled next to `out_dir`
    and renamed into place at the end, so a failed import leaves nothing behind.
    """
    _check_args(target_pixel_size_A, tile_px, overlap_px, finetune_fraction, pixel_size_A, records_per_shard)
    if pixel_size_A is not None and pixel_sizes_csv is not None:
        raise MicrographError("give either --pixel-size-A (one size for every micrograph) or --pixel-sizes CSV "
                              "(one per micrograph), not both")
    values = parse_mask_values(mask_values) if isinstance(mask_values, (str, type(None))) else dict(mask_values)
    images_dir, out = Path(images_dir), Path(out_dir)
    _check_out(out)
    pairs = pair_files(images_dir, masks_dir, allow_unlabelled, log)
    if pixel_sizes_csv is not None:
        per_file = read_pixel_sizes(pixel_sizes_csv, [i for i, _ in pairs], images_dir)
        sources = [plan_source(i, m, per_file[i], target_pixel_size_A, tile_px, overlap_px, log, values, "csv")
                   for i, m in pairs]
    else:
        sources = [plan_source(i, m, pixel_size_A, target_pixel_size_A, tile_px, overlap_px, log, values)
                   for i, m in pairs]
    _check_unique_ids(sources)
    splits = assign_splits([s.image.name for s in sources], finetune_fraction, seed)
    for s in sources:
        s.split = splits[s.image.name]
    args = {"images_dir": str(images_dir.resolve()), "masks_dir": str(Path(masks_dir).resolve()) if masks_dir
            else None, "pixel_size_A": pixel_size_A, "target_pixel_size_A": target_pixel_size_A,
            "tile_px": tile_px, "overlap_px": overlap_px, "finetune_fraction": finetune_fraction, "seed": seed,
            "material": material, "allow_unlabelled": allow_unlabelled, "records_per_shard": records_per_shard,
            "pixel_sizes_csv": str(Path(pixel_sizes_csv).resolve()) if pixel_sizes_csv is not None else None,
            "mask_values": {f"{k:g}": v for k, v in values.items()} if values is not None else None}
    staging = out.parent / f".{out.name}.importing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = _write_folder(staging, name or out.resolve().name, sources, args, images_dir)
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"imported {len(sources)} micrographs as {manifest['n_records']} tiles of {tile_px}² px at "
        f"{target_pixel_size_A} Å/px into {out}: " + ", ".join(f"{k} {v}" for k, v in manifest["splits"].items()))
    return manifest


def _check_unique_ids(sources: list[Source]) -> None:
    seen: dict[str, str] = {}
    for s in sources:
        if s.record_stem in seen:
            raise MicrographError(f"{s.image.name} and {seen[s.record_stem]} give the same record ids "
                                  f"({s.record_stem}-t…); rename one of them")
        seen[s.record_stem] = s.image.name


def _write_folder(out: Path, name: str, sources: list[Source], args: dict, images_dir: Path) -> dict:
    shards, counts = [], {}
    for split in SPLITS:
        members = [s for s in sources if s.split == split]
        counts[split] = sum(s.n_tiles for s in members)
        mask_values = {float(k): v for k, v in args["mask_values"].items()} if args.get("mask_values") else None
        tables = (source_table(s, args["target_pixel_size_A"], args["tile_px"], args["overlap_px"],
                               args["material"], images_dir, mask_values) for s in members)
        if counts[split]:
            shards += write_split(out, split, tables, counts[split], args["records_per_shard"])
    manifest = {
        "name": name, "kind": "experimental",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "generator": "temsynth", "generator_version": __version__, "versions": versions(*READER_PACKAGES),
        "import": args, "n_sources": len(sources), "n_records": sum(counts.values()), "splits": counts,
        "sources": [_source_entry(s, images_dir) for s in sources], "shards": shards,
    }
    write_card(out, manifest)
    write_manifest(out, manifest)
    return manifest


def _source_entry(s: Source, images_dir: Path) -> dict:
    return {"file": s.image.relative_to(images_dir).as_posix(), "mask": s.mask.name, "split": s.split,
            "n_tiles": s.n_tiles, "format": s.format, "pixel_size_A": s.pixel_size_A,
            "pixel_size_source": s.pixel_size_source, "file_pixel_size_A": s.file_pixel_size_A,
            "size_px": [s.shape_px[1], s.shape_px[0]], "resampled_size_px": [s.resampled_px[1], s.resampled_px[0]],
            "sha256": sha256_file(s.image), "mask_sha256": sha256_file(s.mask)}


# ---------------------------------------------------------------- card
def write_card(out_dir: Path, manifest: dict, template: str = "experimental_card.md") -> None:
    """The README.md card: YAML configs and features (so load_dataset types image/mask as Array2D), then prose."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    present = [s for s in SPLITS if manifest["splits"].get(s, 0) > 0]
    configs = [{"config_name": "default", "default": True, "data_files": card_data_files(manifest["shards"], present)}]
    card_data = DatasetCardData(
        task_categories=["image-segmentation"], configs=configs,
        tags=["electron-microscopy", "hrtem", "nanoparticles", "experimental"],
        pretty_name=f"{manifest['name']}: experimental HRTEM micrographs with hand-labelled masks")
    tile_px = manifest["import"]["tile_px"]
    DatasetInfosDict({"default": DatasetInfo(features=hf_features(tile_px))}).to_dataset_card_data(card_data)
    card = DatasetCard.from_template(card_data, template_path=str(CARDS_DIR / template), m=manifest,
                                     args=manifest["import"], columns=COLUMNS,
                                     import_json=json.dumps(manifest["import"], indent=2))
    with atomic_path(Path(out_dir) / "README.md") as tmp:
        tmp.write_text(str(card))
