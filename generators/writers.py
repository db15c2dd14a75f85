"""Shards and card: Parquet + WebDataset shards per split, the dataset card, the manifest. Every file is written
to a temporary name and renamed (`files.atomic_path`), so a kill never leaves a half-written file under its
final name."""
from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from temsynth.resources import cards_dir

from .config import GenerationConfig
from .files import atomic_path, sha256_file, versions  # noqa: F401  (re-exported: the writers' own helpers)
from .records import METADATA_COLUMNS, hf_features

CARDS_DIR = cards_dir()  # package data: an installed wheel has it too
SPLITS = ("train", "validation", "test")


def write_parquet(table: pa.Table, path: Path, row_group_size: int = 16) -> None:
    # Small row groups let `filters=` skip data by column statistics without reading the images.
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)


def parquet_shard_name(split: str, i: int, n: int) -> str:
    return f"data/{split}-{i:05d}-of-{n:05d}.parquet"


def wds_shard_name(split: str, i: int) -> str:
    return f"wds/{split}-{i:06d}.tar"


def write_wds(table: pa.Table, path: Path) -> None:
    """One WebDataset sample per row; every non-array column goes to the json, whatever the folder's schema."""
    import webdataset as wds
    from PIL import Image

    size = len(table[0][0]) if len(table) else 0
    arrays = [a for a in ("image", "mask", "instance_mask") if a in table.column_names]
    pixels = {a: table.column(a).combine_chunks().flatten().flatten().to_numpy(zero_copy_only=False)
              .reshape(len(table), size, size) for a in arrays}
    previews = table.column("preview").to_pylist() if "preview" in table.column_names else None
    meta = table.drop_columns(arrays + (["preview"] if previews else [])).to_pylist()
    with atomic_path(path) as tmp:
        # A fixed member mtime: the same records give the same bytes, so fingerprints compare content.
        with wds.TarWriter(str(tmp), mtime=0) as sink:
            for i, m in enumerate(meta):
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(pixels["image"][i], dtype=np.float32))
                sample = {"__key__": m["record_id"], "image.npy": buf.getvalue(), "json": json.dumps(m).encode()}
                for a in arrays[1:]:  # masks as 8-bit PNG: "mask.png", "instance_mask.png"
                    png = io.BytesIO()
                    image = Image.fromarray(np.ascontiguousarray(pixels[a][i], dtype=np.uint8), mode="L")
                    image.save(png, format="PNG")
                    sample[f"{a}.png"] = png.getvalue()
                if previews:  # already a PNG (generators/preview.py): stored as it is
                    sample["preview.png"] = previews[i]["bytes"]
                # Keys are record ids: no dots, as WebDataset splits the key at the first dot.
                sink.write(sample)


def iter_shards(tables: Iterable[pa.Table], rows_per_shard: int) -> Iterator[pa.Table]:
    """Re-chunk a stream of tables into shards of `rows_per_shard` rows (the last may be shorter)."""
    buf: list[pa.Table] = []
    n = 0
    for t in tables:
        buf.append(t)
        n += len(t)
        while n >= rows_per_shard:
            whole = pa.concat_tables(buf)
            yield whole.slice(0, rows_per_shard)
            rest = whole.slice(rows_per_shard)
            buf, n = ([rest] if len(rest) else []), len(rest)
    if n:
        yield pa.concat_tables(buf)


def write_split(out: Path, split: str, tables: Iterable[pa.Table], n_records: int, rows_per_shard: int) -> list[dict]:
    """Parquet and WebDataset shards of one split; returns their manifest entries (with SHA-256)."""
    n = shard_count(n_records, rows_per_shard)
    entries = []
    for k, shard in enumerate(iter_shards(tables, rows_per_shard)):
        for path, writer, fmt in ((out / parquet_shard_name(split, k, n), write_parquet, "parquet"),
                                  (out / wds_shard_name(split, k), write_wds, "webdataset")):
            writer(shard, path)
            entries.append({"path": str(path.relative_to(out)), "format": fmt, "split": split, "records": len(shard),
                            "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return entries


def card_data_files(shards: list[dict], splits: Iterable[str]) -> list[dict]:
    """The card's `data_files`, naming each split's Parquet shards exactly rather than by a glob: `load_dataset`
    then stops at a missing shard instead of quietly loading fewer records."""
    out = []
    for split in splits:
        paths = sorted(s["path"] for s in shards if s["format"] == "parquet" and s["split"] == split)
        if paths:
            out.append({"split": split, "path": paths})
    return out


def write_dataset_card(out_dir: Path, shards: list[dict] | None, splits: Iterable[str], features, template: str,
                       card_data: dict, extra_configs: list[dict] | None = None, **context) -> None:
    """The one card writer, for generated, subset and imported folders: README.md whose YAML names each split's
    shards (`configs`; by glob where `shards` is None) and every config's features (so `load_dataset` types
    image/mask as Array2D), then the template's prose rendered with `context`; written atomically."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    splits = list(splits)
    files = (card_data_files(shards, splits) if shards is not None
             else [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits])
    configs = [{"config_name": "default", "default": True, "data_files": files}, *(extra_configs or [])]
    data = DatasetCardData(**card_data, configs=configs)
    DatasetInfosDict({c["config_name"]: DatasetInfo(features=features) for c in configs}).to_dataset_card_data(data)
    card = DatasetCard.from_template(data, template_path=str(CARDS_DIR / template), **context)
    with atomic_path(Path(out_dir) / "README.md") as tmp:
        tmp.write_text(str(card))


def write_card(out_dir: Path, cfg: GenerationConfig, split_counts: dict, extra_configs: list[dict] | None = None,
               summary: dict | None = None, template: str = "dataset_card.md", subset_queries: dict | None = None,
               parent: dict | None = None, shards: list[dict] | None = None) -> None:
    """The card of a generated (or subset) folder, through `write_dataset_card`."""
    present = [s for s in SPLITS if split_counts.get(s, 0) > 0]
    write_dataset_card(
        out_dir, shards, present, hf_features(cfg.imaging.image_size_px), template,
        card_data={"license": "cc-by-4.0", "task_categories": ["image-segmentation"],
                   "tags": ["electron-microscopy", "hrtem", "nanoparticles", "synthetic", "multislice"],
                   "pretty_name": f"{cfg.name}: simulated HRTEM of nanoparticles"},
        extra_configs=extra_configs, cfg=cfg, config_yaml=_config_yaml(cfg), split_counts=split_counts,
        columns=METADATA_COLUMNS, summary=summary or {}, subset_queries=subset_queries or {}, parent=parent)


def _config_yaml(cfg: GenerationConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


MANIFEST_HASH_KEY = "manifest_sha256"


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical JSON without its own hash: an edited manifest no longer matches."""
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != MANIFEST_HASH_KEY}))
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """manifest.json with its own hash last (`temsynth info --verify` checks it), written atomically."""
    manifest[MANIFEST_HASH_KEY] = manifest_digest(manifest)
    with atomic_path(out_dir / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False))


def file_entries(out_dir: Path, paths: Iterable[Path]) -> list[dict]:
    """Manifest entries (path relative to the folder, bytes, SHA-256) of files that are not shards."""
    out_dir = Path(out_dir)
    return [{"path": p.relative_to(out_dir).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(paths)]


def shard_count(n_records: int, rows_per_shard: int) -> int:
    return max(1, math.ceil(n_records / rows_per_shard)) if n_records else 0
