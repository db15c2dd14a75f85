"""Study throughput on this machine, measured in one run: jobs/hour, scheduler overhead, 2-worker speed-up.

    python benchmarks/bench_study.py [--study training/examples/study_demo.yaml] [--seeds 2] [--epochs 3]

Runs a reduced copy of the study (same subsets, data and models; fewer seeds and epochs) three times into
fresh folders: in this process without Dask, on a local Dask cluster of 1 worker, and of 2 workers.
Overhead = (wall time on 1 Dask worker - sum of the jobs' own times) / sum of the jobs' own times, cluster
start-up included. Speed-up = wall time on 1 worker / wall time on 2.
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from training.study import run_study


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--study", default="training/examples/study_demo.yaml")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=2)
    a = p.parse_args()
    base = yaml.safe_load(Path(a.study).read_text())
    base["seeds"] = a.seeds
    base["training"]["epochs"] = a.epochs
    if base.get("finetune"):
        base["finetune"]["settings"]["epochs"] = a.finetune_epochs
    tmp = Path(tempfile.mkdtemp(prefix="bench_study_"))
    out = {}
    try:
        for label, workers in (("in_process", 0), ("dask_1_worker", 1), ("dask_2_workers", 2)):
            cfg = {**base, "output_dir": str(tmp / label), "workers": workers}
            f = tmp / f"{label}.yaml"
            f.write_text(yaml.safe_dump(cfg))
            t0 = time.perf_counter()
            s = run_study(f, progress=False, log=lambda *x: None)
            wall = time.perf_counter() - t0
            t = s["timing"]
            out[label] = {"jobs": t["jobs_run"], "wall_s": round(wall, 1), "job_s": t["job_seconds"],
                          "jobs_per_hour": round(3600 * t["jobs_run"] / wall, 1), "failed": len(s["failed"])}
        one, two = out["dask_1_worker"], out["dask_2_workers"]
        out["scheduler_overhead_1_worker"] = round((one["wall_s"] - one["job_s"]) / one["job_s"], 4)
        out["speedup_2_over_1_workers"] = round(one["wall_s"] / two["wall_s"], 2)
        out["dask_1_worker_over_in_process"] = round(one["wall_s"] / out["in_process"]["wall_s"], 3)
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
