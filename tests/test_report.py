"""Study statistics and report: against scipy on known inputs, and rendered from a synthetic results table."""
import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats as sps

from training.report import ReportError, main, write_report
from training.results import RESULT_SCHEMA
from training.stats import bootstrap_median_ci, final_scores, holm, pairwise_mannwhitney

BENCHMARKS = ("sim_test", "experimental")


def results_rows(subsets=None, seeds=5, epochs=3, amounts=(5, 20), ft_epochs=2, benchmarks=BENCHMARKS):
    """Rows as training.study writes them; subset A drawn clearly better than B. Fine-tuning jobs carry their
    parent's training rows, as their metrics files do."""
    subsets = subsets or {"A": 0.85, "B": 0.60}
    rng = np.random.default_rng(1)
    rows = []

    def row(job, subset, seed, phase, amount, epoch, phase_epoch, bench, dice):
        return {"study": "toy", "job_id": job, "subset": subset, "subset_query": "", "data_path": "/d",
                "data_fingerprint": "f", "seed": seed, "phase": phase, "finetune_images": amount, "epoch": epoch,
                "phase_epoch": phase_epoch, "benchmark": bench, "n_images": 10, "dice": dice, "iou": dice / 1.2,
                "dice_pooled": dice, "train_loss": 0.1, "lr": 1e-3, "model_fingerprint": "m"}

    for subset, level in subsets.items():
        for seed in range(seeds):
            train = [row(f"{subset}-s{seed}", subset, seed, "train", 0, e, e, b,
                         level * (1 - 0.3 / e) + rng.normal(0, 0.01))
                     for e in range(1, epochs + 1) for b in benchmarks]
            rows += train
            for amount in amounts:
                job = f"{subset}-s{seed}-ft{amount}"
                rows += [{**r, "job_id": job} for r in train]
                rows += [row(job, subset, seed, "finetune", amount, epochs + e, e, b,
                             min(0.99, level + 0.002 * amount * e + rng.normal(0, 0.01)))
                         for e in range(1, ft_epochs + 1) for b in benchmarks]
    return rows


def write_study(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), path / "results.parquet")
    return path


# ---------------------------------------------------------------- statistics

def test_holm_hand_computed():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # clipped
    assert holm([]).size == 0


def test_pairwise_matches_scipy():
    rng = np.random.default_rng(0)
    groups = {"A": rng.normal(0.8, 0.02, 5), "B": rng.normal(0.7, 0.02, 6), "C": rng.normal(0.79, 0.02, 5)}
    rows = pairwise_mannwhitney(groups)
    assert [(r["a"], r["b"]) for r in rows] == [("A", "B"), ("A", "C"), ("B", "C")]
    for r in rows:
        ref = sps.mannwhitneyu(groups[r["a"]], groups[r["b"]], alternative="two-sided")
        assert r["U"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue)
        assert r["effect"] == pytest.approx(2 * ref.statistic / (r["n_a"] * r["n_b"]) - 1)
        assert r["median_a"] == pytest.approx(np.median(groups[r["a"]]))
    np.testing.assert_allclose([r["p_holm"] for r in rows], holm([r["p"] for r in rows]))
    ab = rows[0]
    assert ab["effect"] == 1.0 and ab["significant"]  # complete separation: p = 2/C(11,5) = 0.0043, ×3 pairs


def test_bootstrap_median_ci():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.8, 0.05, 10), rng.normal(0.8, 0.05, 200)
    med, lo, hi = bootstrap_median_ci(small)
    assert med == np.median(small) and lo <= med <= hi
    assert bootstrap_median_ci(small) == (med, lo, hi)  # seeded
    # Small samples put the percentiles on data values whatever the seed; a few resamples of many do not.
    assert bootstrap_median_ci(large, n_boot=99, seed=1) != bootstrap_median_ci(large, n_boot=99, seed=0)
    _, lo2, hi2 = bootstrap_median_ci(large)
    assert hi2 - lo2 < hi - lo
    _, lo90, hi90 = bootstrap_median_ci(small, level=0.9)
    assert hi90 - lo90 <= hi - lo
    one = bootstrap_median_ci([0.7])
    assert one[0] == 0.7 and np.isnan(one[1]) and np.isnan(one[2])


def test_final_scores_takes_last_epoch_of_each_phase():
    table = pd.DataFrame(results_rows(seeds=2, epochs=3, amounts=(5,), ft_epochs=2))
    final = final_scores(table)
    # 2 subsets × 2 seeds × (train + 1 amount) × 2 benchmarks; inherited training rows count once
    assert len(final) == 2 * 2 * 2 * 2
    assert set(final.loc[final["phase"] == "train", "epoch"]) == {3}
    assert set(final.loc[final["phase"] == "finetune", "epoch"]) == {5}
    assert not final.loc[final["phase"] == "train", "job_id"].str.contains("-ft").any()
    r = final[(final["job_id"] == "A-s1-ft5") & (final["benchmark"] == "sim_test")].iloc[0]
    expect = table[(table["job_id"] == "A-s1-ft5") & (table["benchmark"] == "sim_test") & (table["epoch"] == 5)]
    assert r["dice"] == expect["dice"].item() and r["finetune_images"] == 5 and r["seed"] == 1


# ---------------------------------------------------------------- report

def referenced_pngs(md_text):
    return re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md_text)


def test_report_renders(tmp_path):
    study = write_study(tmp_path / "study", results_rows())
    (study / "study.json").write_text(json.dumps({"name": "toy study", "subsets": [{"name": "B"}, {"name": "A"}],
                                                  "benchmarks": ["experimental", "sim_test"]}))
    path = write_report(study)
    out = study / "report"
    assert path == out / "report.html" and path.exists()
    md = (out / "report.md").read_text()
    pngs = referenced_pngs(md)
    assert set(pngs) == {"fig1_final_dice.png", "fig2_dynamics.png"}
    for name in pngs:
        f = out / name
        assert f.stat().st_size > 10_000
        with Image.open(f) as im:
            assert im.format == "PNG" and min(im.size) > 300
    html = path.read_text()
    assert html.count("data:image/png;base64,") == 2
    assert re.search(r"A beats B on sim_test \(train\): median Dice 0\.\d+ vs 0\.\d+, p_holm = ", md)
    assert "A beats B on experimental (finetune 20)" in md and "A beats B on experimental (finetune 20)" in html

    stats = pd.read_csv(out / "statistics.csv")
    assert len(stats) == 2 * 2 * 3  # subset × benchmark × (train, ft 5, ft 20)
    assert not stats.duplicated(["subset", "benchmark", "phase", "finetune_images"]).any()
    assert (stats["n"] == 5).all()
    assert stats[["benchmark", "subset"]].iloc[0].tolist() == ["experimental", "B"]  # the study file's order
    assert md.startswith("# Study report: toy study")
    assert ((stats["ci_low"] <= stats["median"]) & (stats["median"] <= stats["ci_high"])).all()
    pairs = pd.read_csv(out / "pairwise.csv")
    assert len(pairs) == 2 * 3 and pairs["significant"].all()


def test_report_edge_cases(tmp_path, capsys):
    rows = results_rows(subsets={"only": 0.8}, seeds=1, epochs=1, amounts=())
    study = write_study(tmp_path / "s", rows)
    assert main([str(study), "--out", str(tmp_path / "r"), "--format", "md"]) == 0
    path = tmp_path / "r" / "report.md"
    assert capsys.readouterr().out.strip() == str(path)
    md = path.read_text()
    assert "Only one subset (only): there is nothing to compare, so no pairwise tests." in md
    assert "no confidence interval" in md
    assert all((tmp_path / "r" / p).exists() for p in referenced_pngs(md))
    assert len(pd.read_csv(tmp_path / "r" / "statistics.csv")) == 2


def test_report_one_seed_and_nothing_significant(tmp_path):
    one_seed = write_study(tmp_path / "one", results_rows(seeds=1, amounts=()))
    md = write_report(one_seed, fmt="md").read_text()
    assert "No pairwise tests: one model per subset (one seed)" in md

    rows = results_rows(subsets={"A": 0.8, "B": 0.8, "C": 0.8, "D": 0.8, "E": 0.8}, amounts=())
    md = write_report(write_study(tmp_path / "same", rows), fmt="md").read_text()
    assert "With n = 5 models per subset, no difference between subsets is significant at alpha = 0.05" in md
    assert "no difference could have reached significance" in md  # 10 pairs × 2/252 > 0.05
    assert "beats" not in md


def test_report_errors(tmp_path, capsys):
    with pytest.raises(ReportError, match=re.escape(str(tmp_path / "results.parquet"))):
        write_report(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert "results.parquet: no such file" in capsys.readouterr().err

    pq.write_table(pa.Table.from_pylist([], schema=RESULT_SCHEMA), tmp_path / "results.parquet")
    with pytest.raises(ReportError, match="no rows"):
        write_report(tmp_path)
    pq.write_table(pa.table({"job_id": ["a"], "dice": [0.5]}), tmp_path / "results.parquet")
    with pytest.raises(ReportError, match="missing column.*subset"):
        write_report(tmp_path)
    (tmp_path / "results.parquet").write_text("not parquet")
    with pytest.raises(ReportError, match="not a readable Parquet file"):
        write_report(tmp_path)


def test_curves_align_finetuning_after_early_stopping():
    from training.report import curves

    table = pd.DataFrame(results_rows(subsets={"A": 0.8}, seeds=3, epochs=4, amounts=(5,), ft_epochs=2))
    # Seed 0 stopped training after 2 epochs, so its fine-tuning epochs are 3–4 instead of 5–6.
    stopped = (table["seed"] == 0) & (((table["phase"] == "train") & (table["epoch"] > 2)))
    table = table[~stopped].copy()
    table.loc[(table["seed"] == 0) & (table["phase"] == "finetune"), "epoch"] -= 2
    agg = curves(table)
    tuned = agg[agg["phase"] == "finetune"]
    assert sorted(tuned["epoch"].unique()) == [5, 6] and (tuned["count"] == 3).all()
    assert agg.loc[(agg["phase"] == "train") & (agg["epoch"] == 4), "count"].unique().tolist() == [2]


def test_report_tables_the_particle_scores_when_kept(tmp_path):
    rows = results_rows(seeds=3, amounts=(5,))
    # particle F1 is the Dice less 0.1; count error a constant per subset
    rows = [{**r, "particle_f1": r["dice"] - 0.1, "count_error": 0.05 if r["subset"] == "A" else -0.2,
             "median_diameter_error": 0.01, "wasserstein_nm": 0.3} for r in rows]
    out = write_report(write_study(tmp_path / "study", rows)).parent
    parts = pd.read_csv(out / "particles.csv")
    assert len(parts) == 2 * 2 * 2                # subset × benchmark × (train, ft 5)
    final = final_scores(pd.DataFrame(rows))
    for _, r in parts.iterrows():
        phase, amount = ("train", 0) if r["stage"] == "train" else ("finetune", 5)
        sel = final[(final["subset"] == r["subset"]) & (final["benchmark"] == r["benchmark"])
                    & (final["phase"] == phase) & (final["finetune_images"] == amount)]
        assert r["median particle_f1"] == pytest.approx(round(sel["particle_f1"].median(), 3))
        assert r["median count_error"] == (0.05 if r["subset"] == "A" else -0.2)
    md = (out / "report.md").read_text()
    assert "## Particle scores" in md and "Particle scores" in (out / "report.html").read_text()
    # results from before particle scores were kept: no such section
    old = write_report(write_study(tmp_path / "old", results_rows(seeds=2, amounts=(5,)))).parent
    assert "## Particle scores" not in (old / "report.md").read_text()
