"""The study results table, defined once: one row per job × phase × epoch × benchmark.

Written by training.study (results.parquet in the study folder), read by training.report, pandas, polars or
`datasets.load_dataset("parquet", data_files=...)`.
"""
from __future__ import annotations

import pyarrow as pa

RESULTS_FILE = "results.parquet"   # in the study folder
STUDY_FILE = "study.json"          # the study's config, subsets, jobs, failures and timing

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
    pa.field("epoch", pa.int64()),                 # global epoch: fine-tuning epochs continue the training count
    pa.field("phase_epoch", pa.int64()),
    pa.field("benchmark", pa.string()),
    pa.field("n_images", pa.int64()),              # images in the benchmark
    pa.field("dice", pa.float64()),                # mean per-image Dice
    pa.field("iou", pa.float64()),
    pa.field("dice_pooled", pa.float64()),
    # particle scores (training/instances.py; null where a side had no particle, or from an older run)
    pa.field("particle_precision", pa.float64()),
    pa.field("particle_recall", pa.float64()),
    pa.field("particle_f1", pa.float64()),         # at IoU >= 0.5, particles on the field's border ignored
    pa.field("count_error", pa.float64()),         # (predicted - true) / true particles
    pa.field("median_diameter_error", pa.float64()),
    pa.field("wasserstein_nm", pa.float64()),      # between the predicted and true diameter distributions
    pa.field("touching_pairs_separated", pa.float64()),
    pa.field("train_loss", pa.float64()),
    pa.field("lr", pa.float64()),
    pa.field("model_fingerprint", pa.string()),    # sha256 of the job's final model.safetensors
])
