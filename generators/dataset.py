"""A dataset folder, opened once: `DatasetFolder.open(path)` reads and checks its manifest one time and holds
what every reader takes from it (the typed manifest, the generation config or the import record or the parent
link, splits, shards, the record schema, the pixel size, the content fingerprint).

Query, subsets, trace, regenerate, info, training data and evaluate take this object (or open one), so a command
parses a folder's manifest once. The integrity check lives here too: a reader refuses a damaged folder with one
line (`intact`), and `temsynth info --verify` lists every problem with SHA-256s (`problems(full=True)`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from functools import cached_property
from pathlib import Path

import pyarrow as pa

from .config import ConfigError, GenerationConfig, from_dict
from .files import sha256_file
from .folder import ImportRecord, Manifest, ParentLink, RunError, ShardEntry, generation_config, read_manifest
from .writers import MANIFEST_HASH_KEY, manifest_digest

SHARD_GLOBS = {"parquet": ("data", "*.parquet"), "webdataset": ("wds", "*.tar")}


class DatasetFolder:
    """One dataset folder (generated, subset or imported), its manifest read and validated once."""

    def __init__(self, path: str | Path, manifest: Manifest, raw: dict):
        self.path = Path(path)
        self.manifest = manifest
        self.raw = raw  # the manifest as written: its pass-through keys (summary, timing, versions, subsets)

    @classmethod
    def open(cls, path: str | Path, intact: bool = True) -> DatasetFolder:
        """The folder at `path`; `intact` (every reader): refuse a damaged one in one line (`require_intact`)."""
        folder = cls(path, *read_manifest(path))
        return folder.require_intact() if intact else folder

    # ------------------------------------------------------------ what the manifest says
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def experimental(self) -> bool:
        return self.manifest.kind == "experimental"

    @property
    def splits(self) -> dict[str, int]:
        return self.manifest.splits

    @property
    def shards(self) -> list[ShardEntry]:
        return self.manifest.shards

    @property
    def import_record(self) -> ImportRecord | None:
        return self.manifest.import_record

    @property
    def parent(self) -> ParentLink | None:
        return self.manifest.parent

    @cached_property
    def config(self) -> GenerationConfig:
        """A generated or subset folder's generation config, validated once; one line for an imported folder."""
        return generation_config(self.path, self.manifest)

    @property
    def pixel_size_A(self) -> float:
        """The pixel size of every record: the generation config's, or the grid an import resampled to."""
        if self.experimental:
            return float(self.import_record.target_pixel_size_A)
        return float(self.config.imaging.pixel_size_A)

    @cached_property
    def fingerprint(self) -> str:
        """Content fingerprint: sha256 over the manifest's shard checksums."""
        shards = sorted((s.path, s.sha256) for s in self.shards)
        return hashlib.sha256(json.dumps(shards).encode()).hexdigest()

    def files(self, fmt: str | None = None, split: str | None = None) -> list[str]:
        """The manifest's shard paths of `fmt` (and `split`), sorted: readers read what it lists, never a glob."""
        return sorted(str(self.path / s.path) for s in self.shards
                      if (fmt is None or s.format == fmt) and (split is None or s.split == split))

    @cached_property
    def schema(self) -> pa.Schema:
        """The folder's own record schema, from its first Parquet shard's footer (as `datasets`' Parquet builder
        reads `pq.read_schema`): a query on an imported folder is checked against its columns."""
        import pyarrow.parquet as pq

        with self.reading():
            return pq.read_schema(self.files("parquet")[0])

    # ------------------------------------------------------------ integrity
    def problems(self, full: bool = False) -> list[str]:
        """What is wrong with the folder, one short phrase per problem (empty: intact). `full`: every SHA-256."""
        out, m = self.path, self.raw
        problems = []
        if MANIFEST_HASH_KEY in m and m[MANIFEST_HASH_KEY] != manifest_digest(m):
            problems.append("manifest.json was edited after it was written (its content no longer matches its "
                            f"{MANIFEST_HASH_KEY})")
        if not self.experimental:
            try:
                # validated here, not through `config`: a broken config is a problem to list, not to raise
                if from_dict(m["config"]).sha256() != m["config_sha256"]:
                    problems.append("manifest.json: the recorded config does not match its config_sha256 (edited)")
            except ConfigError:
                problems.append("manifest.json: the recorded config no longer validates")
        splits = dict(self.splits)
        if self.manifest.n_records != sum(splits.values()):
            problems.append(f"manifest.json: n_records {self.manifest.n_records} is not the sum of its splits {splits}")
        for fmt in SHARD_GLOBS:
            per_split = Counter()
            for s in self.shards:
                if s.format == fmt:
                    per_split[s.split] += s.records
            for split, n in splits.items():
                if n and per_split.get(split, 0) != n:
                    problems.append(f"manifest.json: {fmt} shards of {split} list {per_split.get(split, 0)} records, "
                                    f"the split {n}")
        listed = set()
        for s in self.shards:
            path = out / s.path
            listed.add(path.resolve())
            if not path.is_file():
                problems.append(f"shard {s.path} is missing")
            elif path.stat().st_size != s.bytes:
                problems.append(f"shard {s.path} has {path.stat().st_size} bytes, the manifest {s.bytes}")
            elif s.format == "parquet" and (rows := _parquet_rows(path)) != s.records:
                problems.append(f"shard {s.path} holds {rows} records, the manifest {s.records}")
            elif full and sha256_file(path) != s.sha256:
                problems.append(f"shard {s.path}: SHA-256 differs from the manifest (altered bytes)")
        for fmt, (folder, pattern) in SHARD_GLOBS.items():
            extra = sorted(p.name for p in (out / folder).glob(pattern) if p.resolve() not in listed)
            if extra:
                problems.append(f"{folder}/ holds shard(s) the manifest does not list: {', '.join(extra[:5])}")
        for f in m.get("structures") or []:
            path = out / f["path"]
            if not path.is_file():
                problems.append(f"structure file {f['path']} is missing")
            elif path.stat().st_size != f["bytes"] or (full and sha256_file(path) != f["sha256"]):
                problems.append(f"structure file {f['path']} differs from the manifest")
        return problems

    def require_intact(self) -> DatasetFolder:
        """Refuse a damaged folder with one line naming what is wrong (the manifest must be whole and unedited,
        every shard it lists present with its size and record count, no other shard beside them)."""
        problems = self.problems()
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise RunError(f"{self.path} is damaged: {problems[0]}{more}; see `temsynth info {self.path} --verify`, "
                           "then restore the files or rebuild the folder")
        return self

    @contextlib.contextmanager
    def reading(self):
        """Turn an unreadable shard met while reading (a corrupt row group) into one line naming the folder."""
        with reading(self.path):
            yield


def as_folder(dataset: DatasetFolder | str | Path) -> DatasetFolder:
    """An opened folder as it is; a path opened (and checked) here: what every reader takes."""
    return dataset if isinstance(dataset, DatasetFolder) else DatasetFolder.open(dataset)


def _parquet_rows(path: Path) -> int | str:
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # noqa: BLE001 - any unreadable footer is reported as such
        return "an unreadable footer:"


@contextlib.contextmanager
def reading(dataset_dir: str | Path):
    """Turn an unreadable shard met while reading (a corrupt row group) into one line naming the folder."""
    try:
        yield
    except (pa.ArrowException, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RunError(f"{dataset_dir}: a shard cannot be read ({first[:200]}); run `temsynth info {dataset_dir} "
                       "--verify` to find it, then restore the files or rebuild the folder") from None
