"""Generation run: one work unit per structure on Dask, resumable; then shards, card and manifest.

Layout of an output folder while running: `_work/parts/{structure_id}.parquet` holds each finished structure's
records (written atomically), so a killed run loses only the structures in flight and the same command resumes.
Once every part exists the shards are assembled deterministically, the card and manifest written, and `_work`
removed.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq

from . import __version__
from .cluster import Task, cluster_config, run_tasks
from .config import (
    STAGE_SPLITS,
    ConfigError,
    GenerationConfig,
    estimate_dataset_bytes,
    estimate_worker_bytes,
    from_dict,
    rng_for,
)
from .dataset import DatasetFolder, as_folder
from .detector import sample_detector
from .fftw import WISDOM_DIR, ensure_wisdom
from .files import versions
from .folder import (  # noqa: F401  (re-exported)
    MANIFEST_KEYS,
    SHARD_KEYS,
    RunError,
    config_of,
    load_manifest,
    new_manifest,
    parse_record_id,
    record_id,
    structure_id,
)
from .imaging import Grid, ImageFormer, beam_energy_keV, bin_mean, crop, grid_for, noise_rng, sample_conditions
from .masks import instance_labels, mask_from_coverage, phase_coverage
from .micrographs.tiles import resample
from .records import to_table
from .simulate import SimulatorUnavailable, make_simulator, wavelength_A
from .structures import Structure, build_structure
from .writers import SPLITS, file_entries, write_card, write_manifest, write_parquet, write_split


# ---------------------------------------------------------------- splits
class SplitMap(Mapping):
    """Structure index -> split name, one byte per structure (a dict of 10 million entries takes a GiB)."""

    def __init__(self, codes: np.ndarray):
        self._codes = codes

    def __getitem__(self, index: int) -> str:
        if not 0 <= int(index) < len(self._codes):
            raise KeyError(index)
        return SPLITS[self._codes[int(index)]]

    def __iter__(self):
        return iter(range(len(self._codes)))

    def __len__(self) -> int:
        return len(self._codes)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self._codes == SPLITS.index(split))


def assign_splits(cfg: GenerationConfig) -> SplitMap:
    """Structure index -> split, from a seeded permutation: a structure never lands in two splits."""
    n = cfg.n_structures
    order = rng_for(cfg.seed, STAGE_SPLITS).permutation(n)
    n_val = int(round(cfg.splits.validation * n))
    n_test = int(round(cfg.splits.test * n))
    n_train = n - n_val - n_test
    rank_code = np.zeros(n, np.int8)
    rank_code[n_train:n_train + n_val] = SPLITS.index("validation")
    rank_code[n_train + n_val:] = SPLITS.index("test")
    codes = np.empty(n, np.int8)
    codes[order] = rank_code
    return SplitMap(codes)


# ---------------------------------------------------------------- one structure
_CONTEXT: dict = {}


def _context(cfg: GenerationConfig, grid: Grid, energy_keV: float):
    """Per-process simulator and image former per sampling grid and beam energy, and the split assignment per
    config."""
    key = (cfg.sha256(), grid.sim_gpts, grid.bin_factor or 1, energy_keV)
    if key not in _CONTEXT:
        if len(_CONTEXT) > 16:
            _CONTEXT.clear()
        sim = make_simulator(cfg.simulation, grid.sim_gpts, cfg.structure.thermal_sigma_A, energy_keV)
        former = ImageFormer(cfg.imaging, grid.sim_gpts, grid.sim_sampling_A, wavelength_A(energy_keV),
                             grid.bin_factor or 1)
        _CONTEXT[key] = (sim, former)
    split_key = ("splits", cfg.sha256())
    if split_key not in _CONTEXT:
        _CONTEXT[split_key] = assign_splits(cfg)
    return (*_CONTEXT[key], _CONTEXT[split_key])


class SimulatedStructure(NamedTuple):
    """One structure's records: (n, h, w) stacks of its images, masks and instance masks, one metadata dict per
    record (imaging condition), and the structure itself. A tuple too, so `images, masks, *_ = ...` holds."""
    images: np.ndarray
    masks: np.ndarray
    instance_masks: np.ndarray
    records: list[dict]
    structure: Structure


def simulate_structure(cfg: GenerationConfig, index: int, cache_dir: Path | None = None,
                       dataset_dir: Path | None = None) -> SimulatedStructure:
    """Structure -> exit waves -> images, masks, instance masks and per-record metadata (`SimulatedStructure`).
    A pure function of (cfg, index) on one machine, given the FFTW wisdom of `dataset_dir` (`fftw.py`);
    `cache_dir` shares the carbon bank and its sliced potentials between workers."""
    from importlib.metadata import version

    im = cfg.imaging
    grid = grid_for(cfg, index)
    energy = beam_energy_keV(cfg, index)
    sim, former, splits = _context(cfg, grid, energy)
    p = im.pixel_size_A
    s = build_structure(cfg, index, cache_dir)
    if hasattr(sim, "use_folders"):
        sim.use_folders(dataset_dir, cache_dir)
    former.use_folder(dataset_dir)
    waves = sim.exit_waves(s, cfg.seed)
    camera = sample_detector(im.detector, cfg.seed, index)
    # The camera's pixels are resampled onto the stored grid exactly as the importer resamples micrographs.
    resampled = grid.detector_px != im.field_px

    # Sample j of the multislice grid sits at j * sampling; stored pixel i spans [i p, (i + 1) p) - sampling / 2.
    half_sample = grid.sim_sampling_A / 2
    to_px = lambda x_A: (x_A + half_sample) / p - 0.5
    centres = [(to_px(pt.center_A[0]), to_px(pt.center_A[1])) for pt in s.particles]
    radii_px = [pt.bounding_radius_A / p for pt in s.particles]
    conditions = sample_conditions(cfg, index, centres, radii_px, energy)
    intensity = former.intensity(waves.full, conditions)
    if grid.bin_factor is None:  # camera pixels that are no whole number of samples integrate the area they cover
        intensity = np.stack([resample(a, grid.sim_sampling_A, grid.detector_pixel_size_A) for a in intensity])
    coverage = phase_coverage(waves.particle, cfg.mask.phase_threshold_rad)
    if grid.bin_factor and not resampled:
        coverage = bin_mean(coverage, grid.bin_factor)
    else:
        coverage = resample(coverage, grid.sim_sampling_A, p)
    mask_field = mask_from_coverage(coverage, cfg.mask.closing_radius_A / p, cfg.mask.blur_sigma_A / p,
                                    cfg.mask.blur_threshold)
    labels_field = instance_labels(mask_field, s.particle_positions[:, :2], s.particle_index, p, s.cell_xy_A,
                                   half_sample)

    # Every stage's objects say what they put on a record: the structure, the run's config, this structure's
    # grid and camera, and the software.
    base = {**s.record_fields(), "split": splits[index], **cfg.record_fields(), **grid.record_fields(),
            "energy_keV": energy,
            **camera.as_dict(), "simulator": sim.name, "simulator_version": sim.version,
            "generator_version": __version__, "czone_version": version("czone")}
    size = im.image_size_px
    images, masks, labels, metas = [], [], [], []
    for c, inten in zip(conditions, intensity):
        counts = camera.record(inten, c.dose_e_per_A2, grid.detector_pixel_size_A,
                               noise_rng(cfg, index, c.condition_index))
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
    return SimulatedStructure(np.stack(images), np.stack(masks), np.stack(labels), metas, s)


def process_structure(cfg_json: str, index: int, out_dir: str) -> dict:
    """Dask work unit: simulate one structure, write its structure file and its records part."""
    cfg = from_dict(json.loads(cfg_json))
    out = Path(out_dir)
    t0 = time.perf_counter()
    r = simulate_structure(cfg, index, out / "_work" / "substrates", out)
    r.structure.write_extxyz(out / "structures" / f"{r.structure.structure_id}.extxyz")
    write_parquet(to_table(r.images, r.masks, r.records, cfg.imaging.image_size_px, r.instance_masks),
                  _part_path(out, index))
    return {"index": index, "records": len(r.records), "seconds": time.perf_counter() - t0}


def _part_path(out: Path, index: int) -> Path:
    return out / "_work" / "parts" / f"{structure_id(index)}.parquet"


# ---------------------------------------------------------------- the run
def _check_folder(cfg: GenerationConfig, out: Path) -> str:
    """'done' if a finished dataset of this config is there, 'resume'/'new' otherwise; refuse a foreign folder."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; choose a folder")
    manifest = out / "manifest.json"
    if manifest.exists():
        sha = load_manifest(out).get("config_sha256")
        if sha == cfg.sha256():
            return "done"
        raise RunError(f"{out} already holds a dataset built from another config (sha256 {str(sha)[:12]}…); "
                       "use another --out or remove that folder")
    marker = out / "_work" / "config.json"
    if marker.exists():
        try:
            sha = json.loads(marker.read_text())["config_sha256"]
        except (ValueError, KeyError, TypeError):
            sha = None
        if sha != cfg.sha256():
            if not _finished_parts(out):
                # The other run finished no structure (it failed at once): nothing is lost by starting over.
                shutil.rmtree(out / "_work")
                shutil.rmtree(out / "structures", ignore_errors=True)
                return "new"
            raise RunError(f"{out} holds an unfinished run of another config (sha256 {str(sha)[:12]}…) with "
                           f"{len(_finished_parts(out))} structures done; re-run it with its own config, or remove "
                           "the folder")
        return "resume"
    if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise RunError(f"{out} exists and is not a temsynth output folder; choose an empty or new --out")
    return "new"


def _finished_parts(out: Path) -> set[int]:
    """Indices of the structures whose records part exists (one directory listing, not one stat per index)."""
    parts = out / "_work" / "parts"
    if not parts.is_dir():
        return set()
    return {int(e.name[1:-8]) for e in os.scandir(parts)
            if e.name.startswith("s") and e.name.endswith(".parquet") and e.name[1:-8].isdigit()}


LOCK_NAME, OWNER_NAME = ".generate.lock", ".generate.owner.json"


def _lock(out: Path):
    """An exclusive lock on the output folder for the whole run: a second `generate` refuses at once, naming the
    run that holds it. The lock is the OS's (fcntl through filelock): a killed run releases it."""
    from filelock import FileLock, Timeout

    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            who = json.loads((out / OWNER_NAME).read_text())
            who = f"pid {who['pid']} on {who['host']}, started {who['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            who = "another process"
        raise RunError(f"{out} is being generated by another run ({who}); wait for it to finish or stop it, "
                       "then re-run this command to resume") from None
    (out / OWNER_NAME).write_text(json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
    return lock


def generate(cfg: GenerationConfig, out_dir: str | Path, workers: int = 2, scheduler: str | None = None,
             progress: bool = True, log=print, cluster=None) -> dict:
    """Build (or resume) a dataset folder; `cluster` (generators.cluster.ClusterConfig) overrides workers and
    scheduler: a local cluster, an existing scheduler or SLURM/PBS batch jobs."""
    cluster = cluster or cluster_config(workers=workers, scheduler=scheduler)
    out = Path(out_dir)
    make_simulator(cfg.simulation, grid_for(cfg, 0).sim_gpts, cfg.structure.thermal_sigma_A,  # unusable: refused here
                   beam_energy_keV(cfg, 0))
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; choose a folder")
    if not _finished_with(cfg, out):  # re-running a finished folder needs no resources
        # This machine's memory only bounds local workers (batch jobs book their own).
        check_resources(cfg, out, cluster.workers, cluster.scheduler or (None if cluster.kind == "local"
                                                                          else cluster.kind))
    lock = _lock(out)
    try:
        return _generate(cfg, out, cluster, progress, log)
    finally:
        (out / OWNER_NAME).unlink(missing_ok=True)
        lock.release()


def _finished_with(cfg: GenerationConfig, out: Path) -> bool:
    try:
        return (out / "manifest.json").is_file() and load_manifest(out).get("config_sha256") == cfg.sha256()
    except RunError:
        return False


def check_resources(cfg: GenerationConfig, out: Path, workers: int, scheduler: str | None) -> None:
    """Refuse, before anything is written, a run whose workers cannot hold one structure in memory or whose
    dataset cannot fit on the disk, with the figures."""
    gib = 2 ** 30
    need = estimate_worker_bytes(cfg)
    if scheduler is None:
        avail = _available_memory()
        n = max(1, workers)
        if avail and need * n > avail:
            raise RunError(
                f"{cfg.name}: one structure needs about {need / gib:.1f} GiB per worker (a {cfg.sim_gpts}² "
                f"simulation grid, {cfg.conditions_per_structure} conditions) and {n} worker(s) need "
                f"{need * n / gib:.1f} GiB, but {avail / gib:.1f} GiB are available; lower "
                "imaging.image_size_px / field_size_px, raise simulation.sampling_A, or use fewer --workers")
    disk = estimate_dataset_bytes(cfg)
    parent = next((p for p in (out, *out.resolve().parents) if p.exists()), Path("."))
    free = shutil.disk_usage(parent).free
    if disk > free:
        raise RunError(f"{cfg.name}: the dataset needs about {disk / gib:,.0f} GiB ({cfg.n_structures} structures × "
                       f"{cfg.conditions_per_structure} images of {cfg.imaging.image_size_px}² px, Parquet + "
                       f"WebDataset) but {parent} has {free / gib:,.0f} GiB free; lower n_structures or "
                       "choose another --out")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _generate(cfg: GenerationConfig, out: Path, cluster, progress, log) -> dict:
    state = _check_folder(cfg, out)
    if state == "done":
        log(f"{out}: complete ({cfg.n_structures} structures); nothing to do")
        return load_manifest(out)
    (out / "_work" / "parts").mkdir(parents=True, exist_ok=True)
    (out / "_work" / "config.json").write_text(json.dumps({"config_sha256": cfg.sha256(),
                                                           "config": cfg.model_dump(mode="json")}))
    for stale in out.rglob(".*.tmp"):
        stale.unlink()
    finished = _finished_parts(out)
    pending = np.setdiff1d(np.arange(cfg.n_structures), np.fromiter(finished, np.int64, len(finished)))
    done = cfg.n_structures - len(pending)
    if state == "resume":
        log(f"{out}: resuming, {done} of {cfg.n_structures} structures already done")
    if cfg.simulation.backend == "abtem":
        ensure_wisdom(cfg.multislice_gpts, out)  # before any worker starts, so all of them replay one set of plans
    t0 = time.perf_counter()
    timings = _run_units(cfg, out, pending, cluster, progress, done)
    elapsed = time.perf_counter() - t0
    manifest = finalize(cfg, out, timings, elapsed)
    log(f"wrote {manifest['n_records']} records from {manifest['n_structures']} structures to {out} "
        f"in {elapsed:.1f} s")
    return manifest


def _run_units(cfg, out, pending, cluster, progress, done) -> list[dict]:
    """One task per structure on the shared runner (generators/cluster.py), in this process when workers == 0;
    drawn lazily, a bounded window ahead of the workers (ten million pending structures cost no memory up front).
    A failing structure stops the run with one line; finished parts are kept."""
    from tqdm.auto import tqdm


    cfg_json = cfg.model_dump_json()
    bar = tqdm(total=cfg.n_structures, initial=done, unit="structure", disable=not progress, file=sys.stderr,
               desc="structures")
    images = done * cfg.conditions_per_structure
    results = []

    def tick(task, r):
        nonlocal images
        results.append(r)
        images += r["records"]
        bar.update(1)
        bar.set_postfix(images=images)

    def failed(task, err):
        failure = _unit_failed(out, task.info, err)
        if failure is err:
            raise err
        raise failure from err

    try:
        root, key = str(out.resolve()), f"structure-{cfg.sha256()[:8]}"
        tasks = (Task(key=f"{key}-{int(i)}", fn=process_structure, args=(cfg_json, int(i), root), info=int(i))
                 for i in pending)
        run_tasks(tasks, cluster, tick, on_error=failed, ahead_per_worker=4)
        return results
    finally:
        bar.close()


def _unit_failed(out: Path, index: int, err: BaseException) -> Exception:
    if isinstance(err, (SimulatorUnavailable, ConfigError, RunError)):
        return err  # already one line naming the fix
    msg = " ".join(str(err).split())[:300] or type(err).__name__
    return RunError(f"structure {index} failed ({type(err).__name__}: {msg}); the {len(_finished_parts(out))} "
                    f"finished structures in {out} are kept: fix the cause and re-run the same command to resume")


def finalize(cfg: GenerationConfig, out: Path, timings: list[dict] | None = None, elapsed: float | None = None) -> dict:
    """Assemble shards from the parts (deterministic order), then card, then manifest, then drop `_work`."""
    splits = assign_splits(cfg)
    missing = cfg.n_structures - len(_finished_parts(out) & set(range(cfg.n_structures)))
    if missing:
        raise RunError(f"cannot finalize {out}: {missing} structures have no records yet; re-run generate")
    for old in list((out / "data").glob("*.parquet")) + list((out / "wds").glob("*.tar")):
        old.unlink()  # a re-finalize after a kill rewrites every shard
    shards, split_counts = [], {}
    for split in SPLITS:
        idx = splits.indices(split).tolist()
        n_records = len(idx) * cfg.conditions_per_structure
        split_counts[split] = n_records
        tables = (pq.read_table(_part_path(out, i)) for i in idx)
        shards += write_split(out, split, tables, n_records, cfg.records_per_shard)
    summary = _summary(out)
    write_card(out, cfg, split_counts, summary=summary, shards=shards)
    manifest = new_manifest(
        cfg.name, __version__, versions(), split_counts, shards,
        config_sha256=cfg.sha256(), config=cfg.model_dump(mode="json"), n_structures=cfg.n_structures,
        summary=summary, structures=file_entries(out, (out / "structures").glob("*.extxyz")),
        # the FFT plans every record was computed with (fftw.py): regenerate replays them
        fftw_wisdom=file_entries(out, (out / WISDOM_DIR).glob("*.pkl")),
        timing={"seconds": elapsed, "structures_timed": len(timings or []),
                "mean_structure_seconds": float(np.mean([t["seconds"] for t in timings])) if timings else None})
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
