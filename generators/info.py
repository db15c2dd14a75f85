"""Human-readable summary of a dataset folder, with optional checksum verification."""
from __future__ import annotations

from pathlib import Path

from .run import load_manifest
from .writers import sha256_file


def verify(dataset_dir: str | Path) -> list[str]:
    """Shards whose bytes differ from the manifest's checksum (or are missing)."""
    out = Path(dataset_dir)
    bad = []
    for shard in load_manifest(out)["shards"]:
        path = out / shard["path"]
        if not path.exists() or sha256_file(path) != shard["sha256"]:
            bad.append(shard["path"])
    return bad


def describe(dataset_dir: str | Path, verify_checksums: bool = False, **kw) -> str:
    verify_checksums = verify_checksums or kw.get("verify", False)
    m = load_manifest(dataset_dir)
    lines = _experimental(m, dataset_dir) if m.get("kind") == "experimental" else _generated(m, dataset_dir)
    if verify_checksums:
        bad = verify(dataset_dir)
        lines.append("checksums OK" if not bad else f"checksums FAILED for {len(bad)} shard(s): {bad[:5]}")
    lines.append(f'load with: datasets.load_dataset("{dataset_dir}")')
    return "\n".join(lines)


def _experimental(m: dict, dataset_dir) -> list[str]:
    a = m["import"]
    return [
        f"dataset   {Path(dataset_dir).resolve()}  (experimental, imported from {a['images_dir']})",
        f"records   {m['n_records']} tiles of {a['tile_px']}² px at {a['target_pixel_size_A']} Å/px from "
        f"{m['n_sources']} micrographs (material {a['material']})",
        "splits    " + ", ".join(f"{k} {v}" for k, v in m["splits"].items()) + "  (by source micrograph)",
    ]


def _generated(m: dict, dataset_dir) -> list[str]:
    cfg = m["config"]
    im = cfg["imaging"]
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
    if t.get("seconds"):
        lines.append(f"time      {t['seconds']:.1f} s for {t['structures_timed']} structures this run "
                     f"({t['mean_structure_seconds']:.2f} s per structure per worker)")
    return lines
