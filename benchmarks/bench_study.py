"""Study throughput on this machine, every figure from one run: jobs/hour with 0, 1 and 2 local workers,
one job's images/s in a Dask worker vs a plain process, scheduler overhead, and what the nanny's malloc setting
costs a job.

    python benchmarks/bench_study.py [--data tem_au_np] [--seeds 2] [--epochs 3] [--finetune-epochs 2] [--rounds 2]

The study is a reduced copy of the example study's design on one demo dataset (built into a temporary folder
with `generate --preset demo` unless --data names one): four subsets (with / without planar defects, defocus
within 5 nm / all), 24 training images each, `--seeds` seeds, and one fine-tuning job per model (4 images of
the test split). It runs with `--workers 0` (jobs one after another from this process), 1 and 2 local Dask
workers, each into a fresh folder, `--rounds` times in alternating order (0 1 2, 2 1 0, ...). Every job is its
own process in all three.

- jobs/hour = jobs / wall time of `run_study` (cluster start included), summed over the rounds.
- overhead = (wall - sum of the jobs' own times) / sum of the jobs' own times, on 1 worker (nothing runs in
  parallel there, so the gap is scheduling, cluster start and result writing). A job's own time is its process
  from start to exit, the interpreter's start-up included.
- images/s = training images per epoch x epochs / sum of the epochs' seconds (metrics.csv: training and the
  benchmark pass), for one training job run (a) as `python -m training.train` from here, (b) as the only job of
  a study on 1 Dask worker, (a) and (b) twice each in the order a b b a, (c) as (a) with
  MALLOC_TRIM_THRESHOLD_=65536, the variable a Dask nanny exports
  into its worker; (a) and (c) also report the process's user and system CPU seconds and minor page faults.
The machine is shared: compare the ratios, which come from one run, not absolute figures between runs.
"""
import argparse
import csv
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generators.cluster import cpu_count, job_env  # noqa: E402  (after the sys.path line above: runs from a checkout)
from training.study import load_study, run_study  # noqa: E402  (after the sys.path line above: runs from a checkout)


def study_dict(data: str, out: Path, seeds: int, epochs: int, ft_epochs: int, workers: int) -> dict:
    src = lambda q=None: {"path": data, "n_images": 24, **({"query": q} if q else {})}
    return {"name": "bench_study", "output_dir": str(out), "seeds": seeds, "workers": workers,
            "subsets": [{"name": "with_defects", "sources": [src("any(particle_defect_type != 'none')")]},
                        {"name": "no_defects", "sources": [src("all(particle_defect_type == 'none')")]},
                        {"name": "narrow_defocus", "sources": [src("-5 <= defocus_nm <= 5")]},
                        {"name": "wide_defocus", "sources": [src()]}],
            "benchmarks": [{"name": "validation", "path": data, "split": "validation"}],
            "training": {"epochs": epochs, "batch_size": 8,
                         "model": {"architecture": "unet", "unet": {"depth": 3, "base_width": 8, "norm": "group"}},
                         "optimizer": {"name": "adam", "lr": 0.01, "lr_decay_per_epoch": 0.8},
                         "augment": {"crop_px": 128, "flips": True, "rot90": True, "normalise": "minmax"}},
            "finetune": {"data": {"path": data, "split": "test"}, "amounts": [4],
                         "settings": {"epochs": ft_epochs, "batch_size": 4}}}


def _write(f: Path, d: dict) -> Path:
    f.write_text(yaml.safe_dump(d))
    return f


def images_per_s(metrics: Path, n_images: int) -> float:
    rows = list(csv.DictReader(metrics.open()))
    epochs = {int(r["phase_epoch"]): float(r["epoch_seconds"]) for r in rows}
    return round(n_images * len(epochs) / sum(epochs.values()), 1)


def plain_job(config: dict, out: Path, extra_env: dict) -> dict:
    """The job as `python -m training.train` from here, with the runner's environment for one local job."""
    cfg = {**config, "output_dir": str(out)}
    f = out.with_suffix(".json")
    f.write_text(json.dumps(cfg))
    env = {**job_env(cpu_count(), [], 1), **extra_env}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "training.train", "--config", str(f), "--quiet"], env=env, check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"images_per_s": images_per_s(out / "metrics.csv", n_train(config)), "wall_s": round(wall, 1),
            "user_s": round(after.ru_utime - before.ru_utime, 1), "sys_s": round(after.ru_stime - before.ru_stime, 1),
            "minor_faults": after.ru_minflt - before.ru_minflt}


def n_train(config: dict) -> int:
    return sum(s["n_images"] for s in (config["data"] if isinstance(config["data"], list) else [config["data"]]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", help="a demo dataset folder (default: build one into a temporary folder)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="runs of each mode, the order reversed every other round")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_study_"))
    out = {"cpu_cores": cpu_count()}
    try:
        data = a.data
        if not data:
            data = str(tmp / "tem_au_np")
            subprocess.run([sys.executable, "-m", "temsynth", "generate", "--preset", "demo", "--out", data,
                            "--quiet"], check=True, cwd=ROOT)
        data = str(Path(data).resolve())
        mk = lambda label, workers, **kw: study_dict(data, tmp / label, a.seeds, a.epochs,
                                                     a.finetune_epochs, workers) | kw

        # One job: a plain process and the same job on a Dask worker, in the order A B B A (the machine is
        # shared: drift in its load falls on both alike), then a plain process with the nanny's setting.
        one = mk("one_job", 1, seeds=[0], finetune=None)
        one["subsets"] = one["subsets"][3:]
        job = load_study(_write(tmp / "one_job.yaml", one))[1][0]
        plain, worker = [], []
        for r, order in enumerate((("plain", "worker"), ("worker", "plain"))):
            for what in order:
                if what == "plain":
                    plain.append(plain_job(job["config"], tmp / f"plain{r}", {}))
                else:
                    f = _write(tmp / f"one_job{r}.yaml", {**one, "output_dir": str(tmp / f"one_job{r}")})
                    s = run_study(f, progress=False, log=lambda *x: None)
                    assert not s["failed"], s["failed"]
                    j = load_study(f)[1][0]
                    worker.append(images_per_s(Path(j["config"]["output_dir"]) / "metrics.csv", n_train(j["config"])))
        trim = plain_job(job["config"], tmp / "plain_trim", {"MALLOC_TRIM_THRESHOLD_": "65536"})
        p_ips = sum(x["images_per_s"] for x in plain) / len(plain)
        out["one_job"] = {"plain_process": plain, "dask_worker_images_per_s": worker,
                          "worker_over_plain": round(sum(worker) / len(worker) / p_ips, 3),
                          "plain_with_MALLOC_TRIM_THRESHOLD_65536": trim,
                          "trim_slowdown": round(p_ips / trim["images_per_s"], 2)}

        # The study with 0, 1 and 2 workers, `--rounds` times, the order reversed every other round.
        modes = [("workers_0", 0), ("workers_1", 1), ("workers_2", 2)]
        runs = {label: [] for label, _ in modes}
        for r in range(a.rounds):
            for label, workers in (modes if r % 2 == 0 else modes[::-1]):
                f = _write(tmp / f"{label}_{r}.yaml", mk(f"{label}_{r}", workers))
                t0 = time.perf_counter()
                s = run_study(f, progress=False, log=lambda *x: None)
                wall = time.perf_counter() - t0
                runs[label].append({"jobs": s["timing"]["jobs_run"], "wall_s": round(wall, 1),
                                    "job_s": s["timing"]["job_seconds"], "failed": len(s["failed"]),
                                    # why, so that a failed run is never read as a fast one
                                    "errors": sorted(set(s["failed"].values()))[:3],
                                    "threads_per_job": s["timing"]["threads_per_job"]})
        for label, rs in runs.items():
            jobs, wall, job_s = (sum(x[k] for x in rs) for k in ("jobs", "wall_s", "job_s"))
            out[label] = {"runs": rs, "jobs_per_hour": round(3600 * jobs / wall, 1),
                          "overhead": round((wall - job_s) / job_s, 4)}
        wall = {label: sum(x["wall_s"] for x in rs) for label, rs in runs.items()}
        out["speedup_2_workers_over_0"] = round(wall["workers_0"] / wall["workers_2"], 3)
        out["speedup_2_workers_over_1"] = round(wall["workers_1"] / wall["workers_2"], 3)
        out["scheduler_overhead_1_worker"] = out["workers_1"]["overhead"]
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
