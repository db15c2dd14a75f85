"""The dataset folder as both sides read it: its manifest, checked, and its record ids, made and parsed here only.

`generators/` writes folders and `training/` reads them; both go through this module for what a folder is, so the
manifest's required keys and the record-id format are spelled once. It imports only the config (to rebuild a
folder's recorded config) and the error base.
"""
from __future__ import annotations

import json
from pathlib import Path

from temsynth.errors import TemsynthError

from .config import ConfigError, GenerationConfig, from_dict


class RunError(TemsynthError, RuntimeError):
    """A dataset folder (or a run into one) that cannot be used; the message names the folder and the fix."""



# ---------------------------------------------------------------- manifest
MANIFEST_KEYS = {"name": str, "n_records": int, "splits": dict, "shards": list}
SHARD_KEYS = {"path": str, "format": str, "split": str, "records": int, "bytes": int, "sha256": str}


def new_manifest(name: str, generator_version: str | None, versions: dict, splits: dict, shards: list[dict],
                 **fields) -> dict:
    """A manifest's common part, for generated, subset and imported folders alike (the keys `load_manifest`
    checks are all set here), then each kind's own `fields`."""
    from datetime import datetime, timezone

    return {"name": name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "generator": "temsynth", "generator_version": generator_version, "versions": versions,
            "n_records": int(sum(splits.values())), "splits": splits, "shards": shards, **fields}


def load_manifest(dataset_dir: str | Path) -> dict:
    """The folder's manifest.json, checked for the keys every reader relies on; one-line RunError otherwise."""
    path = Path(dataset_dir) / "manifest.json"
    if not Path(dataset_dir).is_dir():
        raise RunError(f"{dataset_dir}: no such dataset folder")
    if not path.is_file():
        raise RunError(f"{dataset_dir} has no manifest.json: not a finished temsynth dataset folder")
    fix = "restore it from a copy or rebuild the folder"
    try:
        m = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        raise RunError(f"{path} is not valid JSON ({str(err).splitlines()[0]}); {fix}") from None
    if not isinstance(m, dict):
        raise RunError(f"{path} is not a JSON object; {fix}")
    need = dict(MANIFEST_KEYS, **({} if m.get("kind") == "experimental" else {"config": dict, "config_sha256": str}))
    bad = [k for k, t in need.items() if not isinstance(m.get(k), t) or isinstance(m.get(k), bool)]
    if bad:
        raise RunError(f"{path} is incomplete: missing or mistyped {', '.join(bad)}; {fix}")
    for i, s in enumerate(m["shards"]):
        if not isinstance(s, dict) or any(not isinstance(s.get(k), t) for k, t in SHARD_KEYS.items()):
            raise RunError(f"{path}: shard entry {i} lacks one of {', '.join(SHARD_KEYS)}; {fix}")
    return m


def config_of(dataset_dir: str | Path) -> GenerationConfig:
    m = load_manifest(dataset_dir)
    if m.get("kind") == "experimental":
        raise RunError(f"{dataset_dir} holds imported micrographs (kind: experimental), not a generated dataset: it "
                       "records no generation config (named subsets and subset folders are for generated datasets; "
                       "select records of it with `temsynth query` or a training config's `query:`)")
    try:
        return from_dict(m["config"], f"{dataset_dir}/manifest.json")
    except ConfigError as err:
        raise RunError(f"{dataset_dir}/manifest.json records a config that does not validate "
                       f"({' '.join(str(err).split())}); restore the manifest or rebuild the folder") from None


# ---------------------------------------------------------------- record ids
def structure_id(index: int) -> str:
    return f"s{index:06d}"


def record_id(structure_index: int, condition_index: int) -> str:
    """The id of a simulated record: `s000012-c003` (structure 12, imaging condition 3)."""
    return f"{structure_id(structure_index)}-c{condition_index:03d}"


def tile_record_id(source_stem: str, tile_index: int) -> str:
    """The id of an imported tile: `{source stem}-t0004`; the stem holds only [A-Za-z0-9_-] (WebDataset splits a
    key at its first dot)."""
    return f"{source_stem}-t{tile_index:04d}"


def parse_record_id(record_id: str) -> tuple[int, int]:
    try:
        s, c = record_id.split("-c")
        return int(s.lstrip("s")), int(c)
    except ValueError:
        raise RunError(f"record id {record_id!r} is not of the form s000012-c003") from None
