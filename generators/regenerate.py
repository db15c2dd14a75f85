"""Stored records read back by id, and rebuilt from the folder's own config to be compared with them bit for bit
(`temsynth regenerate`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import DatasetFolder, as_folder
from .folder import RunError, parse_record_id, record_id
from .work import simulate_structure


def read_record(dataset: DatasetFolder | str | Path, record_id: str) -> dict:
    return read_records(dataset, [record_id])[record_id]


def read_records(dataset: DatasetFolder | str | Path, record_ids: list[str]) -> dict[str, dict]:
    """Stored records by id, images and masks as arrays, in one scan of the folder's Parquet shards."""
    import pyarrow.dataset as pads

    folder = as_folder(dataset)
    dataset_dir = folder.path
    with folder.reading():
        t = pads.dataset(folder.files("parquet"), format="parquet").to_table(
            filter=pads.field("record_id").isin(list(record_ids)))
    rows = {r["record_id"]: r for r in t.to_pylist()}
    missing = [rid for rid in record_ids if rid not in rows]
    if missing or len(t) != len(rows):
        raise RunError(f"record {(missing or record_ids)[0]!r} not found in {dataset_dir}"
                       if missing else f"{dataset_dir} holds a record id twice")
    for row in rows.values():
        size = row["image_size_px"]
        row["image"] = np.asarray(row["image"], np.float32).reshape(size, size)
        row["mask"] = np.asarray(row["mask"], np.uint8).reshape(size, size)
        if "instance_mask" in row:
            row["instance_mask"] = np.asarray(row["instance_mask"], np.uint8).reshape(size, size)
    return rows


def regenerate_record(dataset: DatasetFolder | str | Path, record_id: str) -> dict:
    """Rebuild one record from the manifest's config and compare it with the stored one."""
    return next(regenerate_records(dataset, [record_id], keep_arrays=True))


def regenerate_records(dataset: DatasetFolder | str | Path, record_ids: list[str] | None = None,
                       keep_arrays: bool = False):
    """Rebuild records (all of them when `record_ids` is None) and compare each with the stored one; yields one
    comparison per record, structure by structure (a structure's conditions share one simulation)."""
    folder = as_folder(dataset)
    dataset_dir, cfg = folder.path, folder.config
    if record_ids is None:
        record_ids = [record_id(s, c) for s in range(cfg.n_structures) for c in range(cfg.conditions_per_structure)]
    wanted: dict[int, list[tuple[str, int]]] = {}
    for rid in record_ids:
        s_idx, c_idx = parse_record_id(rid)
        if not (0 <= s_idx < cfg.n_structures and 0 <= c_idx < cfg.conditions_per_structure):
            raise RunError(f"record {rid!r} not found in {dataset_dir} ({cfg.n_structures} structures x "
                           f"{cfg.conditions_per_structure} conditions)")
        wanted.setdefault(s_idx, []).append((rid, c_idx))
    for s_idx, items in wanted.items():
        stored = read_records(folder, [rid for rid, _ in items])  # one scan per structure
        new = simulate_structure(cfg, s_idx, dataset_dir=dataset_dir)
        images, masks = new.images, new.masks
        for rid, c_idx in items:
            img, msk, old = images[c_idx], masks[c_idx], stored[rid]
            r = {"record_id": rid,
                 "image_identical": bool(np.array_equal(img, old["image"])),
                 "mask_identical": bool(np.array_equal(msk, old["mask"])),
                 "image_max_abs_diff": float(np.max(np.abs(img - old["image"]))),
                 "mask_pixels_differing": int(np.sum(msk != old["mask"]))}
            yield {**r, "image": img, "mask": msk} if keep_arrays else r
