"""A study: data subsets × seeds (× fine-tuning amounts) trained on Dask, collected into one results table.

    temsynth study run study.yaml [--workers 2 | --scheduler tcp://host:8786] [--retry-failed]
    temsynth study report STUDY_DIR

Every job is one `training.train.run` in its own folder under STUDY_DIR/jobs/. A job is done when its
done.json exists (written last, atomically), so a re-run skips it; a killed job resumes from its checkpoint.
A failed job leaves error.json and is skipped (and listed) until `--retry-failed`. results.parquet is rewritten
after every finished job, so a kill loses no finished result.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

import pyarrow as pa
from pydantic import Field, ValidationError, field_validator, model_validator

from generators.config import ConfigError, Strict, format_errors, read_yaml

from .config import Benchmark, DataSource, TrainConfig, train_config
from .results import RESULT_SCHEMA, RESULTS_FILE, STUDY_FILE

RUNNING_FILE = "running.json"  # present while a job runs (or was killed running): progress reads it


class StudyError(RuntimeError):
    pass


class Subset(Strict):
    """A named selection of training data: one or more dataset folders, each with an optional query."""
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    sources: list[DataSource] = Field(min_length=1)
    description: str = ""

    @property
    def query_text(self) -> str:
        return " | ".join(s.query or "" for s in self.sources)


class Finetune(Strict):
    data: DataSource = Field(description="experimental split to fine-tune on, e.g. {path: exp_au, split: finetune}")
    amounts: list[int] = Field(min_length=1, description="numbers of images to fine-tune on, one job each")
    settings: dict = Field({}, description="training config fields for this phase (default: the seed study's)")

    @field_validator("amounts")
    @classmethod
    def _positive(cls, v):
        if any(a < 1 for a in v) or len(set(v)) != len(v):
            raise ValueError(f"amounts must be distinct positive image counts, got {v}")
        return v


class StudyConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    output_dir: str
    seeds: int | list[int] = Field(5, description="a count (0..n-1) or explicit seeds; >= 5 separates data "
                                                  "effects from training noise")
    subsets: list[Subset] = Field(min_length=1)
    benchmarks: list[Benchmark] = Field(min_length=1)
    training: dict = Field({}, description="training config fields shared by every job (model, epochs, ...)")
    finetune: Finetune | None = None
    workers: int = Field(2, ge=0, description="local Dask worker processes (0: run jobs in this process)")
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler")

    @field_validator("subsets")
    @classmethod
    def _unique(cls, v):
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"subset names must be unique, got {names}")
        return v

    @model_validator(mode="after")
    def _seeds(self):
        seeds = self.seed_list
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds: a positive count or distinct non-negative seeds, got {self.seeds}")
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


# ---------------------------------------------------------------- jobs
def _job_configs(study: StudyConfig, source: str) -> list[dict]:
    """Every job's validated training config, in an order where a fine-tuning job follows its parent."""
    root = Path(study.output_dir) / "jobs"
    bench = [json.loads(b.model_dump_json()) for b in study.benchmarks]
    jobs = []
    for subset in study.subsets:
        for seed in study.seed_list:
            base = f"{subset.name}-s{seed}"
            d = {**study.training, "name": base, "output_dir": str(root / base / "train"), "seed": seed,
                 "data": [json.loads(s.model_dump_json()) for s in subset.sources], "benchmarks": bench}
            train = _validated(d, f"{source}: job {base} (fields from `training:` and subsets[{subset.name}])")
            jobs.append({"job_id": base, "subset": subset.name, "seed": seed, "phase": "train",
                         "finetune_images": 0, "parent": None, "config": train})
            for n in (study.finetune.amounts if study.finetune else []):
                job_id = f"{base}-ft{n}"
                data = {**json.loads(study.finetune.data.model_dump_json()), "n_images": n}
                ft = {"epochs": 50, "patience": 10, **study.training, **study.finetune.settings,
                      "name": job_id, "output_dir": str(root / base / f"finetune-{n}"), "seed": seed, "data": data,
                      "benchmarks": bench, "init_from": str(root / base / "train" / "model")}
                ft_opt = study.finetune.settings.get("optimizer", {})
                # Unless the study says otherwise, fine-tuning halves the parent's learning rate (seed study).
                ft["optimizer"] = {**train["optimizer"], **ft_opt,
                                   "lr": ft_opt.get("lr", train["optimizer"]["lr"] / 2)}
                jobs.append({"job_id": job_id, "subset": subset.name, "seed": seed, "phase": "finetune",
                             "finetune_images": n, "parent": base,
                             "config": _validated(ft, f"{source}: job {job_id} (fields from `finetune.settings:`)")})
    return jobs


def _validated(d: dict, where: str) -> dict:
    return json.loads(train_config(d, where).model_dump_json())


def load_study(path: str | Path) -> tuple[StudyConfig, list[dict]]:
    data = read_yaml(path)
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, str(path), "study config")) from None
    return study, _job_configs(study, str(path))


def _job_dir(job: dict) -> Path:
    return Path(job["config"]["output_dir"])


def run_job(job: dict, parent: dict | None = None, threads: int | None = None) -> dict:
    """One training or fine-tuning run, in a Dask worker or in this process; never raises (errors are results)."""
    import torch

    from generators.writers import atomic_path, sha256_file

    from .train import run

    out = _job_dir(job)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started = time.time()
    (out / RUNNING_FILE).write_text(json.dumps({"started": started, "pid": os.getpid()}))
    try:
        if parent is not None and parent.get("status") != "done":
            raise StudyError(f"parent job {job['parent']} did not finish: {parent.get('error', 'unknown')}")
        if threads:
            torch.set_num_threads(threads)
        _pick_gpu()
        summary = run(TrainConfig.model_validate(job["config"]), progress=False, echo=False)
        result = {"job_id": job["job_id"], "status": "done", "seconds": time.perf_counter() - t0,
                  "started": started, "finished": time.time(), "summary": summary,
                  "model_fingerprint": sha256_file(Path(summary["model_dir"]) / "model.safetensors")}
        (out / "error.json").unlink(missing_ok=True)
        with atomic_path(out / "done.json") as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    except Exception as err:  # noqa: BLE001 - a job's failure is data for the study, not a crash of it
        result = {"job_id": job["job_id"], "status": "failed", "seconds": time.perf_counter() - t0,
                  "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        with atomic_path(out / "error.json") as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    (out / RUNNING_FILE).unlink(missing_ok=True)
    return result


def _pick_gpu() -> None:
    """One GPU per local Dask worker: worker i sees GPU i (set before CUDA starts in this process)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return
    import torch

    n = torch.cuda.device_count() if not torch.cuda.is_initialized() else 0
    if n and isinstance(name, int):
        os.environ["CUDA_VISIBLE_DEVICES"] = str(name % n)


def job_state(job: dict) -> dict | None:
    d = _job_dir(job)
    for name in ("done.json", "error.json"):
        if (d / name).exists():
            return json.loads((d / name).read_text())
    return None


# ---------------------------------------------------------------- results
def _job_rows(study: StudyConfig, job: dict, state: dict) -> list[dict]:
    from .train import read_metrics

    subset = next(s for s in study.subsets if s.name == job["subset"])
    paths = ";".join(s.path for s in subset.sources)
    fps = ";".join(d.get("fingerprint") or "" for d in _train_data_info(state))
    rows = []
    for r in read_metrics(Path(state["summary"]["metrics_file"])):
        if r["phase"] != job["phase"]:
            continue  # a fine-tuning job's file starts with its parent's rows; those belong to the parent
        rows.append({"study": study.name, "job_id": job["job_id"], "subset": subset.name,
                     "subset_query": subset.query_text, "data_path": paths, "data_fingerprint": fps,
                     "seed": job["seed"], "phase": job["phase"], "finetune_images": job["finetune_images"],
                     "epoch": int(r["epoch"]), "phase_epoch": int(r["phase_epoch"]), "benchmark": r["benchmark"],
                     "n_images": int(r["n_images"]), "dice": float(r["dice"]), "iou": float(r["iou"]),
                     "dice_pooled": float(r["dice_pooled"]), "train_loss": float(r["train_loss"]),
                     "lr": float(r["lr"]), "model_fingerprint": state["model_fingerprint"]})
    return rows


def _train_data_info(state: dict) -> list[dict]:
    """The training data of the job's first phase (a fine-tuning job inherits its parent's subset)."""
    config = json.loads((Path(state["summary"]["model_dir"]) / "config.json").read_text())
    if config.get("init_from"):
        return config["init_from"].get("train_data") or []
    return config.get("train_data") or []


def write_results(study: StudyConfig, jobs: list[dict], cache: dict | None = None) -> Path:
    """Rewrite results.parquet from every finished job; `cache` keeps rows already read (a finished job's
    metrics never change), so rewriting after each of n jobs reads each job's files once, not n times."""
    import pyarrow.parquet as pq

    from generators.writers import atomic_path

    cache = {} if cache is None else cache
    rows = []
    for job in jobs:
        if job["job_id"] not in cache:
            state = job_state(job)
            if not state or state["status"] != "done":
                continue
            cache[job["job_id"]] = _job_rows(study, job, state)
        rows += cache[job["job_id"]]
    table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    path = Path(study.output_dir) / RESULTS_FILE
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


# ---------------------------------------------------------------- the study
def run_study(path: str | Path, workers: int | None = None, scheduler: str | None = None,
              retry_failed: bool = False, progress: bool = True, log=print) -> dict:
    study, jobs = load_study(path)
    workers = study.workers if workers is None else workers
    scheduler = scheduler or study.scheduler
    out = Path(study.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_folder(study, out)
    states = {j["job_id"]: job_state(j) for j in jobs}
    _check_done_jobs(jobs, states)
    todo = [j for j in jobs if not states[j["job_id"]] or
            (states[j["job_id"]]["status"] == "failed" and retry_failed)]
    skipped_failed = [j["job_id"] for j in jobs if states[j["job_id"]] and
                      states[j["job_id"]]["status"] == "failed" and not retry_failed]
    done_before = sum(1 for s in states.values() if s and s["status"] == "done")
    log(f"study {study.name}: {len(jobs)} jobs, {done_before} done before, {len(todo)} to run"
        + (f", {len(skipped_failed)} failed before (--retry-failed to run them again)" if skipped_failed else ""))
    t0 = time.perf_counter()
    cache: dict = {}
    results = _run_jobs(study, jobs, todo, workers, scheduler, progress, cache) if todo else []
    wall = time.perf_counter() - t0
    write_results(study, jobs, cache)
    final = {j["job_id"]: job_state(j) or {} for j in jobs}
    failed = {k: s.get("error") for k, s in final.items() if s.get("status") == "failed"}
    job_seconds = sum(r["seconds"] for r in results)
    timing = {"wall_seconds": round(wall, 2), "jobs_run": len(results), "job_seconds": round(job_seconds, 2),
              "workers": workers if not scheduler else None, "scheduler": scheduler,
              "jobs_per_hour": round(3600 * len(results) / wall, 1) if results else None}
    _write_study_json(study, out, jobs, timing, failed)
    summary = {"study": study.name, "output_dir": str(out), "jobs": len(jobs),
               "done": sum(s.get("status") == "done" for s in final.values()),
               "failed": failed, "results": str(out / RESULTS_FILE), "timing": timing}
    for job_id, err in failed.items():
        log(f"FAILED {job_id}: {err}")
    return summary


def _check_folder(study: StudyConfig, out: Path) -> None:
    f = out / STUDY_FILE
    if f.exists():
        old = json.loads(f.read_text()).get("config", {})
        mine = json.loads(study.model_dump_json())
        # Seeds, subsets and amounts may grow: each job checks its own config (_check_done_jobs).
        free = ("workers", "scheduler", "seeds", "subsets", "finetune")
        diff = sorted(k for k in set(old) | set(mine) if k not in free and old.get(k) != mine.get(k))
        if diff:
            raise StudyError(f"{out} holds a study with another config (differs in {', '.join(diff)}); "
                             "choose a new output_dir. Adding seeds, subsets or fine-tuning amounts is allowed.")


def _check_done_jobs(jobs: list[dict], states: dict) -> None:
    """A finished job is only reused for the config it ran with (a subset's query may have been edited)."""
    from .train import RESUMABLE_CHANGES, RUN_CONFIG_FILE

    for job in jobs:
        if (states[job["job_id"]] or {}).get("status") != "done":
            continue
        ran = json.loads((_job_dir(job) / RUN_CONFIG_FILE).read_text())
        diff = sorted(k for k in set(ran) | set(job["config"])
                      if k not in RESUMABLE_CHANGES and ran.get(k) != job["config"].get(k))
        if diff:
            raise StudyError(f"job {job['job_id']} finished with another config (differs in {', '.join(diff)}); "
                             "a changed subset or training field needs a new output_dir")


def _write_study_json(study, out, jobs, timing, failed) -> None:
    from generators.writers import atomic_path

    from .card import versions

    doc = {"name": study.name, "config": json.loads(study.model_dump_json()),
           "subsets": [{"name": s.name, "query": s.query_text, "sources": [json.loads(x.model_dump_json())
                                                                           for x in s.sources]}
                       for s in study.subsets],
           "benchmarks": [b.name for b in study.benchmarks], "jobs": [j["job_id"] for j in jobs],
           "failed": failed, "timing": timing, "versions": versions()}
    with atomic_path(out / STUDY_FILE) as tmp:
        tmp.write_text(json.dumps(doc, indent=2))


def _run_jobs(study, jobs, todo, workers, scheduler, progress, cache) -> list[dict]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), disable=not progress, unit="job", desc=f"study {study.name}", dynamic_ncols=True)
    finished = []

    def record(r):
        finished.append(r)
        bar.update(1)
        write_results(study, jobs, cache)  # after every job: a kill loses nothing that finished

    if workers == 0 and not scheduler:
        by_id = {j["job_id"]: j for j in jobs}
        for job in todo:
            parent = job_state(by_id[job["parent"]]) if job["parent"] else None
            bar.set_postfix_str(f"running {job['job_id']}")
            record(run_job(job, parent))
        bar.close()
        return finished
    return _run_on_dask(jobs, todo, workers, scheduler, bar, record, finished)


def _run_on_dask(jobs, todo, workers, scheduler, bar, record, finished):
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
        threads = None  # the remote workers' own settings stand
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        # Dask starts workers with OMP/MKL_NUM_THREADS=1 (right for numpy tasks, not for a torch job that owns
        # its share of the cores). Processes, not threads: concurrent jobs in one process would share torch's
        # global RNG and break seed-for-seed reproducibility. (Open: on CPUs a job in a nanny-spawned worker
        # still measures ~2.4x slower than in a plain process; `workers: 0` runs jobs here at full speed.)
        env = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               env=env)
        client = Client(cluster)
    try:
        futures, by_id = {}, {j["job_id"]: j for j in jobs}
        for job in todo:
            parent = None
            if job["parent"]:
                # A parent run in this study is a future (Dask orders the two); a parent done earlier is its state.
                parent = futures.get(job["parent"]) or job_state(by_id[job["parent"]])
            futures[job["job_id"]] = client.submit(run_job, job, parent, threads, key=f"job-{job['job_id']}-"
                                                   f"{time.time_ns()}", pure=False)
        job_of = {f.key: by_id[j] for j, f in futures.items()}
        failed, since = 0, time.time()
        for fut in as_completed(list(futures.values())):
            try:
                r = fut.result()
            except Exception as err:  # noqa: BLE001 - the worker died (killed, out of memory): record and go on
                r = _worker_lost(job_of[fut.key], err)
            failed += r["status"] == "failed"
            record(r)
            running = sum(_running(j, since) for j in job_of.values())
            bar.set_postfix_str(f"done {len(finished) - failed} running {running} failed {failed}")
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
    return finished


def _running(job: dict, since: float) -> bool:
    """Dask hands tasks to workers ahead of time, so only the job's own marker says it is running now."""
    f = _job_dir(job) / RUNNING_FILE
    try:
        return f.stat().st_mtime >= since
    except FileNotFoundError:
        return False


def _worker_lost(job: dict, err: Exception) -> dict:
    from generators.writers import atomic_path

    r = {"job_id": job["job_id"], "status": "failed", "seconds": 0.0, "error": f"worker lost: {type(err).__name__}: {err}"}
    with atomic_path(_job_dir(job) / "error.json") as tmp:
        tmp.write_text(json.dumps(r, indent=2))
    return r


# ---------------------------------------------------------------- command line
def main(argv=None) -> int:
    import argparse
    import sys

    from generators.query import QueryError

    p = argparse.ArgumentParser(prog="temsynth study", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="run (or resume) every job of a study file")
    r.add_argument("study")
    r.add_argument("--workers", type=int, help="local Dask workers (0: in this process); default: the file's")
    r.add_argument("--scheduler", help="address of an existing Dask scheduler")
    r.add_argument("--retry-failed", action="store_true", help="run failed jobs again")
    r.add_argument("--quiet", action="store_true")
    rep = sub.add_parser("report", help="figures, statistics and tests of a study folder")
    rep.add_argument("study_dir")
    rep.add_argument("--out", help="report folder (default: STUDY_DIR/report)")
    args = p.parse_args(argv)
    try:
        if args.verb == "run":
            s = run_study(args.study, args.workers, args.scheduler, args.retry_failed, progress=not args.quiet)
            print(json.dumps({k: v for k, v in s.items()}, indent=2))
            return 1 if s["failed"] else 0
        from .report import ReportError, write_report

        try:
            print(write_report(args.study_dir, args.out))
        except ReportError as err:
            raise StudyError(str(err)) from None
        return 0
    except (ConfigError, QueryError, StudyError) as err:
        print(f"temsynth study {args.verb}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
