"""One Dask runner for generation and studies: in this process, a local cluster, an existing scheduler, or a
batch-scheduled cluster (SLURM, PBS) through dask-jobqueue; and the job processes a task launches.

    cluster: {kind: slurm, workers: 8, queue: gpu, walltime: "04:00:00", cores: 8, memory: 32GB, gpus: 1,
              account: abc123, prologue: ["module load cuda", "source .venv/bin/activate"]}

`workers` is the number of local worker processes (0: run the tasks one after another in this process), or for
SLURM/PBS the number of batch jobs, each holding one Dask worker that runs one task at a time on `cores`
cores and `gpus` GPUs. `scheduler: tcp://host:8786` uses a cluster someone else started (shared disk).

Why job processes get an explicit environment: a Dask nanny exports MALLOC_TRIM_THRESHOLD_=65536 (and
OMP_NUM_THREADS=1) into the worker it spawns. Setting that variable switches off glibc's dynamic mmap threshold,
so every large tensor buffer is mmap()ed and munmap()ed again, and each use of it page-faults: a torch
training step in such a process spends as much time in the kernel as in user code (2.1-2.3x slower epochs
measured, 3.5x the minor page faults; README, "Open problem", now closed). A job process started by
`launch_job` gets neither variable from its worker: its thread count is set explicitly and glibc keeps its
defaults; local Dask workers are also spawned without the trim setting.

Over 400 lines: the four kinds of cluster and the job processes share one lifecycle (start, stop, signals).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from pydantic import Field, ValidationError, model_validator

from .config import ConfigError, Strict, format_errors, read_yaml
from .files import atomic_path

BATCH_KINDS = ("slurm", "pbs")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Exported by Dask's nanny; never passed on to a job process (see the module docstring).
NANNY_VARS = ("MALLOC_TRIM_THRESHOLD_",)
RUNNING_FILE = "running.json"  # written by a task while its job process runs: host and process group


class ClusterConfig(Strict):
    kind: Literal["local", "slurm", "pbs"] = Field("local", description="local processes, or batch jobs")
    workers: int = Field(2, ge=0, description="local worker processes (0: in this process) or batch jobs")
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler (shared disk)")
    cores: int | None = Field(None, ge=1, description="cores per worker (local default: the machine's "
                                                       "cores / workers); a job process uses this many threads")
    memory: str | None = Field(None, description="memory per batch job, e.g. 32GB (SLURM/PBS)")
    gpus: int | None = Field(None, ge=0, description="GPUs per worker / batch job (local default: the "
                                                     "machine's GPUs shared out between the workers)")
    queue: str | None = Field(None, description="partition (SLURM) or queue (PBS)")
    walltime: str | None = Field(None, pattern=r"^(\d+-)?\d{1,3}:\d{2}(:\d{2})?$",
                                 description="per batch job, HH:MM:SS (SLURM also D-HH:MM:SS)")
    account: str | None = Field(None, description="account / project charged for the batch jobs")
    job_directives: list[str] = Field([], description="extra #SBATCH / #PBS lines, e.g. --constraint=a100")
    prologue: list[str] = Field([], description="shell lines run before the worker starts (module load, "
                                                "venv activation)")
    python: str | None = Field(None, description="python on the compute nodes (default: this one)")
    local_directory: str | None = Field(None, description="worker scratch folder on the nodes")
    interface: str | None = Field(None, description="network interface of the nodes, e.g. ib0")

    @model_validator(mode="after")
    def _batch_needs(self):
        if self.kind in BATCH_KINDS and not self.scheduler:
            missing = [f for f in ("cores", "memory", "walltime") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a {self.kind} cluster needs {', '.join(missing)} (per batch job)")
            if self.workers < 1:
                raise ValueError(f"workers: the number of {self.kind} batch jobs, at least 1")
        return self

    @property
    def in_process(self) -> bool:
        return self.kind == "local" and self.workers == 0 and not self.scheduler

    def threads(self) -> int | None:
        """Threads of one job process; None on an existing scheduler unless `cores` says (the worker decides)."""
        if self.cores:
            return self.cores
        if self.scheduler:
            return None
        return max(1, cpu_count() // max(1, self.workers))

    def gpus_per_worker(self) -> int:
        """GPUs each local worker owns; 0 elsewhere (a batch job's or remote worker's own GPUs are its visible ones)."""
        if self.gpus is not None:
            return self.gpus
        if self.kind != "local" or self.scheduler:
            return 0
        n = len(visible_gpus())
        return max(1, n // max(1, self.workers)) if n else 0

    def describe(self) -> str:
        if self.scheduler:
            return f"scheduler {self.scheduler}"
        if self.in_process:
            return "in this process"
        return f"{self.workers} {self.kind} worker{'s' if self.workers != 1 else ''}"


def cluster_config(data: dict | None = None, source: str = "<dict>", **override) -> ClusterConfig:
    data = {**(data or {}), **{k: v for k, v in override.items() if v is not None}}
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source, "cluster config")) from None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set (batch allocations set it), else nvidia-smi's."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


# ---------------------------------------------------------------- batch clusters
def _jobqueue_kwargs(cfg: ClusterConfig) -> dict:
    """Arguments of dask-jobqueue's SLURMCluster / PBSCluster: one worker per batch job, one task at a time
    (cores=1 gives the worker one thread), with `cores` CPUs and `gpus` GPUs booked for the job it runs."""
    gpus = cfg.gpus or 0
    kw = {"cores": 1, "processes": 1, "memory": cfg.memory, "queue": cfg.queue, "walltime": cfg.walltime,
          "account": cfg.account, "job_script_prologue": list(cfg.prologue), "python": cfg.python or sys.executable,
          "local_directory": cfg.local_directory, "interface": cfg.interface, "job_name": "temsynth-worker",
          "job_extra_directives": list(cfg.job_directives)}
    if cfg.kind == "slurm":
        kw["job_cpu"] = cfg.cores
        if gpus:
            kw["job_extra_directives"] = [f"--gres=gpu:{gpus}", *kw["job_extra_directives"]]
    else:
        kw["resource_spec"] = f"select=1:ncpus={cfg.cores}" + (f":ngpus={gpus}" if gpus else "") + \
                              f":mem={cfg.memory}"
    return {k: v for k, v in kw.items() if v is not None}


def _jobqueue_classes(kind: str):
    try:
        import dask_jobqueue
    except ImportError:  # pragma: no cover - a dependency in setup.cfg
        raise ConfigError("a slurm/pbs cluster needs dask-jobqueue (pip install dask-jobqueue)") from None
    return {"slurm": (dask_jobqueue.SLURMCluster, dask_jobqueue.slurm.SLURMJob),
            "pbs": (dask_jobqueue.PBSCluster, dask_jobqueue.pbs.PBSJob)}[kind]


def job_script(cfg: ClusterConfig, scheduler: str = "tcp://SCHEDULER:8786") -> str:
    """The batch script dask-jobqueue submits for each worker (what `--job-script` prints), built by
    dask-jobqueue's own job class from the same arguments the cluster gets."""
    if cfg.kind not in BATCH_KINDS:
        raise ConfigError(f"cluster kind {cfg.kind!r} submits no batch jobs; choose slurm or pbs")
    _, job_cls = _jobqueue_classes(cfg.kind)
    return job_cls(scheduler=scheduler, name="temsynth-worker", **_jobqueue_kwargs(cfg)).job_script()


# ---------------------------------------------------------------- clusters and clients
@contextlib.contextmanager
def open_client(cfg: ClusterConfig):
    """A Dask client on the configured cluster (None when tasks run in this process); closed on exit."""
    if cfg.in_process:
        yield None
        return
    import dask
    from distributed import Client, LocalCluster

    cluster = None
    saved = dict(os.environ)
    try:
        if cfg.scheduler:
            client = Client(cfg.scheduler)
        elif cfg.kind == "local":
            threads = str(cfg.threads())
            # The nanny exports these before spawning each worker (and into this process: restored below).
            environ = {"MALLOC_TRIM_THRESHOLD_": None, **{v: threads for v in THREAD_VARS}}
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
                cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=40)  # 8787 may be taken
            client = Client(cluster)
        else:
            cluster_cls, _ = _jobqueue_classes(cfg.kind)
            cluster = cluster_cls(**_jobqueue_kwargs(cfg))
            cluster.scale(jobs=cfg.workers)
            client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
        for k in set(os.environ) - set(saved):
            del os.environ[k]
        os.environ.update(saved)


@dataclass
class After:
    """An argument of a task that is the result of an earlier task (Dask orders the two)."""
    key: str


@dataclass
class Task:
    key: str
    fn: Callable
    args: tuple = ()
    info: Any = None  # the caller's own handle (a job, a structure index)
    kwargs: dict = field(default_factory=dict)


def run_tasks(tasks: Iterable[Task], cfg: ClusterConfig, on_result: Callable[[Task, Any], None],
              on_error: Callable[[Task, BaseException], Any] | None = None,
              on_interrupt: Callable[[Any], None] | None = None, ahead_per_worker: int | None = None) -> None:
    """Run every task (in order here, or on Dask), calling on_result(task, result) as each finishes.

    A task that raised, or whose worker died (killed, out of memory), gives on_error(task, error) as its result;
    on_error may raise instead (without it the error is raised). `ahead_per_worker` bounds how many tasks are
    submitted ahead of the workers (tasks are then drawn lazily: ten million pending structures cost nothing up
    front; no `After` arguments then). On an interrupt (Ctrl-C, SIGTERM under `signals_raise`), the pending
    tasks are cancelled and on_interrupt(client) runs before the cluster closes."""
    def failed(task, err):
        if on_error is None:
            raise err
        return on_error(task, err)

    tasks = iter(tasks)
    if cfg.in_process:
        done: dict[str, Any] = {}
        for t in tasks:
            args = tuple(done[a.key] if isinstance(a, After) else a for a in t.args)
            try:
                r = t.fn(*args, **t.kwargs)
            except Exception as err:  # noqa: BLE001 - the caller's on_error decides
                r = failed(t, err)
            if ahead_per_worker is None:
                done[t.key] = r
            on_result(t, r)
        return
    first = next(tasks, None)
    if first is None:
        return
    from distributed import as_completed

    with open_client(cfg) as client:
        futures, by_key, live = {}, {}, {}

        def submit(t):
            args = tuple(futures[a.key] if isinstance(a, After) else a for a in t.args)
            fut = client.submit(t.fn, *args, key=f"{t.key}-{time.time_ns()}", pure=False, **t.kwargs)
            by_key[fut.key], live[fut.key] = t, fut
            if ahead_per_worker is None:
                futures[t.key] = fut  # later tasks may depend on it
            return fut

        try:
            if ahead_per_worker is None:
                running = as_completed([submit(t) for t in (first, *tasks)])
            else:
                n = len(client.scheduler_info().get("workers", {})) or cfg.workers or 1
                window = [first, *itertools.islice(tasks, ahead_per_worker * n - 1)]
                running = as_completed([submit(t) for t in window])
            for fut in running:
                task = by_key.pop(fut.key)
                live.pop(fut.key)
                try:
                    r = fut.result()
                except Exception as err:  # noqa: BLE001 - the caller's on_error decides
                    r = failed(task, err)
                on_result(task, r)
                if ahead_per_worker is not None:
                    nxt = next(tasks, None)
                    if nxt is not None:
                        running.add(submit(nxt))
        except BaseException:
            with contextlib.suppress(Exception):
                client.cancel(list(live.values()))
            if on_interrupt is not None:
                on_interrupt(client)
            raise


@contextlib.contextmanager
def signals_raise():
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt in the main thread, so `finally` blocks stop job processes."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- job processes
def worker_index() -> int | None:
    """This Dask worker's number on a local cluster (names 0..n-1), else None."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return None
    return name if isinstance(name, int) else None


def choose_gpus(n: int, gpus_per_worker: int, index: int | None = None,
                visible: list[str] | None = None) -> list[str]:
    """The GPUs of one job asking for n devices: local worker i owns GPUs [i*g, (i+1)*g) of the visible ones
    (round-robin when there are fewer); any other process (in-process run, batch job, external worker) takes
    the first n of what it sees. [] on a machine without GPUs."""
    visible = visible_gpus() if visible is None else visible
    if not visible:
        return []
    if index is None or not gpus_per_worker:
        return visible[:n]
    own = [visible[(index * gpus_per_worker + k) % len(visible)] for k in range(gpus_per_worker)]
    return own[:n]


def job_env(threads: int | None, gpus: list[str], devices: int, base: dict | None = None) -> dict:
    """A job process's environment: this one without the nanny's settings, its thread count, its GPUs."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in NANNY_VARS}
    threads = threads or cpu_count()
    per_process = str(max(1, threads // max(1, devices)))
    env.update({v: per_process for v in THREAD_VARS})
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        env.pop("ACCELERATE_USE_CPU", None)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
        if devices > 1:
            env["ACCELERATE_USE_CPU"] = "1"  # MULTI_CPU (gloo); `--cpu --num_processes N` would run one process
    return env


def job_command(module_args: list[str], devices: int, python: str | None = None) -> list[str]:
    """`python -m MODULE ...` for one device, `accelerate launch` with `devices` processes for several."""
    python = python or sys.executable
    if devices <= 1:
        return [python, "-m", *module_args]
    with socket.socket() as s:  # a free rendezvous port: two multi-device jobs may share a host
        s.bind(("", 0))
        port = s.getsockname()[1]
    return [python, "-m", "accelerate.commands.launch", "--num_processes", str(devices), "--num_machines", "1",
            "--multi_gpu", "--main_process_port", str(port), "--dynamo_backend", "no", "-m", *module_args]


# Runs before the job's program: ask the kernel to SIGTERM this process when the thread that started it dies
# (the task's thread: a Dask worker killed with its cluster, or a study killed with SIGKILL), then exec.
_DEATHSIG = ("import ctypes, os, signal, sys\n"
             "ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"
             "if os.getppid() != int(sys.argv[1]): sys.exit(143)\n"
             "os.execvp(sys.argv[2], sys.argv[2:])\n")


def launch_job(cmd: list[str], job_dir: Path, env: dict, cwd: str | None, log_name: str = "job.log") -> int:
    """Run one job process in its own process group, its output in JOB_DIR/job.log, and return its exit status.
    Whatever interrupts the wait (Ctrl-C, SIGTERM turned into KeyboardInterrupt, a cancelled task) stops the
    job's whole process group first (SIGTERM, then SIGKILL after 10 s)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    cwd = cwd if cwd and os.path.isdir(cwd) else None  # the submitting host's folder, where the node has it
    full = [sys.executable, "-c", _DEATHSIG, str(os.getpid()), *cmd] if sys.platform == "linux" else cmd
    with open(job_dir / log_name, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}: "
                  f"{' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)
    marker = job_dir / RUNNING_FILE
    try:
        # Renamed into place whole: a reader (stop_jobs, which skips what it cannot parse) must never find it
        # empty or half written while the job runs, or it would leave the job process running.
        with atomic_path(marker) as tmp:
            tmp.write_text(json.dumps({"host": socket.gethostname(), "pgid": proc.pid, "started": time.time(),
                                       "command": cmd}))
        return proc.wait()
    except BaseException:
        stop_group(proc.pid, leader=proc)
        raise
    finally:
        marker.unlink(missing_ok=True)


def stop_group(pgid: int, grace_s: float = 10.0, leader: subprocess.Popen | None = None) -> None:
    """SIGTERM a process group, SIGKILL what is left after grace_s (`leader`: our child, reaped here)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.time() + grace_s
    while time.time() < deadline:
        if leader is not None:
            leader.poll()  # a dead but unreaped leader would keep the group "alive"
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if leader is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(timeout=5)


def stop_jobs(job_dirs: list[str]) -> list[str]:
    """Stop the job processes running on this host under the given folders (their RUNNING_FILE); runs in
    the study's process and, through `Client.run`, on every worker of a remote cluster."""
    host, stopped = socket.gethostname(), []
    for d in job_dirs:
        try:
            info = json.loads((Path(d) / RUNNING_FILE).read_text())
        except (OSError, ValueError):
            continue
        if info.get("host") == host:
            stop_group(int(info["pgid"]), grace_s=5.0)
            stopped.append(str(d))
    return stopped


def last_error_line(log: Path, limit: int = 400) -> str:
    """The line that says why a job process failed: a command's own error message (`prog: ...`, through the
    end of the log) or the last line of a traceback, else the last non-empty line."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    text = text[text.rfind("\n=== "):] if "\n=== " in text else text
    lines = [l.rstrip() for l in text.splitlines() if l.strip() and not l.startswith("=== ")]
    if not lines:
        return "(empty log)"
    for i in range(len(lines) - 1, -1, -1):
        head = lines[i].split(":", 1)[0]
        if head.startswith("training.") or head.endswith(("Error", "Exception", "Interrupt", "Exit")):
            return " ".join(l.strip() for l in lines[i:])[:limit]
    return lines[-1][:limit]


# ---------------------------------------------------------------- command line
def add_cluster_arguments(p, workers_default_help: str = "the file's") -> None:
    g = p.add_argument_group("cluster (override the file's `cluster:` section)")
    g.add_argument("--workers", type=int, help=f"local worker processes, 0: in this process; with --cluster "
                   f"slurm/pbs: batch jobs (default: {workers_default_help})")
    g.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786 (shared disk)")
    g.add_argument("--cluster", choices=["local", "slurm", "pbs"], help="where workers run (default: local)")
    g.add_argument("--cluster-config", metavar="YAML", help="cluster fields (or a file with a `cluster:` section)")
    g.add_argument("--queue", help="SLURM partition / PBS queue")
    g.add_argument("--walltime", help="per batch job, HH:MM:SS")
    g.add_argument("--cores", type=int, help="cores per worker; each job process runs this many threads")
    g.add_argument("--memory", help="memory per batch job, e.g. 32GB")
    g.add_argument("--gpus", type=int, help="GPUs per worker / batch job")
    g.add_argument("--account", help="account / project charged for the batch jobs")
    g.add_argument("--job-directive", action="append", dest="job_directives", metavar="LINE",
                   help="extra #SBATCH/#PBS option, e.g. --constraint=a100 (repeatable)")
    g.add_argument("--prologue", action="append", metavar="LINE",
                   help="shell line run in each batch job before the worker, e.g. 'module load cuda' (repeatable)")
    g.add_argument("--job-script", action="store_true", help="print the batch job script and exit")


def cluster_from_args(args, base: dict | None = None, source: str = "command line",
                      fallback: dict | None = None) -> ClusterConfig:
    """Cluster fields: `fallback` (e.g. a study's top-level workers/scheduler), then `base` (the file's
    `cluster:`), then --cluster-config, then the flags."""
    data = {**(fallback or {}), **(base or {})}
    if getattr(args, "cluster_config", None):
        extra = read_yaml(args.cluster_config, "cluster config")
        data.update(extra.get("cluster", extra))
        source = f"{args.cluster_config} + command line"
    flags = {"kind": args.cluster, "workers": args.workers, "scheduler": args.scheduler, "queue": args.queue,
             "walltime": args.walltime, "cores": args.cores, "memory": args.memory, "gpus": args.gpus,
             "account": args.account, "job_directives": args.job_directives, "prologue": args.prologue}
    return cluster_config(data, source, **flags)
