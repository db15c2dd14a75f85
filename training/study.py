"""A study: data subsets × seeds (× fine-tuning amounts) trained on Dask, collected into one results table.

    temsynth study run study.yaml [--workers 2 | --scheduler tcp://host:8786 | --cluster slurm ...] [--retry-failed]
    temsynth study report STUDY_DIR

Every job is its own process (`python -m training.train` on the job's config, `accelerate launch` for several
devices) in its own folder under STUDY_DIR/jobs/, started by a Dask task (generators/cluster.py) or from this
process, with its thread count and GPUs set by the runner and its output in job.log. A job is done when its
done.json exists (written last, atomically), so a re-run skips it; a killed job resumes from its checkpoint.
A failed job leaves error.json (exit status and its error line) and is skipped (and listed) until
`--retry-failed`. results.parquet is rewritten after every finished job, so a kill loses no finished result;
a killed study (Ctrl-C, SIGTERM) stops its job processes.

Over 400 lines: the study file, its jobs, their processes and the results table are one resumable run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from generators.cluster import (
    RUNNING_FILE,
    After,
    ClusterConfig,
    Task,
    add_cluster_arguments,
    choose_gpus,
    cluster_config,
    cluster_from_args,
    job_command,
    job_env,
    job_script,
    last_error_line,
    launch_job,
    run_tasks,
    signals_raise,
    stop_jobs,
    worker_index,
)
from generators.config import ConfigError, Strict, format_errors, read_yaml
from generators.errors import TemsynthError, exit_status
from generators.files import atomic_path, sha256_file

from .card import versions
from .config import Benchmark, DataSource, differing_keys, train_config
from .finetune import DEFAULTS as FINETUNE_DEFAULTS
from .finetune import finetune_lr
from .models import SourceRecord, read_model_config
from .report import write_report
from .results import EPOCH_SCORES, RESULT_SCHEMA, RESULTS_FILE, STUDY_FILE, read_metrics
from .train import RESUMABLE_CHANGES, RUN_CONFIG_FILE

JOB_CONFIG_FILE = "job_config.json"  # the job's complete training config, as its process reads it
JOB_LOG = "job.log"  # the job process's stdout and stderr, every attempt appended
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


CLUSTER_FLAGS = ("cluster_config", "cluster", "workers", "scheduler", "queue", "walltime", "cores", "memory",
                 "gpus", "account", "job_directives", "prologue")


class StudyError(TemsynthError, RuntimeError):
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
    workers: int | None = Field(None, ge=0, description="local Dask worker processes (0: jobs one after another "
                                "from this process); with a slurm/pbs `cluster:`, batch jobs. Default 2")
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler")
    cluster: dict = Field({}, description="where jobs run: kind (local, slurm, pbs), queue, walltime, cores, "
                                          "memory, gpus, account, ... (generators/cluster.py)")
    devices_per_job: int = Field(1, ge=1, description="devices of one job: >1 starts it with `accelerate launch` "
                                                      "(GPUs, or CPU processes where there are none)")

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, v):
        try:
            cluster_config(v, "cluster")
        except ConfigError as err:
            raise ValueError(str(err).replace("\n", " ")) from None
        return v

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

    def cluster_config(self, args=None) -> ClusterConfig:
        """The file's `cluster:` (top-level `workers:`/`scheduler:` fill in), then command-line flags."""
        from argparse import Namespace

        fallback = {k: v for k, v in (("workers", self.workers), ("scheduler", self.scheduler)) if v is not None}
        args = args or Namespace(**{k: None for k in CLUSTER_FLAGS})
        return cluster_from_args(args, {**fallback, **self.cluster}, "study file `cluster:`")


# ---------------------------------------------------------------- jobs
@dataclass(frozen=True)
class StudyJob:
    """One training or fine-tuning run of a study: its id ("{subset}-s{seed}", + "-ft{amount}"), the subset and
    seed it stands for, its phase, the experimental images it fine-tunes on (0: a training job), the job it starts
    from (a fine-tuning job's parent) and its complete, validated training config (JSON form)."""
    job_id: str
    subset: str
    seed: int
    phase: str
    finetune_images: int
    parent: str | None
    config: dict

    @property
    def folder(self) -> Path:
        return Path(self.config["output_dir"])

    def __getitem__(self, key: str):
        """`job.config`: the dict form callers written against the first study code still use."""
        return getattr(self, key)


@dataclass(frozen=True)
class Launch:
    """How a job's process is started on its worker: threads, GPUs the worker owns, devices per job, where."""
    threads: int | None = None
    gpus_per_worker: int = 0
    devices: int = 1
    cwd: str | None = None


class JobState(BaseModel):
    """How a job ended: what `run_job` returns and what its done.json or error.json holds (written by
    `write_job_state`, read by `job_state`). "interrupted" (stopped from outside) is returned, never written:
    a re-run resumes that job. Keys a later version adds pass through."""
    model_config = ConfigDict(extra="allow")
    job_id: str
    status: Literal["done", "failed", "interrupted"]
    started: float | None = None
    seconds: float = 0.0
    finished: float | None = None
    returncode: int | None = None
    host: str | None = None
    gpus: list[str] | None = None
    devices: int | None = None
    threads: str | None = None
    log: str | None = None
    error: str | None = None
    summary: dict | None = Field(None, description="the training run's summary.json (model_dir, metrics_file, ...)")
    model_fingerprint: str | None = Field(None, description="sha256 of the job's final model.safetensors")


STATE_FILES = {"done": "done.json", "failed": "error.json"}


def _job_configs(study: StudyConfig, source: str) -> list[StudyJob]:
    """Every job's validated training config, in an order where a fine-tuning job follows its parent."""
    root = Path(study.output_dir) / "jobs"
    bench = [b.model_dump(mode="json") for b in study.benchmarks]
    jobs = []
    for subset in study.subsets:
        for seed in study.seed_list:
            base = f"{subset.name}-s{seed}"
            d = {**study.training, "name": base, "output_dir": str(root / base / "train"), "seed": seed,
                 "data": [s.model_dump(mode="json") for s in subset.sources], "benchmarks": bench}
            train = _validated(d, f"{source}: job {base} (fields from `training:` and subsets[{subset.name}])")
            jobs.append(StudyJob(base, subset.name, seed, "train", 0, None, train))
            for n in (study.finetune.amounts if study.finetune else []):
                job_id = f"{base}-ft{n}"
                data = {**study.finetune.data.model_dump(mode="json"), "n_images": n}
                ft = {**FINETUNE_DEFAULTS, **study.training, **study.finetune.settings,
                      "name": job_id, "output_dir": str(root / base / f"finetune-{n}"), "seed": seed, "data": data,
                      "benchmarks": bench, "init_from": str(root / base / "train" / "model")}
                ft_opt = study.finetune.settings.get("optimizer", {})
                # Unless the study says otherwise, the fine-tuning recipe sets the learning rate from the parent's.
                ft["optimizer"] = {**train["optimizer"], **ft_opt,
                                   "lr": ft_opt.get("lr", finetune_lr(train["optimizer"]["lr"]))}
                jobs.append(StudyJob(job_id, subset.name, seed, "finetune", n, base,
                                     _validated(ft, f"{source}: job {job_id} (fields from `finetune.settings:`)")))
    return jobs


def _validated(d: dict, where: str) -> dict:
    return train_config(d, where).model_dump(mode="json")


def load_study(path: str | Path) -> tuple[StudyConfig, list[StudyJob]]:
    data = read_yaml(path, "study config")
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, str(path), "study config")) from None
    return study, _job_configs(study, str(path))


def run_job(job: StudyJob, parent: JobState | None = None, launch: Launch | None = None) -> JobState:
    """One training or fine-tuning run in its own fresh process (`python -m training.train`, or `accelerate
    launch` for several devices), started from a Dask task or from this process; never raises for a failed job
    (errors are results). The process gets `launch.threads` threads and the GPUs this worker owns, writes
    its output to JOB_DIR/job.log, and is stopped with its process group if this call is interrupted."""
    launch = launch or Launch()
    out = job.folder
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started = time.time()
    base = {"job_id": job.job_id, "started": started}
    if parent is not None and parent.status != "done":
        return write_job_state(out, JobState(**base, status="failed", seconds=0.0, error=f"parent job {job.parent} "
                                             f"did not finish: {parent.error or parent.status}"))
    devices = launch.devices
    gpus = choose_gpus(devices, launch.gpus_per_worker, worker_index())
    with atomic_path(out / JOB_CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(job.config, indent=2))
    # The job config is complete (a fine-tuning job's too: init_from, data, schedule), so train runs both.
    cmd = job_command(["training.train", "--config", str((out / JOB_CONFIG_FILE).resolve()), "--quiet"], devices)
    env = job_env(launch.threads, gpus, devices)
    try:
        rc = launch_job(cmd, out, env, launch.cwd, JOB_LOG)
    except OSError as err:  # the program could not be started (python or accelerate missing on the node)
        return write_job_state(out, JobState(**base, status="failed", seconds=time.perf_counter() - t0,
                                             error=f"could not start {cmd[0]}: {err}"))
    seconds = time.perf_counter() - t0
    info = {**base, "seconds": seconds, "finished": time.time(), "returncode": rc, "host": socket.gethostname(),
            "gpus": gpus, "devices": devices, "threads": env["OMP_NUM_THREADS"], "log": str(out / JOB_LOG)}
    if rc == 0:
        summary = json.loads((out / "summary.json").read_text())
        (out / STATE_FILES["failed"]).unlink(missing_ok=True)
        return write_job_state(out, JobState(**info, status="done", summary=summary, model_fingerprint=sha256_file(
            Path(summary["model_dir"]) / "model.safetensors")))
    if -rc in STOP_SIGNALS:  # stopped from outside (a killed study): not a failure; a re-run resumes it
        return JobState(**info, status="interrupted", error=f"stopped by signal {-rc}")
    why = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
    return write_job_state(out, JobState(**info, status="failed", error=f"{why}: {last_error_line(out / JOB_LOG)}"))


def write_job_state(folder: Path, state: JobState) -> JobState:
    """done.json (written last, atomically: the job is then done) or error.json; the state is returned."""
    with atomic_path(folder / STATE_FILES[state.status]) as tmp:
        tmp.write_text(json.dumps(state.model_dump(mode="json", exclude_unset=True), indent=2))
    return state


def job_state(job: StudyJob) -> JobState | None:
    """The job's done.json, else its error.json, typed; None for a job that never ended."""
    for name in STATE_FILES.values():
        f = job.folder / name
        if f.exists():
            try:
                return JobState.model_validate_json(f.read_bytes())
            except ValidationError as err:
                first = " ".join(str(err).split())[:200]
                raise StudyError(f"{f} is not a job state ({first}); delete it to run the job again") from None
    return None


# ---------------------------------------------------------------- results
def _job_rows(study: StudyConfig, job: StudyJob, state: JobState) -> list[dict]:
    subset = next(s for s in study.subsets if s.name == job.subset)
    paths = ";".join(s.path for s in subset.sources)
    fps = ";".join(d.fingerprint or "" for d in _train_data_info(state))
    rows = []
    for r in read_metrics(Path(state.summary["metrics_file"])):
        if r["phase"] != job.phase:
            continue  # a fine-tuning job's file starts with its parent's rows; those belong to the parent
        rows.append({"study": study.name, "job_id": job.job_id, "subset": subset.name,
                     "subset_query": subset.query_text, "data_path": paths, "data_fingerprint": fps,
                     "seed": job.seed, "phase": job.phase, "finetune_images": job.finetune_images,
                     **{f.name: r[f.name] for f in EPOCH_SCORES}, "model_fingerprint": state.model_fingerprint})
    return rows


def _train_data_info(state: JobState) -> list[SourceRecord]:
    """The training data of the job's first phase (a fine-tuning job inherits its parent's subset)."""
    return read_model_config(state.summary["model_dir"]).first_phase_data


def write_results(study: StudyConfig, jobs: list[StudyJob], cache: dict | None = None) -> Path:
    """Rewrite results.parquet from every finished job; `cache` keeps rows already read (a finished job's
    metrics never change), so rewriting after each of n jobs reads each job's files once, not n times."""
    import pyarrow.parquet as pq

    cache = {} if cache is None else cache
    rows = []
    for job in jobs:
        if job.job_id not in cache:
            state = job_state(job)
            if not state or state.status != "done":
                continue
            cache[job.job_id] = _job_rows(study, job, state)
        rows += cache[job.job_id]
    table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    path = Path(study.output_dir) / RESULTS_FILE
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


# ---------------------------------------------------------------- the study
def run_study(path: str | Path, workers: int | None = None, scheduler: str | None = None,
              retry_failed: bool = False, progress: bool = True, log=print,
              cluster: ClusterConfig | None = None) -> dict:
    """Run (or resume) every job of a study file; `cluster` (or workers/scheduler) overrides the file's."""
    study, jobs = load_study(path)
    if cluster is None:
        cluster = study.cluster_config()
        over = {k: v for k, v in (("workers", workers), ("scheduler", scheduler)) if v is not None}
        if over:
            cluster = cluster_config({**cluster.model_dump(), **over}, "run_study arguments")
    out = Path(study.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_folder(study, out)
    states = {j.job_id: job_state(j) for j in jobs}
    _check_done_jobs(jobs, states)
    todo = [j for j in jobs if not states[j.job_id] or
            (states[j.job_id].status == "failed" and retry_failed)]
    skipped_failed = [j.job_id for j in jobs if states[j.job_id] and
                      states[j.job_id].status == "failed" and not retry_failed]
    done_before = sum(1 for s in states.values() if s and s.status == "done")
    log(f"study {study.name}: {len(jobs)} jobs, {done_before} done before, {len(todo)} to run "
        f"({cluster.describe()})"
        + (f", {len(skipped_failed)} failed before (--retry-failed to run them again)" if skipped_failed else ""))
    t0 = time.perf_counter()
    cache: dict = {}
    results = _run_jobs(study, jobs, todo, cluster, progress, cache) if todo else []
    wall = time.perf_counter() - t0
    write_results(study, jobs, cache)
    final = [s for s in (job_state(j) for j in jobs) if s is not None]
    failed = {s.job_id: s.error for s in final if s.status == "failed"}
    interrupted = [r.job_id for r in results if r.status == "interrupted"]
    job_seconds = sum(r.seconds for r in results)
    timing = {"wall_seconds": round(wall, 2), "jobs_run": len(results), "job_seconds": round(job_seconds, 2),
              "cluster": cluster.describe(), "workers": None if cluster.scheduler else cluster.workers,
              "scheduler": cluster.scheduler, "threads_per_job": cluster.threads(),
              "jobs_per_hour": round(3600 * len(results) / wall, 1) if results else None}
    _write_study_json(study, out, jobs, timing, failed)
    summary = {"study": study.name, "output_dir": str(out), "jobs": len(jobs),
               "done": sum(s.status == "done" for s in final),
               "failed": failed, "interrupted": interrupted, "results": str(out / RESULTS_FILE), "timing": timing}
    for job_id, err in failed.items():
        log(f"FAILED {job_id}: {err}")
    return summary


def _check_folder(study: StudyConfig, out: Path) -> None:
    f = out / STUDY_FILE
    if f.exists():
        old = json.loads(f.read_text()).get("config", {})
        mine = study.model_dump(mode="json")
        # Seeds, subsets and amounts may grow: each job checks its own config (_check_done_jobs).
        free = ("workers", "scheduler", "cluster", "seeds", "subsets", "finetune")
        # A field added since that study ran counts as its default there (devices_per_job: 1).
        old = {k: f.default for k, f in StudyConfig.model_fields.items() if k not in old} | old
        diff = differing_keys(old, mine, free)
        if diff:
            raise StudyError(f"{out} holds a study with another config (differs in {', '.join(diff)}); "
                             "choose a new output_dir. Adding seeds, subsets or fine-tuning amounts is allowed.")


def _check_done_jobs(jobs: list[StudyJob], states: dict) -> None:
    """A finished job is only reused for the config it ran with (a subset's query may have been edited)."""
    for job in jobs:
        if states[job.job_id] is None or states[job.job_id].status != "done":
            continue
        ran = json.loads((job.folder / RUN_CONFIG_FILE).read_text())
        diff = differing_keys(ran, job.config, RESUMABLE_CHANGES)
        if diff:
            raise StudyError(f"job {job.job_id} finished with another config (differs in {', '.join(diff)}); "
                             "a changed subset or training field needs a new output_dir")


def _write_study_json(study, out, jobs, timing, failed) -> None:
    doc = {"name": study.name, "config": study.model_dump(mode="json"),
           "subsets": [{"name": s.name, "query": s.query_text, "sources": [x.model_dump(mode="json")
                                                                           for x in s.sources]}
                       for s in study.subsets],
           "benchmarks": [b.name for b in study.benchmarks], "jobs": [j.job_id for j in jobs],
           "failed": failed, "timing": timing, "versions": versions()}
    with atomic_path(out / STUDY_FILE) as tmp:
        tmp.write_text(json.dumps(doc, indent=2))


def _run_jobs(study, jobs, todo, cluster: ClusterConfig, progress, cache) -> list[JobState]:
    """Each job a task (a fine-tuning job after its parent) that starts the job's own process."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), disable=not progress, unit="job", desc=f"study {study.name}", dynamic_ncols=True)
    launch = Launch(cluster.threads(), cluster.gpus_per_worker(), study.devices_per_job, os.getcwd())
    by_id, planned = {j.job_id: j for j in jobs}, {j.job_id for j in todo}
    finished, since = [], time.time()
    tasks = []
    for job in todo:
        parent = None
        if job.parent:  # a parent run in this study is an earlier task; one done before is its state
            parent = After(job.parent) if job.parent in planned else job_state(by_id[job.parent])
        tasks.append(Task(key=job.job_id, fn=run_job, args=(job, parent, launch), info=job))

    def record(task, r):
        finished.append(r)
        bar.update(1)
        write_results(study, jobs, cache)  # after every job: a kill loses nothing that finished
        failed = sum(x.status == "failed" for x in finished)
        running = sum(_running(j, since) for j in todo)
        bar.set_postfix_str(f"done {len(finished) - failed} running {running} failed {failed}")

    def stop_all(client):
        """Interrupted: stop the job processes (here and, on a remote cluster, on every worker's host)."""
        dirs = [str(j.folder) for j in todo]
        stop_jobs(dirs)
        if client is not None and (cluster.scheduler or cluster.kind != "local"):
            try:
                client.run(stop_jobs, dirs)
            except Exception:  # noqa: BLE001 - closing the cluster (batch jobs cancelled) stops the rest
                pass

    try:
        with signals_raise():
            run_tasks(tasks, cluster, record, on_error=lambda t, err: _worker_lost(t.info, err),
                      on_interrupt=stop_all)
    finally:
        bar.close()
    return finished


def _running(job: StudyJob, since: float) -> bool:
    """Dask hands tasks to workers ahead of time, so only the job's own marker says it is running now."""
    f = job.folder / RUNNING_FILE
    try:
        return f.stat().st_mtime >= since
    except FileNotFoundError:
        return False


def _worker_lost(job: StudyJob, err: Exception) -> JobState:
    return write_job_state(job.folder, JobState(job_id=job.job_id, status="failed", seconds=0.0,
                                                error=f"worker lost: {type(err).__name__}: {err}"))


# ---------------------------------------------------------------- command line
def main(argv=None, prog: str = "temsynth study", epilog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="run (or resume) every job of a study file",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  temsynth study run training/examples/study_demo.yaml --workers 2")
    r.add_argument("study")
    add_cluster_arguments(r)
    r.add_argument("--retry-failed", action="store_true", help="run failed jobs again")
    r.add_argument("--quiet", action="store_true")
    rep = sub.add_parser("report", help="figures, statistics and tests of a study folder",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="example:\n  temsynth study report runs/study_demo")
    rep.add_argument("study_dir")
    rep.add_argument("--out", help="report folder (default: STUDY_DIR/report)")
    args = p.parse_args(argv)
    # ConfigError, QueryError, StudyError, ReportError, ...: one line, status 2
    return exit_status(f"temsynth study {args.verb}", lambda: _run_verb(args))


def _run_verb(args) -> int:
    if args.verb == "run":
        study, _ = load_study(args.study)
        cluster = study.cluster_config(args)
        if args.job_script:
            print(job_script(cluster))
            return 0
        try:
            s = run_study(args.study, retry_failed=args.retry_failed, progress=not args.quiet, cluster=cluster)
        except KeyboardInterrupt:
            print("temsynth study run: interrupted; its job processes were stopped. Re-run the same command "
                  "to resume (finished jobs are kept, running ones continue from their checkpoints)",
                  file=sys.stderr)
            return 130
        print(json.dumps({k: v for k, v in s.items()}, indent=2))
        return 1 if s["failed"] else 0
    print(write_report(args.study_dir, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
