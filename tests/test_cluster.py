"""The one Dask runner (generators/cluster.py): batch job scripts, configs, job processes' environment and
devices, a real local cluster, and stopping job processes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from generators.cluster import (
    After,
    ClusterConfig,
    Task,
    choose_gpus,
    cluster_config,
    job_command,
    job_env,
    job_script,
    last_error_line,
    launch_job,
    run_tasks,
    stop_jobs,
)
from generators.config import ConfigError
from tests.conftest import process_group_gone

ROOT = Path(__file__).resolve().parents[1]
SLURM = {"kind": "slurm", "workers": 4, "queue": "gpu", "walltime": "04:00:00", "cores": 8, "memory": "32GB",
         "gpus": 2, "account": "abc123", "job_directives": ["--constraint=a100"],
         "prologue": ["module load cuda", "source /opt/venv/bin/activate"], "python": "/opt/venv/bin/python"}


def test_slurm_job_script_books_what_the_config_asks():
    script = job_script(cluster_config(SLURM))
    lines = script.splitlines()
    for d in ("#SBATCH -p gpu", "#SBATCH -A abc123", "#SBATCH --cpus-per-task=8", "#SBATCH -t 04:00:00",
              "#SBATCH --gres=gpu:2", "#SBATCH --constraint=a100", "#SBATCH -n 1", "#SBATCH -J temsynth-worker"):
        assert d in lines, (d, script)
    assert any(l.startswith("#SBATCH --mem=") for l in lines)
    worker = lines[-1]
    # One worker per job with one thread: one task (one training job of 8 cores) at a time.
    assert worker.startswith("/opt/venv/bin/python -m distributed.cli.dask_worker tcp://SCHEDULER:8786")
    assert "--nthreads 1" in worker and "--nanny" in worker
    assert lines.index("module load cuda") < lines.index(worker)


def test_pbs_job_script_books_what_the_config_asks():
    script = job_script(cluster_config({**SLURM, "kind": "pbs", "job_directives": []}))
    lines = script.splitlines()
    for d in ("#PBS -q gpu", "#PBS -A abc123", "#PBS -l select=1:ncpus=8:ngpus=2:mem=32GB",
              "#PBS -l walltime=04:00:00"):
        assert d in lines, (d, script)
    assert "--nthreads 1" in lines[-1]


def test_the_cluster_submits_the_script_we_print():
    """dask-jobqueue's cluster takes the same arguments and renders the same script (no batch system here:
    the cluster object starts its scheduler locally and submits nothing until scaled)."""
    from dask_jobqueue import SLURMCluster

    from generators.cluster import _jobqueue_kwargs

    cfg = cluster_config(SLURM)
    with SLURMCluster(**_jobqueue_kwargs(cfg), dashboard_address=None) as cluster:
        theirs = cluster.job_script()
        ours = job_script(cfg, scheduler=cluster.scheduler_address)
    assert theirs.replace("--name dummy-name", "--name temsynth-worker") == ours


def test_cluster_options_from_files_and_flags(tmp_path, capsys):
    from temsynth.cli import build_parser, main

    with pytest.raises(ConfigError, match="needs cores, memory, walltime"):
        cluster_config({"kind": "slurm"})
    with pytest.raises(ConfigError, match="walltime"):
        cluster_config({**SLURM, "walltime": "four hours"})
    with pytest.raises(ConfigError, match="unknown field"):
        cluster_config({"workers": 2, "queues": "x"})
    f = tmp_path / "cluster.yaml"
    f.write_text(json.dumps({"cluster": {**SLURM, "queue": "long"}}))
    from generators.cluster import cluster_from_args

    args = build_parser().parse_args(["generate", "--preset", "demo", "--out", "x", "--cluster-config", str(f),
                                      "--queue", "short", "--gpus", "1", "--prologue", "module load x"])
    cfg = cluster_from_args(args, {"workers": 2})
    assert (cfg.kind, cfg.queue, cfg.gpus, cfg.prologue, cfg.workers) == ("slurm", "short", 1, ["module load x"], 4)
    assert main(["generate", "--preset", "demo", "--out", str(tmp_path / "never"), "--cluster", "pbs", "--cores",
                 "4", "--memory", "8GB", "--walltime", "01:00:00", "--queue", "q1", "--job-script"]) == 0
    assert "#PBS -l select=1:ncpus=4:mem=8GB" in capsys.readouterr().out and not (tmp_path / "never").exists()
    assert main(["generate", "--preset", "demo", "--out", str(tmp_path / "never"), "--cluster", "slurm",
                 "--job-script"]) == 2
    assert "needs cores, memory, walltime" in capsys.readouterr().err


def test_job_processes_get_their_threads_devices_and_no_nanny_settings():
    base = {"MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "PATH": "/bin", "CUDA_VISIBLE_DEVICES": "3"}
    env = job_env(4, ["2", "3"], 2, base)
    assert "MALLOC_TRIM_THRESHOLD_" not in env and env["PATH"] == "/bin"
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    cpu = job_env(2, [], 2, base)
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and cpu["ACCELERATE_USE_CPU"] == "1" and cpu["OMP_NUM_THREADS"] == "1"
    assert job_env(2, [], 1, base)["OMP_NUM_THREADS"] == "2" and "ACCELERATE_USE_CPU" not in job_env(2, [], 1, base)
    # Local worker i owns GPUs [i*g, (i+1)*g); other processes take the first ones they see.
    four = ["0", "1", "2", "3"]
    assert choose_gpus(1, 2, index=1, visible=four) == ["2"] and choose_gpus(2, 2, index=1, visible=four) == ["2", "3"]
    assert choose_gpus(1, 1, index=5, visible=four) == ["1"]  # more workers than GPUs: round-robin
    assert choose_gpus(2, 0, index=None, visible=four) == ["0", "1"] and choose_gpus(1, 1, 0, visible=[]) == []
    assert job_command(["training.train", "--config", "c"], 1, "py") == ["py", "-m", "training.train", "--config", "c"]
    multi = job_command(["training.train", "--config", "c"], 2, "py")
    assert multi[:3] == ["py", "-m", "accelerate.commands.launch"] and multi[multi.index("--num_processes") + 1] == "2"
    assert "--multi_gpu" in multi and multi[-4:] == ["-m", "training.train", "--config", "c"]


def test_last_error_line(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("\n=== old attempt\nValueError: old\n\n=== t: cmd\nstep 1\nTraceback (most recent call last):\n"
                   "  File x\nRuntimeError: out of memory\n")
    assert last_error_line(log) == "RuntimeError: out of memory"
    log.write_text("=== t: cmd\ntraining.train: invalid training config (x):\n  - data: selects no records\n")
    assert last_error_line(log) == "training.train: invalid training config (x): - data: selects no records"
    assert last_error_line(tmp_path / "none.log") == "(no log)"


def _report_env(out_dir: str) -> dict:
    """A Dask task: run a job process that reports its environment, as a study job is run."""
    from generators.cluster import worker_index

    env = job_env(1, [], 1)
    code = "import os, json; print(json.dumps({k: os.environ.get(k) for k in ('MALLOC_TRIM_THRESHOLD_', " \
           "'OMP_NUM_THREADS', 'CUDA_VISIBLE_DEVICES')}))"
    rc = launch_job([sys.executable, "-c", code], Path(out_dir), env, None)
    line = (Path(out_dir) / "job.log").read_text().strip().splitlines()[-1]
    return {"rc": rc, "child": json.loads(line), "worker_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "worker": worker_index()}


def _add(a, b):
    return a + b


def test_local_cluster_runs_tasks_in_order_and_job_processes_clean(tmp_path):
    seen = {}
    tasks = [Task("a", _add, (1, 2)), Task("b", _add, (After("a"), 10)),
             Task("env", _report_env, (str(tmp_path / "job"),))]
    run_tasks(tasks, cluster_config(workers=1), lambda t, r: seen.__setitem__(t.key, r))
    assert seen["a"] == 3 and seen["b"] == 13
    r = seen["env"]
    assert r["rc"] == 0 and r["worker"] == 0
    assert r["worker_trim"] is None  # our local workers are spawned without the nanny's malloc setting
    assert r["child"] == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ  # the nanny's environment did not leak into this process
    inproc = {}
    run_tasks(tasks[:2], ClusterConfig(workers=0), lambda t, r: inproc.__setitem__(t.key, r))
    assert inproc == {"a": 3, "b": 13}
    # Lazily drawn tasks; a task that raises gives on_error's result (or on_error raises, and so does the run).
    lazy = (Task(str(i), _add, (i, None if i == 2 else 1)) for i in range(4))
    got = []
    run_tasks(lazy, ClusterConfig(workers=0), lambda t, r: got.append(r), ahead_per_worker=1,
              on_error=lambda t, err: type(err).__name__)
    assert got == [1, 2, "TypeError", 4]
    with pytest.raises(TypeError):
        run_tasks([Task("x", _add, (1, None))], ClusterConfig(workers=0), lambda t, r: None)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


JOB_RUNNER = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from generators.cluster import launch_job, job_env, signals_raise
with signals_raise():
    try:
        launch_job([sys.executable, "-c", sys.argv[3]], Path(sys.argv[2]), job_env(1, [], 1), None)
    except KeyboardInterrupt:
        sys.exit(130)
"""


def _start_job(tmp_path, code):
    marker = tmp_path / "running.json"
    marker.unlink(missing_ok=True)  # a runner killed with SIGKILL leaves its marker behind
    proc = subprocess.Popen([sys.executable, "-c", JOB_RUNNER, str(ROOT), str(tmp_path), code])
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    return proc, json.loads(marker.read_text())["pgid"]


def test_an_interrupted_wait_stops_the_job_process_group(tmp_path):
    # SIGTERM to the runner: its wait is interrupted and the job's whole process group goes, including a
    # grandchild (as `accelerate launch` has).
    sleeper = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; " \
              "time.sleep(60)']); time.sleep(60)"
    proc, pgid = _start_job(tmp_path, sleeper)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert process_group_gone(pgid) and not (tmp_path / "running.json").exists()
    # A runner killed outright (SIGKILL) cleans nothing up: the kernel sends its job SIGTERM (parent-death signal).
    proc, pgid = _start_job(tmp_path, "import time; time.sleep(60)")
    proc.kill()
    proc.wait()
    assert process_group_gone(pgid)
    # stop_jobs finds a job by its folder's marker (what a study runs on each worker's host when interrupted).
    proc, pgid = _start_job(tmp_path, sleeper)
    assert stop_jobs([str(tmp_path)]) == [str(tmp_path)]
    assert process_group_gone(pgid)
    proc.wait(timeout=30)
