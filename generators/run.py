"""The generation run's bookkeeping: one work unit per structure on Dask (`work.py`), resumable; then shards,
card and manifest.

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
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from . import __version__
from .cluster import Task, cluster_config, run_tasks
from .config import ConfigError, GenerationConfig, estimate_dataset_bytes, estimate_worker_bytes
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
from .imaging import beam_energy_keV, grid_for
from .regenerate import read_record, read_records, regenerate_record, regenerate_records  # noqa: F401  (re-exported)
from .simulate import SimulatorUnavailable, make_simulator
from .work import (  # noqa: F401  (re-exported)
    SimulatedStructure,
    SplitMap,
    _context,
    _part_path,
    assign_splits,
    process_structure,
    simulate_structure,
)
from .writers import SPLITS, file_entries, write_card, write_manifest, write_split


class _Existing:
    """The output folder's manifest, read once per run (before the resource check, which a finished folder
    skips) and reused under the lock; an unreadable one is kept as its error, raised where the run refuses it."""

    def __init__(self, out: Path):
        self.out, self.manifest, self.error = out, None, None
        self.read()

    def read(self) -> None:
        if (self.out / "manifest.json").is_file():
            try:
                self.manifest = load_manifest(self.out)
            except RunError as err:
                self.error = err

    def get(self) -> dict:
        """The manifest as written; read here only if another run finished the folder since (a race)."""
        if self.manifest is None and self.error is None:
            self.read()
        if self.error is not None:
            raise self.error
        return self.manifest

    def finished_with(self, cfg: GenerationConfig) -> bool:
        return self.manifest is not None and self.manifest.get("config_sha256") == cfg.sha256()


def _check_folder(cfg: GenerationConfig, out: Path, existing: _Existing | None = None) -> str:
    """'done' if a finished dataset of this config is there, 'resume'/'new' otherwise; refuse a foreign folder.
    `existing`: the manifest as `generate` read it (else read here)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; choose a folder")
    manifest = out / "manifest.json"
    if manifest.exists():
        sha = (existing or _Existing(out)).get().get("config_sha256")
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
    existing = _Existing(out)
    if not existing.finished_with(cfg):  # re-running a finished folder needs no resources
        # This machine's memory only bounds local workers (batch jobs book their own).
        check_resources(cfg, out, cluster.workers, cluster.scheduler or (None if cluster.kind == "local"
                                                                          else cluster.kind))
    lock = _lock(out)
    try:
        return _generate(cfg, out, cluster, progress, log, existing)
    finally:
        (out / OWNER_NAME).unlink(missing_ok=True)
        lock.release()


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


def _generate(cfg: GenerationConfig, out: Path, cluster, progress, log, existing: _Existing) -> dict:
    state = _check_folder(cfg, out, existing)
    if state == "done":
        log(f"{out}: complete ({cfg.n_structures} structures); nothing to do")
        return existing.get()
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
