"""Generation run: one work unit per structure on Dask, resumable; then shards, card and manifest.

Layout of an output folder while running: `_work/parts/{structure_id}.parquet` holds each finished structure's
records (written atomically), so a killed run loses only the structures in flight and the same command resumes.
Once every part exists the shards are assembled deterministically, the card and manifest written, and `_work`
removed.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .config import STAGE_SPLITS, ConfigError, GenerationConfig, from_dict, rng_for
from .detector import sample_detector
from .imaging import Grid, ImageFormer, bin_mean, crop, grid_for, noise_rng, sample_conditions
from .masks import instance_labels, mask_from_coverage, phase_coverage
from .micrographs import resample
from .records import to_table
from .structures import particle_columns
from .simulate import make_simulator, wavelength_A
from .structures import build_structure, structure_id
from .writers import SPLITS, versions, write_card, write_manifest, write_parquet, write_split


# ---------------------------------------------------------------- splits
def assign_splits(cfg: GenerationConfig) -> dict[int, str]:
    """Structure index -> split, from a seeded permutation: a structure never lands in two splits."""
    n = cfg.n_structures
    order = rng_for(cfg.seed, STAGE_SPLITS).permutation(n)
    n_val = int(round(cfg.splits.validation * n))
    n_test = int(round(cfg.splits.test * n))
    n_train = n - n_val - n_test
    out = {}
    for rank, idx in enumerate(order):
        out[int(idx)] = "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
    return out


# ---------------------------------------------------------------- one structure
_CONTEXT: dict = {}


def _context(cfg: GenerationConfig, grid: Grid):
    """Per-process simulator and image former per sampling grid, and the split assignment per config."""
    key = (cfg.sha256(), grid.sim_gpts, grid.bin_factor or 1)
    if key not in _CONTEXT:
        if len(_CONTEXT) > 16:
            _CONTEXT.clear()
        sim = make_simulator(cfg.simulation, grid.sim_gpts, cfg.structure.thermal_sigma_A)
        former = ImageFormer(cfg.imaging, grid.sim_gpts, grid.sim_sampling_A,
                             wavelength_A(cfg.simulation.energy_keV), grid.bin_factor or 1)
        _CONTEXT[key] = (sim, former)
    split_key = ("splits", cfg.sha256())
    if split_key not in _CONTEXT:
        _CONTEXT[split_key] = assign_splits(cfg)
    return (*_CONTEXT[key], _CONTEXT[split_key])


def record_id(structure_index: int, condition_index: int) -> str:
    return f"{structure_id(structure_index)}-c{condition_index:03d}"


def simulate_structure(cfg: GenerationConfig, index: int, cache_dir: Path | None = None):
    """Structure -> exit waves -> (images, masks, instance masks, per-record metadata, structure).
    A pure function of (cfg, index)."""
    from importlib.metadata import version

    im = cfg.imaging
    grid = grid_for(cfg, index)
    sim, former, splits = _context(cfg, grid)
    p = im.pixel_size_A
    s = build_structure(cfg, index, cache_dir)
    waves = sim.exit_waves(s, cfg.seed)
    camera = sample_detector(im.detector, cfg.seed, index)
    # The camera's pixels are resampled onto the stored grid exactly as the importer resamples micrographs.
    resampled = grid.detector_px != im.field_px

    # Sample j of the multislice grid sits at j * sampling; stored pixel i spans [i p, (i + 1) p) - sampling / 2.
    half_sample = grid.sim_sampling_A / 2
    to_px = lambda x_A: (x_A + half_sample) / p - 0.5
    centres = [(to_px(pt.center_A[0]), to_px(pt.center_A[1])) for pt in s.particles]
    radii_px = [pt.bounding_radius_A / p for pt in s.particles]
    conditions = sample_conditions(cfg, index, centres, radii_px)
    intensity = former.intensity(waves.full, conditions)
    if grid.bin_factor is None:  # camera pixels that are no whole number of samples integrate the area they cover
        intensity = np.stack([resample(a, grid.sim_sampling_A, grid.detector_pixel_size_A) for a in intensity])
    coverage = phase_coverage(waves.particle, cfg.mask.phase_threshold_rad)
    if grid.bin_factor and not resampled:
        coverage = bin_mean(coverage, grid.bin_factor)
    else:
        coverage = resample(coverage, grid.sim_sampling_A, p)
    mask_field = mask_from_coverage(coverage, cfg.mask.closing_radius_A / p)
    labels_field = instance_labels(mask_field, s.particle_positions[:, :2], s.particle_index, p, s.cell_xy_A,
                                   half_sample)

    base = {
        "structure_id": s.structure_id, "structure_index": index, "split": splits[index],
        "n_particles": s.n_particles, "n_particles_requested": s.n_particles_requested,
        **{name: [getattr(pt, attr) for pt in s.particles] for name, attr, _ in particle_columns()},
        "substrate_thickness_A": s.substrate.thickness_A, "substrate_bank_index": s.substrate.bank_index,
        "n_atoms": s.n_atoms, "energy_keV": cfg.simulation.energy_keV, "sim_sampling_A": grid.sim_sampling_A,
        "slice_thickness_A": cfg.simulation.slice_thickness_A,
        "n_frozen_phonons": cfg.simulation.n_frozen_phonons, "pixel_size_A": p,
        "detector_pixel_size_A": grid.detector_pixel_size_A, "image_size_px": im.image_size_px,
        **camera.as_dict(),
        "mask_phase_threshold_rad": cfg.mask.phase_threshold_rad, "mask_closing_radius_A": cfg.mask.closing_radius_A,
        "seed": cfg.seed, "simulator": sim.name, "simulator_version": sim.version,
        "generator_version": __version__, "czone_version": version("czone"), "config_sha256": cfg.sha256(),
    }
    size = im.image_size_px
    images, masks, labels, metas = [], [], [], []
    for c, inten in zip(conditions, intensity):
        counts = camera.record(inten, c.dose_e_per_A2, grid.detector_pixel_size_A, noise_rng(cfg, index, c.condition_index))
        if resampled:
            counts = resample(counts, grid.detector_pixel_size_A, p)
        img = crop(counts, c.crop_offset_px, size)
        m = crop(mask_field, c.crop_offset_px, size)
        lab = crop(labels_field, c.crop_offset_px, size)
        ox, oy = c.crop_offset_px
        centre_px = [[x - ox, y - oy] for x, y in centres]
        images.append(img)
        masks.append(m)
        labels.append(lab)
        metas.append({**base, **c.as_dict(), "record_id": record_id(index, c.condition_index),
                      "particle_center_px": centre_px,
                      # the bounding circle crosses a pixel edge of the border
                      "particle_cut_by_border": [bool(min(x, y) - r < -0.5 or max(x, y) + r > size - 0.5)
                                                 for (x, y), r in zip(centre_px, radii_px)],
                      "particle_area_px": [int(np.count_nonzero(lab == k + 1)) for k in range(s.n_particles)],
                      "mask_area_px": int(m.sum())})
    return np.stack(images), np.stack(masks), np.stack(labels), metas, s


def process_structure(cfg_json: str, index: int, out_dir: str) -> dict:
    """Dask work unit: simulate one structure, write its structure file and its records part."""
    cfg = from_dict(json.loads(cfg_json))
    out = Path(out_dir)
    t0 = time.perf_counter()
    images, masks, labels, metas, s = simulate_structure(cfg, index, out / "_work" / "substrates")
    s.write_extxyz(out / "structures" / f"{s.structure_id}.extxyz")
    write_parquet(to_table(images, masks, metas, cfg.imaging.image_size_px, labels), _part_path(out, index))
    return {"index": index, "records": len(metas), "seconds": time.perf_counter() - t0}


def _part_path(out: Path, index: int) -> Path:
    return out / "_work" / "parts" / f"{structure_id(index)}.parquet"


# ---------------------------------------------------------------- the run
class RunError(RuntimeError):
    pass


def _check_folder(cfg: GenerationConfig, out: Path) -> str:
    """'done' if a finished dataset of this config is there, 'resume'/'new' otherwise; refuse a foreign folder."""
    manifest = out / "manifest.json"
    if manifest.exists():
        sha = json.loads(manifest.read_text()).get("config_sha256")
        if sha == cfg.sha256():
            return "done"
        raise RunError(f"{out} already holds a dataset built from another config (sha256 {sha[:12]}…); "
                       "use another --out or remove that folder")
    marker = out / "_work" / "config.json"
    if marker.exists():
        sha = json.loads(marker.read_text())["config_sha256"]
        if sha != cfg.sha256():
            raise RunError(f"{out} holds an unfinished run of another config (sha256 {sha[:12]}…); "
                           "re-run it with its own config, or remove the folder")
        return "resume"
    if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise RunError(f"{out} exists and is not a temsynth output folder; choose an empty or new --out")
    return "new"


def generate(cfg: GenerationConfig, out_dir: str | Path, workers: int = 2, scheduler: str | None = None,
             progress: bool = True, log=print) -> dict:
    out = Path(out_dir)
    state = _check_folder(cfg, out)
    if state == "done":
        log(f"{out}: complete ({cfg.n_structures} structures); nothing to do")
        return json.loads((out / "manifest.json").read_text())
    (out / "_work" / "parts").mkdir(parents=True, exist_ok=True)
    (out / "_work" / "config.json").write_text(json.dumps({"config_sha256": cfg.sha256(),
                                                           "config": cfg.model_dump(mode="json")}))
    for stale in out.rglob(".*.tmp"):
        stale.unlink()
    pending = [i for i in range(cfg.n_structures) if not _part_path(out, i).exists()]
    done = cfg.n_structures - len(pending)
    if state == "resume":
        log(f"{out}: resuming, {done} of {cfg.n_structures} structures already done")
    t0 = time.perf_counter()
    timings = _run_units(cfg, out, pending, workers, scheduler, progress, done)
    elapsed = time.perf_counter() - t0
    manifest = finalize(cfg, out, timings, elapsed)
    log(f"wrote {manifest['n_records']} records from {manifest['n_structures']} structures to {out} "
        f"in {elapsed:.1f} s")
    return manifest


def _run_units(cfg, out, pending, workers, scheduler, progress, done) -> list[dict]:
    from tqdm.auto import tqdm

    cfg_json = cfg.model_dump_json()
    bar = tqdm(total=cfg.n_structures, initial=done, unit="structure", disable=not progress, file=sys.stderr,
               desc="structures")
    images = done * cfg.conditions_per_structure
    results = []

    def tick(r):
        nonlocal images
        results.append(r)
        images += r["records"]
        bar.update(1)
        bar.set_postfix(images=images)

    try:
        if not pending:
            return results
        if workers == 0 and scheduler is None:
            for i in pending:  # in-process: debugging, tests, profiling
                tick(process_structure(cfg_json, i, str(out)))
            return results
        from dask.distributed import Client, LocalCluster, as_completed

        cluster = None
        if scheduler:
            client = Client(scheduler)
        else:
            cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=40)
            client = Client(cluster)
        try:
            futures = [client.submit(process_structure, cfg_json, i, str(out.resolve()), pure=False,
                                     key=f"structure-{cfg.sha256()[:8]}-{i}") for i in pending]
            for fut in as_completed(futures):
                tick(fut.result())
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        return results
    finally:
        bar.close()


def finalize(cfg: GenerationConfig, out: Path, timings: list[dict] | None = None, elapsed: float | None = None) -> dict:
    """Assemble shards from the parts (deterministic order), then card, then manifest, then drop `_work`."""
    splits = assign_splits(cfg)
    missing = [i for i in range(cfg.n_structures) if not _part_path(out, i).exists()]
    if missing:
        raise RunError(f"cannot finalize {out}: {len(missing)} structures have no records yet; re-run generate")
    for old in list((out / "data").glob("*.parquet")) + list((out / "wds").glob("*.tar")):
        old.unlink()  # a re-finalize after a kill rewrites every shard
    shards, split_counts = [], {}
    for split in SPLITS:
        idx = sorted(i for i, s in splits.items() if s == split)
        n_records = len(idx) * cfg.conditions_per_structure
        split_counts[split] = n_records
        tables = (pq.read_table(_part_path(out, i)) for i in idx)
        shards += write_split(out, split, tables, n_records, cfg.records_per_shard)
    summary = _summary(out)
    write_card(out, cfg, split_counts, summary=summary)
    manifest = {
        "name": cfg.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "generator": "temsynth", "generator_version": __version__, "versions": versions(),
        "config_sha256": cfg.sha256(), "config": cfg.model_dump(mode="json"),
        "n_structures": cfg.n_structures, "n_records": sum(split_counts.values()), "splits": split_counts,
        "summary": summary, "shards": shards,
        "timing": {"seconds": elapsed, "structures_timed": len(timings or []),
                   "mean_structure_seconds": float(np.mean([t["seconds"] for t in timings])) if timings else None},
    }
    write_manifest(out, manifest)
    shutil.rmtree(out / "_work", ignore_errors=True)
    return manifest


def _summary(out: Path) -> dict:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    t = pads.dataset(out / "data", format="parquet").to_table(
        columns=["n_particles", "particle_defect_type", "particle_material", "particle_shape", "particle_radius_A",
                 "defocus_nm", "dose_e_per_A2", "detector_pixel_size_A", "mask_area_px"])
    counts = lambda col: dict(sorted((d["values"], d["counts"]) for d in pc.value_counts(col).to_pylist()))
    rng = lambda col: [round(pc.min(col).as_py(), 2), round(pc.max(col).as_py(), 2)] if pc.count(col).as_py() else None
    flat = lambda c: pc.list_flatten(t[c])
    return {"n_particles": counts(t["n_particles"]), "particle_defect_types": counts(flat("particle_defect_type")),
            "particle_materials": counts(flat("particle_material")), "particle_shapes": counts(flat("particle_shape")),
            "particle_radius_A": rng(flat("particle_radius_A")), "defocus_nm": rng(t["defocus_nm"]),
            "dose_e_per_A2": rng(t["dose_e_per_A2"]), "detector_pixel_size_A": rng(t["detector_pixel_size_A"]),
            "mask_area_px": rng(t["mask_area_px"])}


# ---------------------------------------------------------------- provenance helpers
def load_manifest(dataset_dir: str | Path) -> dict:
    path = Path(dataset_dir) / "manifest.json"
    if not path.exists():
        raise RunError(f"{dataset_dir} has no manifest.json: not a finished temsynth dataset folder")
    return json.loads(path.read_text())


def config_of(dataset_dir: str | Path) -> GenerationConfig:
    return from_dict(load_manifest(dataset_dir)["config"], f"{dataset_dir}/manifest.json")


def parse_record_id(record_id: str) -> tuple[int, int]:
    try:
        s, c = record_id.split("-c")
        return int(s.lstrip("s")), int(c)
    except ValueError:
        raise RunError(f"record id {record_id!r} is not of the form s000012-c003") from None


def read_record(dataset_dir: str | Path, record_id: str) -> dict:
    import pyarrow.dataset as pads

    ds = pads.dataset(Path(dataset_dir) / "data", format="parquet")
    t = ds.to_table(filter=pads.field("record_id") == record_id)
    if len(t) != 1:
        raise RunError(f"record {record_id!r} not found in {dataset_dir}")
    row = t.to_pylist()[0]
    size = row["image_size_px"]
    row["image"] = np.asarray(row["image"], np.float32).reshape(size, size)
    row["mask"] = np.asarray(row["mask"], np.uint8).reshape(size, size)
    if "instance_mask" in row:
        row["instance_mask"] = np.asarray(row["instance_mask"], np.uint8).reshape(size, size)
    return row


def regenerate_record(dataset_dir: str | Path, record_id: str) -> dict:
    """Rebuild one record from the manifest's config and compare it with the stored one."""
    cfg = config_of(dataset_dir)
    s_idx, c_idx = parse_record_id(record_id)
    stored = read_record(dataset_dir, record_id)
    images, masks, _, metas, _ = simulate_structure(cfg, s_idx)
    img, msk = images[c_idx], masks[c_idx]
    return {
        "record_id": record_id,
        "image_identical": bool(np.array_equal(img, stored["image"])),
        "mask_identical": bool(np.array_equal(msk, stored["mask"])),
        "image_max_abs_diff": float(np.max(np.abs(img - stored["image"]))),
        "mask_pixels_differing": int(np.sum(msk != stored["mask"])),
        "image": img, "mask": msk,
    }
