"""Named subsets, subset folders and provenance traces of a dataset folder."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from .config import (
    STAGE_CONDITIONS,
    STAGE_DETECTOR,
    STAGE_NOISE,
    STAGE_PHONONS,
    STAGE_STRUCTURE,
    GenerationConfig,
    seed_for,
)
from .dataset import DatasetFolder, as_folder
from .files import versions
from .folder import new_manifest, parse_record_id
from .query import Query, QueryError
from .records import PIXEL_COLUMNS
from .regenerate import read_record
from .writers import SPLITS, card_data_files, file_entries, write_card, write_manifest, write_split

KEY_COLUMNS = ("split", "n_particles", "particle_defect_type", "particle_material", "particle_shape",
               "particle_radius_A", "defocus_nm", "dose_e_per_A2")
# what a query summary describes of an imported (experimental) folder, which has none of the above but split
EXPERIMENTAL_KEY_COLUMNS = ("split", "material", "source_format", "pixel_size_source", "source_pixel_size_A",
                            "mask_area_px")


def fingerprint(dataset: DatasetFolder | str | Path) -> str:
    """Content fingerprint: sha256 over the manifest's shard checksums (`DatasetFolder.fingerprint`)."""
    return as_folder(dataset).fingerprint


def schema(dataset: DatasetFolder | str | Path) -> pa.Schema:
    """The folder's own record schema (`DatasetFolder.schema`): a query on an imported folder is checked against
    its columns, not the simulated records'. The folder is checked against its manifest first."""
    return as_folder(dataset).schema


def metadata(dataset: DatasetFolder | str | Path, columns=None, query: Query | None = None) -> pa.Table:
    """Metadata columns of an intact folder (checked against its manifest first), optionally filtered."""
    folder = as_folder(dataset)
    with folder.reading():
        ds = pads.dataset(folder.files("parquet"), format="parquet")
        cols = columns or [n for n in ds.schema.names if n not in PIXEL_COLUMNS]
        return query.table(ds, cols) if query is not None else ds.to_table(columns=cols)


def query_summary(dataset: DatasetFolder | str | Path, text: str) -> dict:
    folder = as_folder(dataset)
    q = Query(text, folder.schema)
    t = metadata(folder, query=q)
    out = {"query": text, "records": len(t)}
    simulated = "structure_id" in t.column_names
    unit = "structure_id" if simulated else "source_file"
    out["structures" if simulated else "micrographs"] = len(pc.unique(t[unit])) if len(t) else 0
    for c in KEY_COLUMNS if simulated else EXPERIMENTAL_KEY_COLUMNS:
        col = pc.list_flatten(t[c]) if pa.types.is_list(t[c].type) else t[c]  # per-particle: over all particles
        if pa.types.is_string(col.type) or c == "n_particles":
            out[c] = {d["values"]: d["counts"] for d in pc.value_counts(col).to_pylist()}
        elif len(col):
            qs = pc.quantile(col, q=[0, 0.5, 1]).to_pylist()
            out[c] = {"min": round(qs[0], 3), "median": round(qs[1], 3), "max": round(qs[2], 3)}
    return out


def save_named_subset(dataset: DatasetFolder | str | Path, name: str, text: str) -> dict:
    """Record a query as a named config of the dataset card: load_dataset(dir, name) returns the subset."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name) or name == "default":
        raise QueryError(f"subset name {name!r}: use letters, digits, '_' or '-', and not 'default'")
    folder = as_folder(dataset)
    q = Query(text, folder.schema)
    cfg = folder.config  # an imported folder has no generation config to write a card from: refuse first
    meta = metadata(folder, columns=sorted({"split", *q.columns}))
    # Parquet filters cannot test for null: a negation over a column holding nulls has no exact DNF form.
    nulls = [c for c in q.columns if meta[c].null_count or
             (pa.types.is_fixed_size_list(meta[c].type) and meta[c].combine_chunks().flatten().null_count)]
    dnf = q.dnf_for(nulls)
    if dnf is None:
        raise QueryError("a named subset is stored as Parquet filters, which cannot index list columns "
                         "(e.g. crop_offset_px[0]), reduce them (any(...), all(...)) nor negate an ordering exactly "
                         "for NaN (write `x >= 5` rather than `not x < 5`); or write the subset out with --out instead")
    out = folder.path
    manifest = json.loads(json.dumps(folder.raw))  # a copy: the opened folder keeps what it read
    subsets = {s["config_name"]: s for s in manifest.get("subsets", [])}
    # datasets refuses a split with no rows, so a named config lists only the splits the query reaches.
    hits = meta.filter(q.mask(meta))["split"].to_pylist()
    present = [s for s in SPLITS if s in hits]
    if not present:
        raise QueryError(f"query selects no records: {text}")
    subsets[name] = {"config_name": name, "query": text, "filters": dnf,
                     "data_files": card_data_files(manifest["shards"], present)}
    manifest["subsets"] = list(subsets.values())
    _rewrite_card(out, cfg, manifest)
    write_manifest(out, manifest)
    return subsets[name]


def _rewrite_card(out: Path, cfg: GenerationConfig, manifest: dict, template: str = "dataset_card.md") -> None:
    # The card's YAML passes every config key to the Parquet builder; the query text lives in the table below.
    extra = [{k: v for k, v in s.items()} for s in manifest.get("subsets", [])]
    configs = [{k: v for k, v in s.items() if k != "query"} for s in extra]
    write_card(out, cfg, manifest["splits"], extra_configs=configs, summary=manifest.get("summary"),
               template=template, subset_queries={s["config_name"]: s["query"] for s in extra},
               parent=manifest.get("parent"), shards=manifest["shards"])


def write_subset(dataset: DatasetFolder | str | Path, text: str, out_dir: str | Path) -> dict:
    """A new dataset folder (Parquet + WebDataset + card + manifest) holding the records the query selects."""
    import os

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QueryError(f"{out} exists and is not empty; choose a new --out")
    # Assembled beside the target and renamed at the end: a failure leaves nothing that blocks a re-run.
    staging = out.parent / f".{out.name}.subset-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = _write_subset(as_folder(dataset), text, staging)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _write_subset(folder: DatasetFolder, text: str, out: Path) -> dict:
    # `folder` was checked when opened: a damaged parent would give a short subset that verifies "OK"
    src, parent, cfg = folder.path, folder.raw, folder.config
    q = Query(text, folder.schema)
    ds = pads.dataset(folder.files("parquet"), format="parquet")
    shards, counts = [], {}
    for split in SPLITS:
        with folder.reading():
            table = q.table(ds, extra=pads.field("split") == split)
        table = table.sort_by("record_id")
        counts[split] = len(table)
        shards += write_split(out, split, [table], len(table), cfg.records_per_shard)
        for sid in pc.unique(table["structure_id"]).to_pylist() if len(table) else []:
            f = src / "structures" / f"{sid}.extxyz"
            if f.exists():
                (out / "structures").mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out / "structures" / f.name)
    if not any(counts.values()):
        raise QueryError(f"query selects no records: {text}")
    manifest = new_manifest(
        f"{parent['name']}-subset", parent.get("generator_version"), versions(), counts, shards,
        config_sha256=parent["config_sha256"], config=parent["config"],
        n_structures=sum(1 for _ in (out / "structures").glob("*.extxyz")) if (out / "structures").exists() else 0,
        summary={}, parent={"path": str(src.resolve()), "fingerprint": folder.fingerprint, "query": text},
        structures=file_entries(out, (out / "structures").glob("*.extxyz")))
    write_manifest(out, manifest)
    _rewrite_card(out, cfg, manifest)
    return manifest


def trace(dataset: DatasetFolder | str | Path, record_id: str) -> dict:
    """Everything that made one record: the config of every stage, the seeds, the structure file, versions."""
    folder = as_folder(dataset)
    dataset_dir, manifest = folder.path, folder.raw
    row = read_record(folder, record_id)
    s_idx, c_idx = parse_record_id(record_id)
    root = manifest["config"]["seed"]
    meta = {k: v for k, v in row.items() if k not in PIXEL_COLUMNS and not k.startswith("particle_")}
    per_particle = [k for k in row if k.startswith("particle_")]
    particles = [{k.removeprefix("particle_"): row[k][i] for k in per_particle}
                 for i in range(row.get("n_particles") or 0)]
    structure_file = Path(dataset_dir) / "structures" / f"{row['structure_id']}.extxyz"
    return {
        "record_id": record_id,
        "dataset": str(Path(dataset_dir).resolve()),
        "record": meta,
        "particles": particles,
        "seeds": {"root": root,
                  "structure": seed_for(root, STAGE_STRUCTURE, s_idx),
                  "czone": [p["czone_seed"] for p in particles],
                  "detector": seed_for(root, STAGE_DETECTOR, s_idx, 1),
                  "frozen_phonons": seed_for(root, STAGE_PHONONS, s_idx),
                  "imaging_condition": seed_for(root, STAGE_CONDITIONS, s_idx, c_idx),
                  "noise": seed_for(root, STAGE_NOISE, s_idx, c_idx),
                  "derivation": "numpy SeedSequence(root, spawn_key=(stage, structure_index[, condition_index]))"},
        "structure_file": str(structure_file) if structure_file.exists() else None,
        "stages": {k: manifest["config"][k] for k in ("structure", "simulation", "imaging", "mask")},
        "config_sha256": manifest["config_sha256"],
        "versions": manifest["versions"],
        "parent": manifest.get("parent"),
    }
