"""The metrics schema, defined once: the per-epoch scores of one benchmark (names, Arrow types), shared by a
training run's per-epoch file (metrics.csv, written and read through `METRICS_SCHEMA`), the study results table
(results.parquet, `RESULT_SCHEMA`: one row per job × phase × epoch × benchmark) and the report that reads it.

results.parquet is read by training.report, pandas, polars or `datasets.load_dataset("parquet", data_files=...)`.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pyarrow as pa

from generators.files import atomic_path

RESULTS_FILE = "results.parquet"   # in the study folder
STUDY_FILE = "study.json"          # the study's config, subsets, jobs, failures and timing
METRICS_FILE = "metrics.csv"       # in a training run's folder and its model folder

# Particle scores (training/instances.py): matched at IoU >= 0.5, particles on the field's border ignored; null
# where a side had no particle, or from an older run.
PARTICLE_SCORES = ("particle_precision", "particle_recall", "particle_f1", "count_error", "median_diameter_error",
                   "wasserstein_nm", "touching_pairs_separated")

# One benchmark's scores at one epoch: the columns the per-epoch file and the results table share.
EPOCH_SCORES = [
    pa.field("epoch", pa.int64()),                 # global epoch: fine-tuning epochs continue the training count
    pa.field("phase_epoch", pa.int64()),
    pa.field("benchmark", pa.string()),
    pa.field("n_images", pa.int64()),              # images in the benchmark
    pa.field("dice", pa.float64()),                # mean per-image Dice
    pa.field("iou", pa.float64()),
    pa.field("dice_pooled", pa.float64()),
    # particle scores: F1 at IoU >= 0.5; count_error (predicted - true) / true particles; wasserstein_nm between
    # the predicted and true diameter distributions
    *(pa.field(name, pa.float64()) for name in PARTICLE_SCORES),
    pa.field("train_loss", pa.float64()),
    pa.field("lr", pa.float64()),
]

METRICS_SCHEMA = pa.schema([
    pa.field("run", pa.string()),                  # the training config's name
    pa.field("phase", pa.string()),                # "train" (simulated data) or "finetune" (experimental)
    *EPOCH_SCORES,
    pa.field("epoch_seconds", pa.float64()),
])

RESULT_SCHEMA = pa.schema([
    pa.field("study", pa.string()),                # study name
    pa.field("job_id", pa.string()),               # "{subset}-s{seed}" (+ "-ft{amount}" for a fine-tuning job)
    pa.field("subset", pa.string()),               # data subset name from the study file
    pa.field("subset_query", pa.string()),         # its metadata query ("" = all records)
    pa.field("data_path", pa.string()),            # training dataset folder of the job's first phase
    pa.field("data_fingerprint", pa.string()),     # sha256 over that folder's shard checksums
    pa.field("seed", pa.int64()),
    pa.field("phase", pa.string()),                # "train" (simulated data) or "finetune" (experimental)
    pa.field("finetune_images", pa.int64()),       # experimental images the job fine-tuned on; 0 for phase "train"
    *EPOCH_SCORES,
    pa.field("model_fingerprint", pa.string()),    # sha256 of the job's final model.safetensors
])


def _parse(text: str | None, t: pa.DataType):
    """One CSV cell as its column's type; a blank cell (a score with no particle) or a column an older run did
    not write is None."""
    if text is None or text == "":
        return None
    if pa.types.is_integer(t):
        return int(text)
    if pa.types.is_floating(t):
        return float(text)
    return text


def read_metrics(path: Path) -> list[dict]:
    """The per-epoch file's rows, each value typed by `METRICS_SCHEMA`."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{field.name: _parse(r.get(field.name), field.type) for field in METRICS_SCHEMA}
                for r in csv.DictReader(f)]


def rewrite_metrics(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, METRICS_SCHEMA.names)
        w.writeheader()
        w.writerows(rows)


def append_metrics(path: Path, rows: list[dict]) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, METRICS_SCHEMA.names).writerows(rows)
        f.flush()
        os.fsync(f.fileno())
