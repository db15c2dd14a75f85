"""Statistics for a study: final scores per model, bootstrap CIs of medians, pairwise Mann–Whitney U with Holm.

Medians and rank tests rather than means and t-tests: with five seeds per subset a single diverged run would
dominate a mean, and nothing says Dice across seeds is normal.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

# A trained (or fine-tuned) model is a subset × seed (× fine-tuning amount); job_id is only its current label.
MODEL_KEY = ["subset", "seed", "phase", "finetune_images"]


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]


def bootstrap_median_ci(values, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high): percentile bootstrap CI of the median; low/high are NaN below two finite values."""
    x = _finite(values)
    if x.size == 0:
        return (np.nan, np.nan, np.nan)
    median = float(np.median(x))
    if x.size < 2:
        return (median, np.nan, np.nan)
    res = stats.bootstrap((x,), np.median, n_resamples=n_boot, confidence_level=level, method="percentile",
                          vectorized=True, rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return (median, float(ci.low), float(ci.high))


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = (m - np.arange(m)) * p[order]
    # The running maximum keeps the adjusted values monotone in the raw ones (the step-down rule stops at the
    # first non-rejection, so no later hypothesis may look stronger than an earlier one).
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(np.maximum.accumulate(stepped), 1.0)
    return adjusted


def pairwise_mannwhitney(groups: dict, alternative: str = "two-sided", alpha: float = 0.05) -> list[dict]:
    """Mann–Whitney U for every pair of groups (dict order), Holm-corrected over all pairs of this family.

    U is the statistic for `a`; effect is the rank-biserial correlation 2U/(n_a n_b) − 1 (> 0: `a` tends to score
    higher), cles the common-language effect size U/(n_a n_b) = P(a > b) + ½ P(a = b).
    """
    data = {k: _finite(v) for k, v in groups.items()}
    rows = []
    for a, b in combinations(data, 2):
        xa, xb = data[a], data[b]
        res = stats.mannwhitneyu(xa, xb, alternative=alternative)
        nn = xa.size * xb.size
        rows.append({"a": a, "b": b, "n_a": xa.size, "n_b": xb.size,
                     "median_a": float(np.median(xa)), "median_b": float(np.median(xb)),
                     "U": float(res.statistic), "p": float(res.pvalue),
                     "effect": 2 * res.statistic / nn - 1, "cles": res.statistic / nn})
    for row, adj in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = float(adj)
        row["significant"] = bool(adj < alpha)
    return rows


def min_attainable_p(n_a: int, n_b: int) -> float:
    """Smallest two-sided exact Mann–Whitney p-value for these sizes (no ties): complete separation."""
    from math import comb

    return min(1.0, 2 / comb(n_a + n_b, n_a))


def final_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Dice at the last epoch of each job × phase × benchmark, one row per model × benchmark.

    A fine-tuning job's table carries its parent's training rows (its metrics start with them), so the training
    rows are deduplicated by model (subset, seed) rather than by job_id: each trained model counts once.
    """
    last = table.loc[table.groupby(["job_id", "phase", "benchmark"], sort=False)["epoch"].idxmax()]
    keep = [c for c in ("study", "job_id", "subset", "seed", "phase", "finetune_images", "benchmark", "epoch",
                        "phase_epoch", "dice", "iou", "dice_pooled", "particle_f1", "count_error",
                        "median_diameter_error", "wasserstein_nm") if c in table.columns]
    # Training rows of jobs that also fine-tune are inherited; sorting them last keeps the training job's own row.
    inherited = last["phase"].eq("train") & last["job_id"].isin(table.loc[table["phase"] == "finetune", "job_id"])
    out = (last[keep].assign(_child=inherited)
           .sort_values(["_child", *MODEL_KEY, "benchmark"], kind="stable")
           .drop_duplicates(MODEL_KEY + ["benchmark"], keep="first")
           .drop(columns="_child"))
    return out.sort_values(MODEL_KEY + ["benchmark"], kind="stable").reset_index(drop=True)
