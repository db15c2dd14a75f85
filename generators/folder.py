"""The dataset folder as both sides read it: its manifest, checked, and its record ids, made and parsed here only.

`generators/` writes folders and `training/` reads them; both go through this module for what a folder is, so the
manifest's required keys and the record-id format are spelled once. It imports only the config (to rebuild a
folder's recorded config) and the error base.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from .config import ConfigError, GenerationConfig, from_dict
from .errors import TemsynthError


class RunError(TemsynthError, RuntimeError):
    """A dataset folder (or a run into one) that cannot be used; the message names the folder and the fix."""



# ---------------------------------------------------------------- manifest
class ShardEntry(BaseModel):
    """One shard as the manifest lists it (and `info --verify` checks it)."""
    model_config = ConfigDict(extra="allow")
    path: StrictStr
    format: StrictStr
    split: StrictStr
    records: StrictInt
    bytes: StrictInt
    sha256: StrictStr


class ImportRecord(BaseModel):
    """How an experimental folder was imported (`temsynth import`'s arguments, resolved): what its card, its
    summary and its pixel size come from."""
    model_config = ConfigDict(extra="allow")
    images_dir: StrictStr
    target_pixel_size_A: float
    tile_px: StrictInt
    material: StrictStr | None = None


class ParentLink(BaseModel):
    """A subset folder's parent: where it was, which content (the parent's fingerprint) and the query."""
    model_config = ConfigDict(extra="allow")
    path: StrictStr
    fingerprint: StrictStr
    query: StrictStr


class Manifest(BaseModel):
    """manifest.json, typed: what every reader relies on. Generated and subset folders also carry their
    generation `config` (and its hash), a subset folder its `parent`; imported ones (`kind: experimental`) their
    sources and their `import` record. Other keys (summary, timing, files, provenance) pass through."""
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: StrictStr
    kind: StrictStr = "generated"
    n_records: StrictInt
    splits: dict[str, StrictInt]
    shards: list[ShardEntry]
    config: dict | None = None
    config_sha256: StrictStr | None = None
    parent: ParentLink | None = None
    import_record: ImportRecord | None = Field(default=None, alias="import")

    @model_validator(mode="after")
    def _generated_have_config(self):
        if self.kind != "experimental" and (self.config is None or self.config_sha256 is None):
            raise ValueError("config and config_sha256 are required in a generated folder's manifest")
        if self.kind == "experimental" and self.import_record is None:
            raise ValueError("import is required in an experimental folder's manifest")
        return self


MANIFEST_KEYS = tuple(f for f in Manifest.model_fields
                      if f not in ("kind", "config", "config_sha256", "parent", "import_record"))
SHARD_KEYS = tuple(ShardEntry.model_fields)


def new_manifest(name: str, generator_version: str | None, versions: dict, splits: dict, shards: list[dict],
                 **fields) -> dict:
    """A manifest for generated, subset and imported folders alike: the common part here, then each kind's own
    `fields`; validated against `Manifest` before it is written, as it is when read."""
    from datetime import datetime, timezone

    m = {"name": name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "generator": "temsynth", "generator_version": generator_version, "versions": versions,
         "n_records": int(sum(splits.values())), "splits": splits, "shards": shards, **fields}
    Manifest.model_validate(m)
    return m


def read_manifest_json(path: Path):
    """The one place a manifest.json is read and parsed (tests count its calls: one per command and folder)."""
    return json.loads(path.read_bytes())


def read_manifest(dataset_dir: str | Path) -> tuple[Manifest, dict]:
    """The folder's manifest.json, validated against `Manifest`: (typed, as written); one-line RunError otherwise."""
    path = Path(dataset_dir) / "manifest.json"
    if not Path(dataset_dir).is_dir():
        raise RunError(f"{dataset_dir}: no such dataset folder")
    if not path.is_file():
        raise RunError(f"{dataset_dir} has no manifest.json: not a finished temsynth dataset folder")
    fix = "restore it from a copy or rebuild the folder"
    try:
        m = read_manifest_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise RunError(f"{path} is not valid JSON ({str(err).splitlines()[0]}); {fix}") from None
    if not isinstance(m, dict):
        raise RunError(f"{path} is not a JSON object; {fix}")
    try:
        typed = Manifest.model_validate(m)
    except ValidationError as err:
        locs = [e["loc"] for e in err.errors()]
        shard = next((loc for loc in locs if loc[:1] == ("shards",) and len(loc) > 1), None)
        if shard is not None:
            raise RunError(f"{path}: shard entry {shard[1]} lacks one of {', '.join(SHARD_KEYS)}; {fix}") from None
        bad = sorted({str(loc[0]) for loc in locs if loc}) or ["config, config_sha256"]
        raise RunError(f"{path} is incomplete: missing or mistyped {', '.join(bad)}; {fix}") from None
    return typed, m


def load_manifest(dataset_dir: str | Path) -> dict:
    """The folder's manifest.json as written, validated (`read_manifest`); readers of a whole folder open it as a
    `dataset.DatasetFolder` instead."""
    return read_manifest(dataset_dir)[1]


def generation_config(dataset_dir: str | Path, manifest: Manifest) -> GenerationConfig:
    """A generated or subset folder's recorded config, validated; one line for an imported folder (it has none)."""
    if manifest.kind == "experimental":
        raise RunError(f"{dataset_dir} holds imported micrographs (kind: experimental), not a generated dataset: it "
                       "records no generation config (named subsets and subset folders are for generated datasets; "
                       "select records of it with `temsynth query` or a training config's `query:`)")
    try:
        return from_dict(manifest.config, f"{dataset_dir}/manifest.json")
    except ConfigError as err:
        raise RunError(f"{dataset_dir}/manifest.json records a config that does not validate "
                       f"({' '.join(str(err).split())}); restore the manifest or rebuild the folder") from None


def config_of(dataset_dir: str | Path) -> GenerationConfig:
    return generation_config(dataset_dir, read_manifest(dataset_dir)[0])


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
