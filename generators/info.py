"""Summary and integrity of a dataset folder: `temsynth info`.

Every reader of a folder (training, query, subsets, trace, regenerate, evaluate) opens it as a
`dataset.DatasetFolder`, which refuses a damaged one: the manifest must be whole and unedited, and every shard it
lists present with its size and record count, and no other shard beside them. `check(..., full=True)`
(`temsynth info --verify`) adds every SHA-256.
"""
from __future__ import annotations

from pathlib import Path

from .dataset import SHARD_GLOBS, DatasetFolder, as_folder, reading  # noqa: F401  (re-exported: older import paths)


def check(dataset_dir: str | Path | DatasetFolder, full: bool = False) -> list[str]:
    """What is wrong with a folder, one short phrase per problem (empty: intact). `full`: also every SHA-256."""
    folder = dataset_dir if isinstance(dataset_dir, DatasetFolder) else DatasetFolder.open(dataset_dir, intact=False)
    return folder.problems(full)


def require_intact(dataset_dir: str | Path | DatasetFolder, fmt: str | None = None,
                   split: str | None = None) -> list[str]:
    """Refuse a damaged folder with one line naming what is wrong; returns the manifest's shard paths of `fmt`
    (and `split`), sorted."""
    return as_folder(dataset_dir).files(fmt, split)


def verify(dataset_dir: str | Path) -> list[str]:
    """Every problem `check` finds with SHA-256s (shards, structure files, the manifest itself)."""
    return check(dataset_dir, full=True)


def report(dataset_dir: str | Path, verify_checksums: bool = False) -> tuple[str, bool]:
    """(summary text, intact?): the light check always, SHA-256s with `verify_checksums`."""
    folder = DatasetFolder.open(dataset_dir, intact=False)
    m = folder.raw
    try:
        lines = _experimental(m, dataset_dir) if folder.experimental else _generated(m, dataset_dir)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        lines = [f"dataset   {Path(dataset_dir).resolve()}  (manifest.json lacks {err} for a summary)"]
    problems = folder.problems(full=verify_checksums)
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
