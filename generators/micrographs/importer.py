"""Experimental HRTEM micrographs + hand-labelled masks -> a dataset folder laid out like a generated one.

The folder holds Parquet and WebDataset shards of square tiles at one target pixel size, a dataset card and a
manifest with per-shard checksums, so the trainer reads it like synthetic data: the `finetune` split for
fine-tuning, the `benchmark` split for evaluation. Splits are drawn per source micrograph, so tiles of one
micrograph (which overlap in content and share its noise, focus and thickness) never leak across splits.

Over 400 lines: the import's schema, pairing, planning, tiling and folder writing are one pass over the files,
kept together so the folder it writes is decided in one place.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from .. import __version__, records
from ..files import sha256_file, versions
from ..folder import new_manifest, tile_record_id
from ..records import Column, fixed_list, nested_list_array
from ..writers import write_dataset_card, write_manifest, write_split
from .readers import (
    EXTENSIONS,
    MASK_SUFFIX,
    READER_PACKAGES,
    SPLITS,
    MicrographError,
    _supported,
    check_min_side,
    parse_mask_values,
    read_mask,
    read_micrograph,
)
from .tiles import resample, resample_mask, resampled_shape, tile, tile_count

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
    stratum: str | None = None


def plan_source(image_path: Path, mask_path: Path, pixel_size_A: float | None, target_pixel_size_A: float,
                tile_px: int, overlap_px: int, log: Callable[[str], None] = print,
                mask_values: dict[float, int] | None = None, pixel_size_source: str = "command line") -> Source:
    """Read and check one pair (calibration, mask values and shape) without keeping the pixels."""
    image, file_px, fmt = read_micrograph(image_path)
    check_min_side(image.shape, image_path.name)
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
    if min(shape) < tile_px:  # padding it up to a tile would make a record that is mostly invented pixels
        raise MicrographError(f"{image_path.name}: {image.shape[1]} x {image.shape[0]} px "
                              f"({shape[1]} x {shape[0]} px at the target {target_pixel_size_A:g} Å/px) is smaller "
                              f"than one {tile_px}-px tile; "
                              "choose a smaller --tile-px or a larger --target-pixel-size-A, or leave the file out")
    return Source(image_path, mask_path, fmt, file_px, float(px),
                  pixel_size_source if pixel_size_A is not None else "file", tuple(image.shape), shape,
                  tile_count(shape, tile_px, overlap_px), record_stem=_safe_stem(image_path))


def _read_index(csv_path, images: list[Path], images_dir: Path, columns: tuple[str, ...],
                flag: str) -> dict[Path, dict]:
    """Each micrograph's row of a per-file CSV (`file` = its name or its path relative to the imported folder),
    checked to have the named columns, one row per file and a row for every micrograph."""
    import csv

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MicrographError(f"{flag} {csv_path}: no such file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise MicrographError(f"{flag} {csv_path}: not a readable UTF-8 CSV ({err})") from None
    missing = [c for c in ("file", *columns) if c not in header]
    if missing:
        raise MicrographError(f"{flag} {csv_path}: needs the columns {','.join(('file', *columns))}; missing "
                              f"{', '.join(missing)} (header: {','.join(header) or 'none'})")
    by_name: dict[str, dict] = {}
    for line, row in enumerate(rows, start=2):
        name = (row.get("file") or "").strip()
        if not name:
            raise MicrographError(f"{flag} {csv_path}: line {line} has no file name")
        key = Path(name).as_posix()
        if key in by_name:
            raise MicrographError(f"{flag} {csv_path}: {name} has more than one row (line {line}); keep one")
        by_name[key] = {**row, "_line": line}
    out = {}
    for p in images:
        rel = p.relative_to(images_dir).as_posix()
        hit = by_name.get(rel, by_name.get(p.name))
        if hit is None:
            raise MicrographError(f"{flag} {csv_path}: no row for micrograph {rel}; add `{rel},"
                                  f"{','.join(c.upper() for c in columns)}`")
        out[p] = hit
    return out


def _pixel_size(row: dict, csv_path) -> float:
    text = (row.get("pixel_size_A") or "").strip()
    try:
        px = float(text)
    except ValueError:
        px = float("nan")
    if not (math.isfinite(px) and px > 0):
        raise MicrographError(f"--pixel-sizes {csv_path}: {row['file'].strip()}: pixel_size_A {text!r} is not a "
                              f"positive number (line {row['_line']})")
    return px


def _stratum(row: dict, columns: list[str], csv_path) -> str:
    """A micrograph's class for --stratify-by: its values of `columns`, e.g. "Au / 5.0"."""
    values = [(row.get(c) or "").strip() for c in columns]
    empty = [c for c, v in zip(columns, values) if not v]
    if empty:
        raise MicrographError(f"--stratify-by: {row['file'].strip()} has no {', '.join(empty)} in {csv_path} "
                              f"(line {row['_line']}); fill it in or stratify by other columns")
    return " / ".join(values)


def read_pixel_sizes(csv_path, images: list[Path], images_dir: Path,
                     stratify_by: list[str] | None = None) -> tuple[dict[Path, float], dict[Path, str] | None]:
    """Per-micrograph pixel sizes from a CSV with (at least) the columns `file,pixel_size_A`, and with
    `stratify_by` each micrograph's class from those columns of the same rows (one read). Other columns are
    ignored. `file` is the micrograph's name or its path relative to the imported folder. Every micrograph must
    have exactly one row with a positive, finite pixel size."""
    columns = ("pixel_size_A", *(stratify_by or ()))
    rows = _read_index(csv_path, images, images_dir, columns, "--pixel-sizes")
    sizes = {p: _pixel_size(row, csv_path) for p, row in rows.items()}
    strata = {p: _stratum(row, stratify_by, csv_path) for p, row in rows.items()} if stratify_by else None
    return sizes, strata


def given_pixel_sizes(paths: list[Path], pixel_size_A: float | None, csv_path=None,
                      root: Path | None = None) -> dict[Path, float | None]:
    """Each micrograph's pixel size from --pixel-size-A or --pixel-sizes; None where neither is given (the
    caller takes the file's own, `read_micrograph`, and refuses a file that carries none). `root`: the folder the
    CSV's relative `file` paths start from (default: the micrographs' common folder)."""
    if pixel_size_A is not None and csv_path is not None:
        raise MicrographError("give --pixel-size-A or --pixel-sizes, not both")
    if pixel_size_A is not None:
        if not (math.isfinite(pixel_size_A) and pixel_size_A > 0):
            raise MicrographError(f"--pixel-size-A must be a positive number of Å, got {pixel_size_A}")
        return {p: float(pixel_size_A) for p in paths}
    if csv_path is not None:
        root = Path(root).resolve() if root else Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
        sizes, _ = read_pixel_sizes(csv_path, [p.resolve() for p in paths], root)
        return {p: sizes[p.resolve()] for p in paths}
    return {p: None for p in paths}


def pixel_size_of(path: Path, given: float | None, from_file: float | None) -> float:
    """The pixel size to use for one micrograph: the one given, else the file's own; a file that carries none,
    with none given, is refused in one line."""
    px = given or from_file
    if px is None:
        raise MicrographError(f"{Path(path).name}: the file carries no pixel size; give --pixel-size-A X or "
                              "--pixel-sizes CSV (columns file,pixel_size_A)")
    return float(px)


def assign_splits(names: list[str], finetune_fraction: float, seed: int,
                  strata: dict[str, str] | None = None) -> dict[str, str]:
    """Source name -> split from a seeded permutation of the sorted names. With two or more sources and a
    fraction strictly between 0 and 1, each split gets at least one source.

    strata (name -> class, e.g. "Au / 5.0"): every class is split in the fraction, to within one source, so
    both halves hold every kind of field. Systematic sampling does it: the names, shuffled within their class
    and classes laid end to end, go to fine-tuning at every crossing of a randomly offset grid of step
    1/fraction, so the total is the fraction of all sources too."""
    names = sorted(names)
    n = len(names)
    rng = np.random.default_rng(seed)
    if strata is None:
        n_ft = math.floor(finetune_fraction * n + 0.5)  # half up: round() would send 1 of 1 and 2 of 5 to benchmark
        if 0 < finetune_fraction < 1 and n >= 2:
            n_ft = min(max(n_ft, 1), n - 1)
        order = rng.permutation(n)
        return {names[i]: SPLITS[0] if rank < n_ft else SPLITS[1] for rank, i in enumerate(order)}
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(strata[name], []).append(name)
    seq = []
    for key in sorted(groups):
        seq += [groups[key][i] for i in rng.permutation(len(groups[key]))]
    u, f = rng.random(), finetune_fraction
    ft = [math.floor((i + 1) * f + u) > math.floor(i * f + u) for i in range(n)]
    if 0 < f < 1 and n >= 2 and (all(ft) or not any(ft)):
        ft[0] = not ft[0]  # a grid step longer than the list: still one source on each side
    return {name: SPLITS[0] if is_ft else SPLITS[1] for name, is_ft in zip(seq, ft)}


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
        "record_id": [tile_record_id(src.record_stem, i) for i in range(n)],
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
                  pixel_sizes_csv=None, mask_values: str | dict | None = None, stratify_by: list[str] | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Import labelled micrographs into a new dataset folder; returns its manifest.

    Every file is read and checked before anything is written, and the folder is assembled next to `out_dir`
    and renamed into place at the end, so a failed import leaves nothing behind.
    """
    _check_args(target_pixel_size_A, tile_px, overlap_px, finetune_fraction, pixel_size_A, records_per_shard)
    if pixel_size_A is not None and pixel_sizes_csv is not None:
        raise MicrographError("give either --pixel-size-A (one size for every micrograph) or --pixel-sizes CSV "
                              "(one per micrograph), not both")
    if stratify_by and pixel_sizes_csv is None:
        raise MicrographError("--stratify-by reads its columns from the per-micrograph table: give --pixel-sizes CSV "
                              f"with the columns file,pixel_size_A,{','.join(stratify_by)}")
    values = parse_mask_values(mask_values) if isinstance(mask_values, (str, type(None))) else dict(mask_values)
    images_dir, out = Path(images_dir), Path(out_dir)
    _check_out(out)
    pairs = pair_files(images_dir, masks_dir, allow_unlabelled, log)
    if pixel_sizes_csv is not None:
        per_file, by_path = read_pixel_sizes(pixel_sizes_csv, [i for i, _ in pairs], images_dir, stratify_by)
        sources = [plan_source(i, m, per_file[i], target_pixel_size_A, tile_px, overlap_px, log, values, "csv")
                   for i, m in pairs]
    else:
        sources = [plan_source(i, m, pixel_size_A, target_pixel_size_A, tile_px, overlap_px, log, values)
                   for i, m in pairs]
    _check_unique_ids(sources)
    strata = None
    if stratify_by:
        for s in sources:
            s.stratum = by_path[s.image]
        strata = {s.image.name: s.stratum for s in sources}
    splits = assign_splits([s.image.name for s in sources], finetune_fraction, seed, strata)
    for s in sources:
        s.split = splits[s.image.name]
    args = {"images_dir": str(images_dir.resolve()), "masks_dir": str(Path(masks_dir).resolve()) if masks_dir
            else None, "pixel_size_A": pixel_size_A, "target_pixel_size_A": target_pixel_size_A,
            "tile_px": tile_px, "overlap_px": overlap_px, "finetune_fraction": finetune_fraction, "seed": seed,
            "material": material, "allow_unlabelled": allow_unlabelled, "records_per_shard": records_per_shard,
            "pixel_sizes_csv": str(Path(pixel_sizes_csv).resolve()) if pixel_sizes_csv is not None else None,
            "stratify_by": list(stratify_by) if stratify_by else None,
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
    manifest = new_manifest(name, __version__, versions(*READER_PACKAGES), counts, shards, kind="experimental",
                            sources=[_source_entry(s, images_dir) for s in sources], n_sources=len(sources),
                            **{"import": args})
    write_card(out, manifest)
    write_manifest(out, manifest)
    return manifest


def _source_entry(s: Source, images_dir: Path) -> dict:
    return {"file": s.image.relative_to(images_dir).as_posix(), "mask": s.mask.name, "split": s.split,
            **({"stratum": s.stratum} if s.stratum is not None else {}),
            "n_tiles": s.n_tiles, "format": s.format, "pixel_size_A": s.pixel_size_A,
            "pixel_size_source": s.pixel_size_source, "file_pixel_size_A": s.file_pixel_size_A,
            "size_px": [s.shape_px[1], s.shape_px[0]], "resampled_size_px": [s.resampled_px[1], s.resampled_px[0]],
            "sha256": sha256_file(s.image), "mask_sha256": sha256_file(s.mask)}


# ---------------------------------------------------------------- card
def write_card(out_dir: Path, manifest: dict, template: str = "experimental_card.md") -> None:
    """The README.md card of an imported folder, through the one card writer (`writers.write_dataset_card`)."""
    present = [s for s in SPLITS if manifest["splits"].get(s, 0) > 0]
    write_dataset_card(
        out_dir, manifest["shards"], present, hf_features(manifest["import"]["tile_px"]), template,
        card_data={"task_categories": ["image-segmentation"],
                   "tags": ["electron-microscopy", "hrtem", "nanoparticles", "experimental"],
                   "pretty_name": f"{manifest['name']}: experimental HRTEM micrographs with hand-labelled masks"},
        m=manifest, args=manifest["import"], columns=COLUMNS, import_json=json.dumps(manifest["import"], indent=2))
