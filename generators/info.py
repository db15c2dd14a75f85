"""Summary and integrity of a dataset folder.

Every reader of a folder (training, query, subsets, trace, regenerate, evaluate) calls `require_intact`: the
manifest must be whole and unedited, and every shard it lists present with its size and record count, and no
other shard beside them. `check(..., full=True)` (`temsynth info --verify`) adds every SHA-256.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path

from .config import ConfigError, from_dict
from .folder import RunError, load_manifest
from .files import sha256_file
from .writers import MANIFEST_HASH_KEY, manifest_digest

SHARD_GLOBS = {"parquet": ("data", "*.parquet"), "webdataset": ("wds", "*.tar")}


def check(dataset_dir: str | Path, full: bool = False) -> list[str]:
    """What is wrong with a folder, one short phrase per problem (empty: intact). `full`: also every SHA-256."""
    out = Path(dataset_dir)
    m = load_manifest(out)
    problems = []
    if MANIFEST_HASH_KEY in m and m[MANIFEST_HASH_KEY] != manifest_digest(m):
        problems.append("manifest.json was edited after it was written (its content no longer matches its "
                        f"{MANIFEST_HASH_KEY})")
    if m.get("kind") != "experimental":
        try:
            if from_dict(m["config"]).sha256() != m["config_sha256"]:
                problems.append("manifest.json: the recorded config does not match its config_sha256 (edited)")
        except ConfigError:
            problems.append("manifest.json: the recorded config no longer validates")
    splits = {k: v for k, v in m["splits"].items()}
    if m["n_records"] != sum(v for v in splits.values() if isinstance(v, int)):
        problems.append(f"manifest.json: n_records {m['n_records']} is not the sum of its splits {splits}")
    for fmt in SHARD_GLOBS:
        per_split = Counter()
        for s in m["shards"]:
            if s["format"] == fmt:
                per_split[s["split"]] += s["records"]
        for split, n in splits.items():
            if n and per_split.get(split, 0) != n:
                problems.append(f"manifest.json: {fmt} shards of {split} list {per_split.get(split, 0)} records, "
                                f"the split {n}")
    listed = set()
    for s in m["shards"]:
        path = out / s["path"]
        listed.add(path.resolve())
        if not path.is_file():
            problems.append(f"shard {s['path']} is missing")
        elif path.stat().st_size != s["bytes"]:
            problems.append(f"shard {s['path']} has {path.stat().st_size} bytes, the manifest {s['bytes']}")
        elif s["format"] == "parquet" and (rows := _parquet_rows(path)) != s["records"]:
            problems.append(f"shard {s['path']} holds {rows} records, the manifest {s['records']}")
        elif full and sha256_file(path) != s["sha256"]:
            problems.append(f"shard {s['path']}: SHA-256 differs from the manifest (altered bytes)")
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


def _parquet_rows(path: Path) -> int | str:
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # noqa: BLE001 - any unreadable footer is reported as such
        return "an unreadable footer:"


def require_intact(dataset_dir: str | Path, fmt: str | None = None, split: str | None = None) -> list[str]:
    """Refuse a damaged folder with one line naming what is wrong; returns the manifest's shard paths of `fmt`
    (and `split`), sorted: readers read what the manifest lists, never a glob."""
    problems = check(dataset_dir)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise RunError(f"{dataset_dir} is damaged: {problems[0]}{more}; see `temsynth info {dataset_dir} --verify`, "
                       "then restore the files or rebuild the folder")
    m = load_manifest(dataset_dir)
    return sorted(str(Path(dataset_dir) / s["path"]) for s in m["shards"]
                  if (fmt is None or s["format"] == fmt) and (split is None or s["split"] == split))


@contextlib.contextmanager
def reading(dataset_dir: str | Path):
    """Turn an unreadable shard met while reading (a corrupt row group) into one line naming the folder."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RunError(f"{dataset_dir}: a shard cannot be read ({first[:200]}); run `temsynth info {dataset_dir} "
                       "--verify` to find it, then restore the files or rebuild the folder") from None


def verify(dataset_dir: str | Path) -> list[str]:
    """Every problem `check` finds with SHA-256s (shards, structure files, the manifest itself)."""
    return check(dataset_dir, full=True)


def report(dataset_dir: str | Path, verify_checksums: bool = False) -> tuple[str, bool]:
    """(summary text, intact?): the light check always, SHA-256s with `verify_checksums`."""
    m = load_manifest(dataset_dir)
    try:
        lines = _experimental(m, dataset_dir) if m.get("kind") == "experimental" else _generated(m, dataset_dir)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        lines = [f"dataset   {Path(dataset_dir).resolve()}  (manifest.json lacks {err} for a summary)"]
    problems = check(dataset_dir, full=verify_checksums)
    what = ("checksums OK (shards, structure files, manifest)" if verify_checksums
            else "sizes and record counts OK (SHA-256s: --verify)")
    if problems:
        lines.append(f"DAMAGED: {len(problems)} problem(s):")
        lines += [f"  - {p}" for p in problems]
    else:
        lines.append(what)
    lines.append(f'load with: datasets.load_dataset("{dataset_dir}")')
    return "\n".join(lines), not problems


def describe(dataset_dir: str | Path, verify_checksums: bool = False, **kw) -> str:
    return report(dataset_dir, verify_checksums or kw.get("verify", False))[0]


def _experimental(m: dict, dataset_dir) -> list[str]:
    a = m.get("import") or {}
    return [
        f"dataset   {Path(dataset_dir).resolve()}  (experimental, imported from {a['images_dir']})",
        f"records   {m['n_records']} tiles of {a['tile_px']}² px at {a['target_pixel_size_A']} Å/px from "
        f"{m['n_sources']} micrographs (material {a['material']})",
        "splits    " + ", ".join(f"{k} {v}" for k, v in m["splits"].items()) + "  (by source micrograph)",
    ]


def _generated(m: dict, dataset_dir) -> list[str]:
    cfg = m["config"]
    im = cfg.get("imaging") or {}
    lines = [
        f"dataset   {Path(dataset_dir).resolve()}",
        f"name      {m['name']}  (config sha256 {m['config_sha256'][:12]}…, temsynth {m['generator_version']}, "
        f"abtem {m['versions'].get('abtem')}, czone {m['versions'].get('czone')})",
        f"records   {m['n_records']} from {m['n_structures']} structures × {cfg['conditions_per_structure']} "
        f"imaging conditions",
        "splits    " + ", ".join(f"{k} {v}" for k, v in m["splits"].items()),
        f"images    {im['image_size_px']}² px at {im['pixel_size_A']} Å/px, float32 electron counts; masks uint8",
        f"shards    {sum(s['format'] == 'parquet' for s in m['shards'])} Parquet in data/, "
        f"{sum(s['format'] == 'webdataset' for s in m['shards'])} WebDataset in wds/",
    ]
    for k, v in m.get("summary", {}).items():
        lines.append(f"{k:<22}{v}")
    t = m.get("timing") or {}
    if isinstance(t.get("seconds"), (int, float)):
        per = t.get("mean_structure_seconds")
        # A run resumed while the shards were assembled simulated nothing itself: no per-structure time.
        lines.append(f"time      {t['seconds']:.1f} s for {t.get('structures_timed', 0)} structures this run" +
                     (f" ({per:.2f} s per structure per worker)" if isinstance(per, (int, float)) else ""))
    return lines
