"""The study report: figures, medians with bootstrap CIs and pairwise tests from STUDY_DIR/results.parquet.

    python -m training.report STUDY_DIR [--out DIR] [--format html|md]

Writes report.html (self-contained), report.md with the PNG figures beside it, statistics.csv and pairwise.csv
into STUDY_DIR/report/ unless --out says otherwise, and prints the path of the report.

Over 400 lines: each figure and table of the report is a short function; the page is their sum.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from generators.errors import TemsynthError, exit_status
from generators.writers import CARDS_DIR

from .results import RESULTS_FILE, STUDY_FILE
from .stats import MODEL_KEY, bootstrap_median_ci, final_scores, min_attainable_p, pairwise_mannwhitney

REPORT_DIR = "report"
REQUIRED_COLUMNS = ("job_id", "subset", "seed", "phase", "finetune_images", "epoch", "benchmark", "dice")
ALPHA = 0.05
LEVEL = 0.95
N_BOOT = 10000
TRAIN_COLOR = "0.35"
FIG1, FIG2 = "fig1_final_dice.png", "fig2_dynamics.png"


class ReportError(TemsynthError, ValueError):
    """A study folder the report cannot be made from; the message names the file and what to do."""


# ---------------------------------------------------------------- reading

def load_results(study_dir: str | Path) -> pd.DataFrame:
    path = Path(study_dir) / RESULTS_FILE
    if not path.is_file():
        raise ReportError(f"{path}: no such file; run the study first (it writes {RESULTS_FILE}) or pass the "
                          "study folder that holds it")
    try:
        table = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a truncated or foreign file
        raise ReportError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e}); re-run the study "
                          "to rewrite it") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {', '.join(missing)} (see training.results.RESULT_SCHEMA); "
                          "rewrite it with this version of temsynth")
    table = table.dropna(subset=["dice"])
    if table.empty:
        raise ReportError(f"{path}: no rows with a Dice score; run the study's jobs before the report")
    # Training rows predate any fine-tuning; a null amount there means 0, not unknown.
    return table.assign(finetune_images=table["finetune_images"].fillna(0).astype(int))


def read_study_file(study_dir: str | Path) -> dict:
    """The study folder's copy of its study file, as written (names and orders for the report); {} if absent.
    Not `study.load_study`, which validates a study YAML and expands its jobs."""
    path = Path(study_dir) / STUDY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # optional: only names and orders come from it


def _names(entries) -> list[str]:
    out = []
    for e in entries or []:
        name = e.get("name") if isinstance(e, dict) else e
        if isinstance(name, str):
            out.append(name)
    return out


def _ordered(present, preferred) -> list:
    """The study file's order, then the rest in the order the study wrote them."""
    present = list(dict.fromkeys(present))
    return [x for x in preferred if x in present] + [x for x in present if x not in preferred]


# ---------------------------------------------------------------- stages: train, then each fine-tuning amount

def stage_label(phase: str, amount: int) -> str:
    return "train" if phase == "train" else f"{phase} {amount}"


def stages_of(df: pd.DataFrame) -> list[tuple[str, int]]:
    pairs = set(zip(df["phase"], df["finetune_images"].astype(int)))
    return sorted(pairs, key=lambda s: (s[0] != "train", s[0], s[1]))


def stage_colors(stages) -> dict:
    from matplotlib import colormaps

    tuned = [s for s in stages if s[0] != "train"]
    # Evenly spaced by rank, not by amount: amounts are usually geometric (5, 10, 20, 50).
    shades = colormaps["viridis"](np.linspace(0.15, 0.85, len(tuned)) if len(tuned) > 1 else [0.5])
    colors = {s: TRAIN_COLOR for s in stages if s[0] == "train"}
    colors.update(zip(tuned, shades))
    return colors


# ---------------------------------------------------------------- tables

def statistics_table(final: pd.DataFrame, subsets, benchmarks) -> pd.DataFrame:
    rows = []
    for (subset, bench, phase, amount), g in final.groupby(["subset", "benchmark", "phase", "finetune_images"]):
        med, lo, hi = bootstrap_median_ci(g["dice"], n_boot=N_BOOT, level=LEVEL)
        rows.append({"subset": subset, "benchmark": bench, "phase": phase, "finetune_images": int(amount),
                     "stage": stage_label(phase, amount), "n": len(g), "median": med, "ci_low": lo, "ci_high": hi,
                     "mean": g["dice"].mean(), "sd": g["dice"].std(), "min": g["dice"].min(),
                     "max": g["dice"].max()})
    return _sort(pd.DataFrame(rows), subsets, benchmarks, ["subset"])


def _sort(df: pd.DataFrame, subsets, benchmarks, subset_cols) -> pd.DataFrame:
    if df.empty:
        return df
    keys = {"benchmark": benchmarks.index, **{c: subsets.index for c in subset_cols}}
    by = ["benchmark", "phase", "finetune_images", *subset_cols]
    key = lambda col: col.map(keys[col.name]) if col.name in keys else (
        col.ne("train") if col.name == "phase" else col)
    return df.sort_values(by, key=key, kind="stable").reset_index(drop=True)


def pairwise_table(final: pd.DataFrame, subsets, benchmarks) -> pd.DataFrame:
    """One family per benchmark × stage: subsets with at least two models, Holm over their pairs."""
    rows = []
    for (bench, phase, amount), g in final.groupby(["benchmark", "phase", "finetune_images"]):
        by_subset = {s: g.loc[g["subset"] == s, "dice"].to_numpy() for s in subsets}
        groups = {s: v for s, v in by_subset.items() if len(v) >= 2}
        for r in pairwise_mannwhitney(groups, alpha=ALPHA) if len(groups) >= 2 else []:
            rows.append({"benchmark": bench, "phase": phase, "finetune_images": int(amount),
                         "stage": stage_label(phase, amount), "family_size": len(groups) * (len(groups) - 1) // 2,
                         **r})
    return _sort(pd.DataFrame(rows), subsets, benchmarks, ["a", "b"])


def finding(r) -> str:
    win, lose = (r.a, r.b) if r.effect > 0 else (r.b, r.a)
    m_win, m_lose = (r.median_a, r.median_b) if r.effect > 0 else (r.median_b, r.median_a)
    return (f"{win} beats {lose} on {r.benchmark} ({r.stage}): median Dice {m_win:.3f} vs {m_lose:.3f}, "
            f"p_holm = {r.p_holm:.2g} (Mann–Whitney U = {r.U:g}, n = {r.n_a} vs {r.n_b}).")


def _n_text(ns) -> str:
    lo, hi = int(min(ns)), int(max(ns))
    return f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"


def comparison_notes(stats: pd.DataFrame, pairwise: pd.DataFrame, subsets) -> list[str]:
    """Why tests are absent, or a plain statement that nothing is significant."""
    if len(subsets) < 2:
        return [f"Only one subset ({subsets[0]}): there is nothing to compare, so no pairwise tests."]
    small = stats[stats["n"] < 2]
    if pairwise.empty:
        why = ("one model per subset (one seed)" if (stats["n"] < 2).all()
               else "fewer than two subsets with at least two models in every benchmark × stage")
        return [f"No pairwise tests: {why}. A Mann–Whitney test needs at least two models per subset; "
                "run several seeds (the seed study used 5)."]
    notes = []
    if not small.empty:
        left = ", ".join(f"{r.subset} on {r.benchmark} ({r.stage})" for r in small.itertuples())
        notes.append(f"Left out of the tests for having a single model: {left}.")
    if not pairwise["significant"].any():
        n = _n_text(pd.concat([pairwise["n_a"], pairwise["n_b"]]))
        notes.append(f"With {n} models per subset, no difference between subsets is significant at "
                     f"alpha = {ALPHA:g} (two-sided Mann–Whitney U, Holm-corrected within each benchmark × stage).")
        floor = pairwise.apply(lambda r: r.family_size * min_attainable_p(r.n_a, r.n_b), axis=1)
        if (floor >= ALPHA).all():
            notes.append(f"With these sample sizes and up to {int(pairwise['family_size'].max())} pair(s) per family "
                         f"the smallest attainable Holm-adjusted p is {floor.min():.2g}, so no difference could "
                         "have reached significance: more seeds are needed to separate the subsets.")
    return notes


def ci_notes(stats: pd.DataFrame) -> list[str]:
    if (stats["n"] < 2).all():
        return ["One model per subset × benchmark × stage (one seed): the medians are single scores and have no "
                "confidence interval (—)."]
    if (stats["n"] < 2).any():
        return ["Groups with a single model have no confidence interval (—)."]
    return []


# ---------------------------------------------------------------- figures
# matplotlib.figure.Figure without pyplot: renders through Agg and leaves no global figure state behind.

def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return -(-n // cols), cols


def _legend(fig, colors: dict, patch: bool) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, alpha=0.6, label=stage_label(*s)) if patch else
               Line2D([], [], color=c, lw=2, label=stage_label(*s)) for s, c in colors.items()]
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 6), frameon=False)


def figure_final(final: pd.DataFrame, subsets, benchmarks, path: Path) -> None:
    from matplotlib.figure import Figure

    stages = stages_of(final)
    colors = stage_colors(stages)
    rows, cols = _grid(len(benchmarks))
    width = max(3.2, 0.45 * len(subsets) * (len(stages) + 1)) * cols
    fig = Figure(figsize=(min(width, 18), 3.6 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    rng = np.random.default_rng(0)  # fixed jitter: the same table draws the same figure
    slot = len(stages) + 1
    for ax, bench in zip(axes, benchmarks):
        for i, subset in enumerate(subsets):
            for j, stage in enumerate(stages):
                sel = (final["benchmark"] == bench) & (final["subset"] == subset) & \
                      (final["phase"] == stage[0]) & (final["finetune_images"] == stage[1])
                _box(ax, final.loc[sel, "dice"].to_numpy(), i * slot + j, colors[stage], rng)
        ax.set_xticks([i * slot + (len(stages) - 1) / 2 for i in range(len(subsets))], subsets,
                      rotation=30 if len(subsets) > 3 else 0, ha="right" if len(subsets) > 3 else "center")
        ax.set_title(bench)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(benchmarks):]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("Dice (last epoch)")
    _legend(fig, colors, patch=True)
    fig.savefig(path, format="png", dpi=150)


def _box(ax, values, pos, color, rng) -> None:
    if len(values) == 0:
        return
    if len(values) > 1:
        bp = ax.boxplot([values], positions=[pos], widths=0.7, patch_artist=True, showfliers=False,
                        manage_ticks=False, medianprops={"color": "black"})
        for box in bp["boxes"]:
            box.set(facecolor=color, alpha=0.45, edgecolor=color)
    ax.scatter(pos + rng.uniform(-0.18, 0.18, len(values)), values, s=14, color=color, edgecolor="black",
               linewidth=0.4, zorder=3)


def finetune_starts(table: pd.DataFrame) -> pd.DataFrame:
    """Last training epoch before each fine-tuned model (one row per model); early stopping can make them differ."""
    tuned = table[table["phase"] != "train"]
    return (tuned.groupby(MODEL_KEY)["epoch"].min() - 1).rename("start").reset_index()


def curves(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd, min, max and count of Dice over models per plotted epoch, per subset × stage × benchmark.

    Fine-tuning rows are placed at the subset's median training length plus their own epoch count, so models
    whose training stopped early are averaged with the others at the same fine-tuning epoch rather than at the
    same global epoch, which would mix models at different stages of fine-tuning.
    """
    models = table.drop_duplicates(MODEL_KEY + ["benchmark", "epoch"])
    starts = finetune_starts(models)
    median = starts.groupby("subset")["start"].quantile(0.5, interpolation="lower").rename("median_start")
    tuned = models[models["phase"] != "train"].merge(starts, on=MODEL_KEY).join(median, on="subset")
    tuned = tuned.assign(epoch=tuned["median_start"] + tuned["epoch"] - tuned["start"])
    stacked = pd.concat([models[models["phase"] == "train"], tuned[models.columns]])
    return (stacked.groupby(["subset", "phase", "finetune_images", "benchmark", "epoch"])["dice"]
            .agg(["mean", "std", "min", "max", "count"]).reset_index())


def figure_dynamics(table: pd.DataFrame, subsets, benchmarks, path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    stages = stages_of(table)
    colors = stage_colors(stages)
    agg = curves(table)
    starts_all = finetune_starts(table.drop_duplicates(MODEL_KEY + ["benchmark", "epoch"]))
    fig = Figure(figsize=(min(4.0 * len(benchmarks), 18), 2.8 * len(subsets) + 0.7), layout="constrained")
    axes = fig.subplots(len(subsets), len(benchmarks), squeeze=False, sharex=True, sharey=True)
    for r, subset in enumerate(subsets):
        starts = starts_all.loc[starts_all["subset"] == subset, "start"].to_numpy()
        for c, bench in enumerate(benchmarks):
            ax = axes[r, c]
            here = agg[(agg["subset"] == subset) & (agg["benchmark"] == bench)]
            train = here[here["phase"] == "train"]
            for stage in stages:
                curve = here[(here["phase"] == stage[0]) & (here["finetune_images"] == stage[1])]
                if stage[0] != "train":
                    # Join each fine-tuning curve to the training curve it continues.
                    curve = pd.concat([train[train["epoch"] == curve["epoch"].min() - 1], curve])
                _curve(ax, curve, colors[stage])
            if len(starts):
                ax.axvline(np.quantile(starts, 0.5, method="lower"), color="black", ls="--", lw=0.8)
                if starts.min() != starts.max():
                    ax.axvspan(starts.min(), starts.max(), color="black", alpha=0.06, lw=0)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if r == 0:
                ax.set_title(bench)
            if c == 0:
                ax.set_ylabel(f"{subset}\nDice")
            if r == len(subsets) - 1:
                ax.set_xlabel("epoch")
    _legend(fig, colors, patch=False)
    fig.savefig(path, format="png", dpi=150)


def _curve(ax, curve: pd.DataFrame, color) -> None:
    if curve.empty:
        return
    x = curve["epoch"].to_numpy()
    ax.plot(x, curve["mean"], color=color, lw=1.6, marker="o" if len(x) < 4 else None, ms=3)
    # Min–max rather than ± sd: with a handful of seeds and a bounded score, sd bands leave [0, 1].
    ax.fill_between(x, curve["min"], curve["max"], color=color, alpha=0.2, lw=0)


# ---------------------------------------------------------------- rendering

def _fmt(x, spec=".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def stats_display(stats: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "benchmark": stats["benchmark"], "stage": stats["stage"], "subset": stats["subset"], "n": stats["n"],
        "median Dice": stats["median"].map(_fmt),
        f"{LEVEL:.0%} CI": [f"[{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) else "—"
                            for lo, hi in zip(stats["ci_low"], stats["ci_high"])],
        "min": stats["min"].map(_fmt), "max": stats["max"].map(_fmt)})


def pairwise_display(pairwise: pd.DataFrame) -> pd.DataFrame:
    if pairwise.empty:
        return pairwise
    return pd.DataFrame({
        "benchmark": pairwise["benchmark"], "stage": pairwise["stage"], "a": pairwise["a"], "b": pairwise["b"],
        "n": [f"{a} vs {b}" for a, b in zip(pairwise["n_a"], pairwise["n_b"])],
        "median a": pairwise["median_a"].map(_fmt), "median b": pairwise["median_b"].map(_fmt),
        "U": pairwise["U"].map(lambda u: f"{u:g}"), "p": pairwise["p"].map(lambda p: _fmt(p, ".2g")),
        "p (Holm)": pairwise["p_holm"].map(lambda p: _fmt(p, ".2g")),
        "rank-biserial r": pairwise["effect"].map(lambda e: _fmt(e, "+.2f")),
        "significant": pairwise["significant"].map({True: "yes", False: "no"})})


def markdown_table(df: pd.DataFrame) -> str:
    # DataFrame.to_markdown needs tabulate, which nothing else here uses.
    cell = lambda v: str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def overview(table: pd.DataFrame, final: pd.DataFrame, subsets, benchmarks) -> list[str]:
    seeds = final[final["phase"] == "train"].groupby("subset")["seed"].nunique()
    if seeds.empty:
        seeds = final.groupby("subset")["seed"].nunique()
    amounts = sorted({int(a) for p, a in stages_of(final) if p != "train"})
    models = final.drop_duplicates(MODEL_KEY)
    lines = [f"Subsets ({len(subsets)}): " + ", ".join(f"{s} ({seeds.get(s, 0)} seed(s))" for s in subsets),
             f"Benchmarks ({len(benchmarks)}): " + ", ".join(benchmarks),
             f"Models: {int((models['phase'] == 'train').sum())} trained, "
             f"{int((models['phase'] != 'train').sum())} fine-tuned"
             + (f" (on {', '.join(map(str, amounts))} experimental images)" if amounts else " (no fine-tuning phase)"),
             f"Epochs: {_span(table['epoch'])}" + (" (fine-tuning continues the training count)" if amounts else "")
             + f"; rows in the results table: {len(table):,}"]
    return lines


# the particle scores the report tabulates (of results.PARTICLE_SCORES: the rest are in results.parquet)
REPORTED_PARTICLE_SCORES = ("particle_f1", "count_error", "median_diameter_error", "wasserstein_nm")


def particle_table(final: pd.DataFrame, subsets, benchmarks) -> pd.DataFrame:
    """Median particle scores over the models of each subset × benchmark × stage (empty for results made before
    particle scores were kept)."""
    cols = [c for c in REPORTED_PARTICLE_SCORES if c in final.columns]
    if not cols or final[cols].isna().all().all():
        return pd.DataFrame()
    rows = []
    for (subset, bench, phase, amount), g in final.groupby(["subset", "benchmark", "phase", "finetune_images"]):
        row = {"subset": subset, "benchmark": bench, "phase": phase, "finetune_images": int(amount),
               "stage": stage_label(phase, amount), "n": len(g)}
        for c in cols:
            v = g[c].dropna()
            row[f"median {c}"] = round(float(v.median()), 3) if len(v) else None
        rows.append(row)
    return _sort(pd.DataFrame(rows), subsets, benchmarks, ["subset"]).drop(columns=["phase", "finetune_images"])


def _span(values) -> str:
    lo, hi = int(values.min()), int(values.max())
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def captions(tuned: bool) -> list[str]:
    if not tuned:
        return ["Dice of every model at its last training epoch, one panel per benchmark. Boxes: quartiles and "
                "median; points: individual models (seeds), jittered. There is no fine-tuning phase.",
                "Mean Dice over models per epoch (band: min–max over models), one row per subset and one column "
                "per benchmark. Late epochs average the models that ran that long."]
    return ["Dice of every model at its last epoch, one panel per benchmark: after training on simulated data "
            "(train) and after fine-tuning on experimental images (one colour per amount). Boxes: quartiles and "
            "median; points: individual models (seeds), jittered.",
            "Mean Dice over models per epoch (band: min–max over models), one row per subset and one column "
            "per benchmark. Fine-tuning curves continue the training curve from the dashed line, the median last "
            "training epoch of the fine-tuned models (grey span: its range, where early stopping made it differ), "
            "and average "
            "the models at equal fine-tuning epochs. Late epochs average the models that ran that long."]


def _build(study_dir: Path, out: Path, table: pd.DataFrame) -> dict:
    """Write the CSVs and figures into `out`; return what the templates need."""
    study = read_study_file(study_dir)
    subsets = _ordered(table["subset"], _names(study.get("subsets")))
    benchmarks = _ordered(table["benchmark"], _names(study.get("benchmarks")))
    final = final_scores(table)
    stats = statistics_table(final, subsets, benchmarks)
    pairwise = pairwise_table(final, subsets, benchmarks)
    stats.to_csv(out / "statistics.csv", index=False)
    parts = particle_table(final, subsets, benchmarks)
    parts.to_csv(out / "particles.csv", index=False)
    pairwise.to_csv(out / "pairwise.csv", index=False)
    figure_final(final, subsets, benchmarks, out / FIG1)
    figure_dynamics(table, subsets, benchmarks, out / FIG2)
    names = table["study"].dropna() if "study" in table.columns else pd.Series(dtype=str)
    name = study.get("name") or (names.iloc[0] if len(names) and names.iloc[0] else study_dir.resolve().name)
    sig = pairwise[pairwise["significant"]] if not pairwise.empty else pairwise
    return {
        "name": name, "study_dir": str(study_dir), "overview": overview(table, final, subsets, benchmarks),
        "figures": [{"file": f, "title": t, "caption": c} for f, t, c in zip(
            (FIG1, FIG2), ("Figure 1: final Dice per subset", "Figure 2: Dice per epoch"),
            captions((final["phase"] != "train").any()))],
        "stats_md": markdown_table(stats_display(stats)), "stats_html": _html_table(stats_display(stats)),
        "ci_notes": ci_notes(stats),
        "particles_md": markdown_table(parts) if not parts.empty else "",
        "particles_html": _html_table(parts) if not parts.empty else "",
        "pairwise_md": markdown_table(pairwise_display(pairwise)) if not pairwise.empty else "",
        "pairwise_html": _html_table(pairwise_display(pairwise)) if not pairwise.empty else "",
        "findings": [finding(r) for r in sig.itertuples()],
        "comparison_notes": comparison_notes(stats, pairwise, subsets),
        "methods": [
            "Final score: Dice (mean over a benchmark's images) at each model's last epoch of the phase; a "
            "fine-tuned model's training rows are its parent's and count once.",
            f"Median with a {LEVEL:.0%} percentile bootstrap interval ({N_BOOT:,} resamples, seed 0, "
            "scipy.stats.bootstrap).",
            "Pairwise tests between subsets: two-sided Mann–Whitney U (scipy.stats.mannwhitneyu, exact for small "
            f"samples without ties), Holm-corrected over the pairs of each benchmark × stage, alpha = {ALPHA:g}; "
            "effect: rank-biserial r = 2U/(n_a n_b) − 1 (> 0: a scores higher). Families are not corrected against "
            "each other: read each benchmark × stage as its own question.",
            "Particle scores (training/instances.py): predicted and true particles matched at IoU >= 0.5, "
            "particles touching a field's border ignored; binary models' particles are the mask's connected "
            "components, instance models' the watershed of their distance channel; on experimental benchmarks "
            "the labels' connected components (touching labelled particles count as one). Medians over models.",
            "All numbers are in statistics.csv, particles.csv and pairwise.csv next to this report."],
    }


def _html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, border=0, classes="table", escape=True)


def _render(template: str, context: dict) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(CARDS_DIR), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template(template).render(**context)


def write_report(study_dir: str | Path, out_dir: str | Path | None = None, fmt: str = "html") -> Path:
    """Write report.html, report.md, the PNG figures, statistics.csv and pairwise.csv; return the `fmt` report."""
    if fmt not in ("html", "md"):
        raise ReportError(f"format {fmt!r}: use 'html' or 'md' (both files are written either way)")
    study_dir = Path(study_dir)
    table = load_results(study_dir)
    out = Path(out_dir) if out_dir is not None else study_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    context = _build(study_dir, out, table)
    (out / "report.md").write_text(_render("study_report.md", context), encoding="utf-8")
    for fig in context["figures"]:
        fig["data_uri"] = "data:image/png;base64," + base64.b64encode((out / fig["file"]).read_bytes()).decode()
    (out / "report.html").write_text(_render("study_report.html", context), encoding="utf-8")
    return out / f"report.{fmt}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.report", description=__doc__.split("\n")[0])
    parser.add_argument("study_dir", help=f"study folder holding {RESULTS_FILE}")
    parser.add_argument("--out", help=f"output folder (default: STUDY_DIR/{REPORT_DIR})")
    parser.add_argument("--format", choices=("html", "md"), default="html", help="which report path to print")
    args = parser.parse_args(argv)
    return exit_status(parser.prog, lambda: print(write_report(args.study_dir, args.out, args.format)) or 0)


if __name__ == "__main__":
    sys.exit(main())
