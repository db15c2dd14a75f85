"""Study: subsets × seeds × fine-tuning on Dask, resume after a kill, failures, the results table."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from generators.config import ConfigError
from tests.conftest import process_group_gone
from training.results import RESULT_SCHEMA
from training.study import load_study, run_study

ROOT = Path(__file__).resolve().parents[1]


def study_dict(data_dir, out, **over):
    d = {"name": "tiny-study", "output_dir": str(out), "seeds": 2, "workers": 0,
         "subsets": [{"name": "first_condition", "sources": [{"path": str(data_dir), "query": "condition_index == 0"}]},
                     {"name": "second_condition",
                      "sources": [{"path": str(data_dir), "query": "condition_index == 1"}]}],
         "benchmarks": [{"name": "validation", "path": str(data_dir)},
                        {"name": "test", "path": str(data_dir), "split": "test"}],
         "training": {"epochs": 1, "batch_size": 4, "model": {"unet": {"depth": 2, "base_width": 4}}},
         "finetune": {"data": {"path": str(data_dir), "split": "test"}, "amounts": [2],
                      "settings": {"epochs": 1, "batch_size": 2}}}
    d.update(over)
    return d


def write(tmp_path, d, name="study.yaml"):
    f = tmp_path / name
    f.write_text(yaml.safe_dump(d))
    return f


def test_jobs_follow_the_seed_study_recipe(built, tmp_path):
    study, jobs = load_study(write(tmp_path, study_dict(built, tmp_path / "s")))
    assert [j["job_id"] for j in jobs] == ["first_condition-s0", "first_condition-s0-ft2", "first_condition-s1",
                                           "first_condition-s1-ft2", "second_condition-s0",
                                           "second_condition-s0-ft2", "second_condition-s1", "second_condition-s1-ft2"]
    train, ft = jobs[0]["config"], jobs[1]["config"]
    assert ft["init_from"] == str(Path(train["output_dir"]) / "model")
    assert ft["optimizer"]["lr"] == pytest.approx(train["optimizer"]["lr"] / 2)
    assert ft["patience"] == 10 and ft["data"]["n_images"] == 2 and ft["model"] == train["model"]
    assert load_study(write(tmp_path, {k: v for k, v in study_dict(built, "x").items() if k != "seeds"}))[0].seed_list \
        == [0, 1, 2, 3, 4]  # five seeds unless told otherwise


def test_tiny_study_end_to_end_with_one_row_per_job_epoch_benchmark(built, tmp_path):
    # On 2 local Dask workers (the in-process path: test_failed_jobs_are_listed_and_retried_on_request).
    s = run_study(write(tmp_path, study_dict(built, tmp_path / "s", workers=2)), progress=False, log=lambda *a: None)
    assert s["done"] == 8 and not s["failed"]
    # Each job ran as its own process, with the runner's thread count, its output in the job's log.
    done = json.loads((tmp_path / "s" / "jobs" / "first_condition-s0" / "finetune-2" / "done.json").read_text())
    assert done["returncode"] == 0 and done["devices"] == 1 and int(done["threads"]) == s["timing"]["threads_per_job"]
    assert "best epoch" in Path(done["log"]).read_text() and done["summary"]["phase"] == "finetune"
    t = pq.read_table(s["results"])
    assert t.schema.equals(RESULT_SCHEMA)
    rows = t.to_pylist()
    keys = [(r["job_id"], r["phase"], r["epoch"], r["benchmark"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8 * 1 * 2
    ft = [r for r in rows if r["phase"] == "finetune"]
    assert {r["epoch"] for r in ft} == {2} and {r["finetune_images"] for r in ft} == {2}
    assert {r["subset_query"] for r in rows} == {"condition_index == 0", "condition_index == 1"}
    assert all(len(r["data_fingerprint"]) == 64 and len(r["model_fingerprint"]) == 64 for r in rows)
    # Fine-tuning jobs carry the subset of the model they started from, not their own experimental data.
    assert {r["data_path"] for r in ft} == {str(built)}
    # A folder written before `devices_per_job` existed resumes (the field counts as its default there).
    sj = tmp_path / "s" / "study.json"
    doc = json.loads(sj.read_text())
    del doc["config"]["devices_per_job"], doc["config"]["cluster"]
    sj.write_text(json.dumps(doc))
    again = run_study(write(tmp_path, study_dict(built, tmp_path / "s", workers=2)), progress=False,
                      log=lambda *a: None)
    assert again["timing"]["jobs_run"] == 0 and pq.read_table(s["results"]).num_rows == 16
    from temsynth.cli import main

    assert main(["study", "report", str(tmp_path / "s")]) == 0
    report = tmp_path / "s" / "report"
    assert {"report.html", "report.md", "fig1_final_dice.png", "fig2_dynamics.png", "statistics.csv",
            "pairwise.csv"} <= {p.name for p in report.iterdir()}
    assert "first_condition" in (report / "report.md").read_text()
    assert main(["study", "report", str(tmp_path)]) == 2  # no results table there


def test_kill_and_rerun_on_dask_skips_finished_jobs(built, tmp_path):
    f = write(tmp_path, study_dict(built, tmp_path / "s", seeds=[0]))  # 4 jobs
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "temsynth", "study", "run", str(f), "--quiet"]
    proc = subprocess.Popen(cmd + ["--workers", "0"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a busy shared machine runs a tiny job in minutes, not seconds
    done = lambda: sorted((tmp_path / "s" / "jobs").glob("*/*/done.json"))
    while len(done()) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the study ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The study could not clean up; the job process it was running still goes (parent-death signal).
    markers = list((tmp_path / "s" / "jobs").glob("*/*/running.json"))
    assert len(markers) <= 1
    for m in markers:
        assert process_group_gone(json.loads(m.read_text())["pgid"])
    before = {p: p.stat().st_mtime_ns for p in done()}
    assert 1 <= len(before) < 4
    r = subprocess.run(cmd + ["--workers", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["done"] == 4 and out["timing"]["jobs_run"] == 4 - len(before)
    assert all(p.stat().st_mtime_ns == m for p, m in before.items())  # finished jobs were not run again
    rows = pq.read_table(tmp_path / "s" / "results.parquet").to_pylist()
    keys = [(r["job_id"], r["phase"], r["epoch"], r["benchmark"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8


def test_sigterm_stops_the_job_processes_on_dask_workers_and_a_rerun_resumes(built, tmp_path):
    d = study_dict(built, tmp_path / "s", seeds=[0], finetune=None)
    d["subsets"] = d["subsets"][:1]
    d["training"]["epochs"] = 3
    f = write(tmp_path, d)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "temsynth", "study", "run", str(f), "--quiet"]
    proc = subprocess.Popen(cmd + ["--workers", "1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    job = tmp_path / "s" / "jobs" / "first_condition-s0" / "train"
    deadline = time.time() + 600
    while not (job / "running.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the study ended before it could be stopped"
    pgid = json.loads((job / "running.json").read_text())["pgid"]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Re-run the same command to resume" in err
    assert process_group_gone(pgid)
    assert not (job / "error.json").exists() and not (job / "done.json").exists()  # stopped, not failed
    r = subprocess.run(cmd + ["--workers", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["done"] == 1 and out["timing"]["jobs_run"] == 1


def test_failed_jobs_are_listed_and_retried_on_request(built, tmp_path):
    d = study_dict(built, tmp_path / "s", seeds=[0])
    d["subsets"][1]["sources"][0]["query"] = "dose_e_per_A2 > 1e9"  # selects nothing: that job must fail
    f = write(tmp_path, d)
    s = run_study(f, progress=False, log=lambda *a: None)
    assert set(s["failed"]) == {"second_condition-s0", "second_condition-s0-ft2"}
    # A crashed job: its exit status and error line; the other jobs ran on.
    assert "selects no records" in s["failed"]["second_condition-s0"]
    assert s["failed"]["second_condition-s0"].startswith("exit status 2: training.train:")
    assert "parent job second_condition-s0 did not finish" in s["failed"]["second_condition-s0-ft2"]
    assert s["done"] == 2 and pq.read_table(s["results"]).num_rows == 2 * 2
    lines = []
    again = run_study(f, progress=False, log=lines.append)
    assert again["timing"]["jobs_run"] == 0 and "--retry-failed" in lines[0]
    retried = run_study(f, retry_failed=True, progress=False, log=lambda *a: None)
    assert retried["timing"]["jobs_run"] == 2 and set(retried["failed"]) == set(s["failed"])


def test_bad_study_files_name_the_field(built, tmp_path):
    with pytest.raises(ConfigError, match="seeds"):
        load_study(write(tmp_path, study_dict(built, "x", seeds=[1, 1])))
    with pytest.raises(ConfigError, match="subsets"):
        load_study(write(tmp_path, study_dict(built, "x", subsets=[])))
    with pytest.raises(ConfigError, match=r"(?s)job first_condition-s0.*epochs"):
        load_study(write(tmp_path, study_dict(built, "x", training={"epochs": -1})))
    with pytest.raises(ConfigError, match="finetune.amounts"):
        d = study_dict(built, "x")
        d["finetune"]["amounts"] = [0]
        load_study(write(tmp_path, d))
    r = subprocess.run([sys.executable, "-m", "temsynth", "study", "run", str(tmp_path / "missing.yaml")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_an_edited_subset_is_not_mistaken_for_a_finished_one(built, tmp_path):
    from training.study import StudyError

    d = study_dict(built, tmp_path / "s", seeds=[0], finetune=None)
    d["subsets"] = d["subsets"][:1]
    run_study(write(tmp_path, d), progress=False, log=lambda *a: None)
    d["subsets"][0]["sources"][0]["query"] = "condition_index == 1"
    with pytest.raises(StudyError, match="first_condition-s0 finished with another config.*data"):
        run_study(write(tmp_path, d), progress=False, log=lambda *a: None)


@pytest.mark.slow
def test_a_job_asking_for_two_devices_runs_under_accelerate_launch(built, tmp_path):
    """devices_per_job: 2 starts the job with `accelerate launch` (2 gloo processes on a CPU machine)."""
    d = study_dict(built, tmp_path / "s", seeds=[0], finetune=None, devices_per_job=2)
    d["subsets"] = d["subsets"][:1]
    s = run_study(write(tmp_path, d), progress=False, log=lambda *a: None)
    assert s["done"] == 1 and not s["failed"], s["failed"]
    job = tmp_path / "s" / "jobs" / "first_condition-s0" / "train"
    assert json.loads((job / "model" / "config.json").read_text())["world_size"] == 2
    assert "accelerate.commands.launch" in (job / "job.log").read_text()


def test_one_metrics_schema_for_the_epoch_file_and_the_results_table(tmp_path):
    """metrics.csv is written and read through METRICS_SCHEMA (values come back typed, a blank particle score as
    None), and the results table's score columns are the very same fields."""
    from training.results import (
        EPOCH_SCORES,
        METRICS_SCHEMA,
        RESULT_SCHEMA,
        append_metrics,
        read_metrics,
        rewrite_metrics,
    )

    row = {f.name: None for f in METRICS_SCHEMA} | {"run": "r", "phase": "train", "epoch": 3, "phase_epoch": 3,
                                                      "benchmark": "validation", "n_images": 4, "dice": 0.1 + 0.2,
                                                      "iou": 1 / 3, "dice_pooled": 0.5, "particle_f1": 0.25,
                                                      "train_loss": 1e-7, "lr": 0.01, "epoch_seconds": 2.5}
    path = tmp_path / "metrics.csv"
    rewrite_metrics(path, [row])
    append_metrics(path, [row | {"epoch": 4, "phase_epoch": 4}])
    back = read_metrics(path)
    assert back[0] == row and [r["epoch"] for r in back] == [3, 4]  # floats round-trip exactly, ints stay ints
    assert back[0]["count_error"] is None and isinstance(back[0]["n_images"], int)
    for f in EPOCH_SCORES:
        assert RESULT_SCHEMA.field(f.name) == METRICS_SCHEMA.field(f.name) == f


def test_a_job_state_is_written_and_read_typed(tmp_path):
    from training.study import JobState, StudyError, StudyJob, job_state, write_job_state

    job = StudyJob("a-s0", "a", 0, "train", 0, None, {"output_dir": str(tmp_path / "a-s0")})
    job.folder.mkdir(parents=True)
    assert job_state(job) is None  # never ended: the study runs it
    # a done.json as the study wrote it before the state was typed: the same keys, read back typed
    old = {"job_id": "a-s0", "started": 1.5, "seconds": 2.0, "finished": 3.5, "returncode": 0, "host": "h",
           "gpus": [], "devices": 1, "threads": "2", "log": "job.log", "status": "done",
           "summary": {"model_dir": "m", "metrics_file": "m/metrics.csv"}, "model_fingerprint": "f" * 64}
    (job.folder / "done.json").write_text(json.dumps(old, indent=2))
    s = job_state(job)
    assert s.status == "done" and s.summary["model_dir"] == "m" and s.threads == "2" and s.error is None
    assert s.model_dump(exclude_unset=True) == old  # written back, it holds what it held
    (job.folder / "done.json").unlink()
    failed = write_job_state(job.folder, JobState(job_id="a-s0", status="failed", error="exit status 2: boom"))
    assert not (job.folder / "done.json").exists() and job_state(job) == failed
    assert json.loads((job.folder / "error.json").read_text()) == {"job_id": "a-s0", "status": "failed",
                                                                   "error": "exit status 2: boom"}
    (job.folder / "error.json").write_text('{"job_id": "a-s0", "status": "finished?"}')
    with pytest.raises(StudyError, match="error.json is not a job state"):
        job_state(job)
