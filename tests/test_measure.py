"""Instance models through training, `temsynth measure` and `evaluate --tables`: files, columns, bad input."""
import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from training import instances
from training.config import train_config
from training.models import load_model
from training.results import PARTICLE_SCORES as PARTICLE_COLUMNS
from training.train import read_metrics, run


def _cfg(data_dir, out, **over):
    d = {"name": "tiny-instances", "output_dir": str(out), "epochs": 4, "batch_size": 4, "seed": 1,
         "data": {"path": str(data_dir)}, "benchmarks": [{"name": "validation", "path": str(data_dir)}],
         "model": {"instances": True, "unet": {"depth": 2, "base_width": 8}},
         "optimizer": {"lr": 0.01, "lr_decay_per_epoch": 0.9}}
    d.update(over)
    return train_config(d)


@pytest.fixture(scope="module")
def instance_model(built, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "inst"
    # a 4-epoch model is unsure of every particle (probabilities ~0.6): without the confidence floor its
    # particles, scores and tables are there to test (the floor has its own test in test_instances.py)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(instances, "MIN_CONFIDENCE", 0.0)
        return run(_cfg(built, out), progress=False, echo=False)


@pytest.fixture(autouse=True)
def no_confidence_floor(monkeypatch):
    monkeypatch.setattr(instances, "MIN_CONFIDENCE", 0.0)


def test_instance_model_trains_with_a_distance_channel_and_particle_scores(instance_model, built):
    import torch

    model, cfg = load_model(instance_model["model_dir"])
    assert cfg.model.instances
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    rows = read_metrics(Path(instance_model["model_dir"]) / "metrics.csv")
    assert len(rows) == 4
    for r in rows:
        assert 0 <= float(r["particle_f1"]) <= 1 and r["count_error"] != "" and float(r["wasserstein_nm"]) >= 0
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0]
    assert set(PARTICLE_COLUMNS) <= set(instance_model["best"]["validation"])


def test_distance_target_rides_along_the_augmentations(built):
    from training.config import AugmentConfig
    from training.data import read_arrays, training_set

    ds = training_set(_cfg(built, "x").data_sources, AugmentConfig(crop_px=64), seed=0, instances=True)
    s = ds[0]
    assert s["mask"].shape == (2, 64, 64)
    m, d = s["mask"][0].numpy(), s["mask"][1].numpy()
    # the distance target lives inside the particles, reaches 1 at a core unless the crop cut it off
    assert d.min() >= 0 and d.max() <= 1 and not (d[m == 0] > 0).any()
    images, masks, ids, extra = read_arrays(_cfg(built, "x").data_sources[0], instances=True)
    assert extra["instance_mask"].shape == masks.shape and np.all(extra["pixel_size_A"] == 0.25)
    assert np.array_equal(extra["instance_mask"] > 0, masks > 0)


def test_measure_writes_tables_figures_and_summaries(instance_model, built, tmp_path):
    from generators.run import read_record
    from temsynth.cli import main

    recs = [read_record(built, rid) for rid in ("s000000-c000", "s000001-c001")]
    files = []
    for i, rec in enumerate(recs):
        files.append(tmp_path / f"field{i}.npy")
        np.save(files[-1], rec["image"])
    out = tmp_path / "sizes"
    assert main(["measure", instance_model["model_dir"], *map(str, files), "--pixel-size-A", "0.25",
                 "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names >= {"particles.parquet", "particles.csv", "summary.parquet", "summary.csv", "summary.json",
                     "size_histogram.png", "overlays"}
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["field0.png", "field1.png"]
    parts = pq.read_table(out / "particles.parquet").to_pandas()
    assert set(parts.columns) >= {"micrograph", "diameter_nm", "area_nm2", "centroid_x_px", "major_axis_nm",
                                  "minor_axis_nm", "circularity", "touches_border", "mean_confidence"}
    summ = pq.read_table(out / "summary.parquet").to_pandas()
    assert list(summ["micrograph"]) == ["field0.npy", "field1.npy", "ALL"]
    assert summ["n_particles"].iloc[-1] == len(parts) == summ["n_particles"].iloc[:2].sum()
    if len(parts):
        # areas and diameters agree with the pixel size; confidences are probabilities
        assert np.allclose(parts["area_nm2"], parts["area_px"] * 0.025 ** 2)
        assert np.allclose(parts["diameter_nm"], 2 * np.sqrt(parts["area_nm2"] / np.pi))
        assert parts["mean_confidence"].between(0, 1).all()
    with open(out / "particles.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(parts)
    # the CSV route for pixel sizes gives the same particles
    index = tmp_path / "index.csv"
    index.write_text("file,pixel_size_A\n" + "".join(f"{p.name},0.25\n" for p in files))
    assert main(["measure", instance_model["model_dir"], *map(str, files), "--pixel-sizes", str(index),
                 "--out", str(tmp_path / "sizes2")]) == 0
    again = pq.read_table(tmp_path / "sizes2" / "particles.parquet").to_pandas()
    assert np.allclose(again["diameter_nm"], parts["diameter_nm"])


def test_measure_refuses_bad_input_in_one_line_and_leaves_nothing(instance_model, tmp_path, capsys):
    from temsynth.cli import main

    np.save(tmp_path / "plain.npy", np.random.default_rng(0).random((64, 64), np.float32))
    np.save(tmp_path / "flat.npy", np.ones((64, 64), np.float32))
    out = tmp_path / "o"
    cases = [
        ([str(tmp_path / "plain.npy")], "carries no pixel size"),                          # .npy has none
        ([str(tmp_path / "plain.npy"), str(tmp_path / "flat.npy"), "--pixel-size-A", "0.25"], "constant"),
        ([str(tmp_path / "plain.npy"), "--pixel-size-A", "-1"], "positive"),
        ([str(tmp_path / "missing.npy"), "--pixel-size-A", "0.25"], "no such file"),
    ]
    for args, words in cases:
        capsys.readouterr()
        assert main(["measure", instance_model["model_dir"], *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
        assert not out.exists() and not list(tmp_path.glob(".o.partial-*"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["measure", instance_model["model_dir"], str(tmp_path / "plain.npy"), "--pixel-size-A", "0.25",
                 "--out", str(tmp_path / "full")]) == 2


def test_evaluate_scores_particles_and_writes_tables_beside_the_truth(instance_model, built, tmp_path):
    from training.predict import evaluate

    r = evaluate(instance_model["model_dir"], built, split="validation", tables=tmp_path / "t")
    p = r["particles"]
    assert p["count_true"] >= 1 and (p["particle_f1"] is None or 0 <= p["particle_f1"] <= 1)
    t = pq.read_table(tmp_path / "t" / "particles.parquet").to_pandas()
    true, pred = t[t["side"] == "true"], t[t["side"] == "predicted"]
    assert (~true["touches_border"]).sum() == p["count_true"]
    assert (~pred["touches_border"]).sum() == p["count_pred"]
    # a matched pair names each other
    for _, row in pred[pred["matched"] > 0].iterrows():
        other = true[(true["record_id"] == row["record_id"]) & (true["particle"] == row["matched"])]
        assert list(other["matched"]) == [row["particle"]]
    summ = pq.read_table(tmp_path / "t" / "summary.parquet").to_pandas()
    assert r["tables"]["n_records"] == len(summ) == r["n_images"]
    assert {"predicted_n_particles", "true_n_particles", "true_median_diameter_nm"} <= set(summ.columns)
    json.dumps(r, default=str)


def test_real_set_particles_follow_the_mask_at_the_files_pixels(instance_model, built):
    from generators.run import read_record
    from training.instances import connected_components
    from training.real_particles import predict_particles, score_field, summarise, summarise_both

    model, config = load_model(instance_model["model_dir"])
    rec = read_record(built, "s000000-c000")
    big = np.kron(rec["image"], np.ones((2, 2), np.float32))       # the same field at half the pixel size
    mask, labels = predict_particles(model, config, big, 0.125)
    assert mask.shape == labels.shape == big.shape
    assert not (labels > 0)[mask == 0].any()                      # particles lie in the mask
    assert ((mask > 0) & (labels == 0)).sum() <= 0.02 * max(int(mask.sum()), 1)   # only dropped specks
    # the mask's components scored against the mask as a hand-drawn one: every non-border one found
    m = score_field(connected_components(mask), mask, 0.125)
    assert m["counts"]["fn"] == 0 and m["counts"]["fp"] == 0
    s = summarise([("2.2 nm", m), ("10 nm", m), ("5 nm", m)])
    assert list(s["by_size"]) == ["2.2 nm", "5 nm", "10 nm"]
    assert s["all"]["count_true"] == 3 * m["counts"]["n_true"]
    every = score_field(connected_components(mask), mask, 0.125, ignore_border=False)
    both = summarise_both([("2.2 nm", m, every)])
    n_all = int(connected_components(mask).max())
    assert both["with_border"]["all"]["count_true"] == n_all >= both["all"]["count_true"]
    assert both["with_border"]["all"]["particle_f1"] == 1.0


def test_touching_labelled_particles_count_as_one():
    from training.real_particles import score_field

    def disc(cx, r):
        y, x = np.mgrid[:60, :100]
        return (x - cx) ** 2 + (y - 30) ** 2 <= r * r

    parts = [disc(20, 12), disc(44, 12), disc(68, 12)]   # three touching discs in a row
    truth = parts[0] | parts[1] | parts[2]              # drawn by hand as one outline
    split = np.zeros(truth.shape, np.int32)
    for k, p in enumerate(parts, start=1):
        split[p & (split == 0)] = k
    got = score_field(split, truth, 1.0)["counts"]      # three right particles, each a third of the label
    assert (got["n_true"], got["n_pred"], got["tp"], got["fp"], got["fn"]) == (1, 3, 0, 3, 1)
    merged = score_field(truth.astype(np.int32), truth, 1.0)["counts"]
    assert (merged["tp"], merged["fp"]) == (1, 0)
    # a large and a small touching particle: the large one covers the merged label at IoU > 0.5 and matches it
    big, small = disc(30, 15), disc(53, 8)
    split = np.where(big, 1, np.where(small, 2, 0)).astype(np.int32)
    got = score_field(split, big | small, 1.0)["counts"]
    assert (got["tp"], got["fp"], got["fn"]) == (1, 1, 0)


def test_an_instance_model_fine_tunes_as_one(instance_model, built, tmp_path):
    """Fine-tuning keeps the parent's distance channel (the config's `model:` left out takes the parent's)."""
    import yaml

    from training.finetune import finetune_config

    f = tmp_path / "ft.yaml"
    f.write_text(yaml.safe_dump({"name": "ft", "output_dir": str(tmp_path / "ft"), "init_from":
                                 instance_model["model_dir"], "epochs": 1, "batch_size": 4,
                                 "data": {"path": str(built), "split": "test"},
                                 "benchmarks": [{"name": "validation", "path": str(built)}]}))
    cfg = finetune_config(f)
    assert cfg.model.instances
    s = run(cfg, progress=False, echo=False)
    rows = [r for r in read_metrics(Path(s["model_dir"]) / "metrics.csv") if r["phase"] == "finetune"]
    assert len(rows) == 1 and rows[0]["particle_f1"] != ""
    assert load_model(s["model_dir"])[1].model.instances


def _other_training(instance_model, tmp_path):
    """A second member: the trained model's folder with its weights moved (another training's stand-in)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    src = Path(instance_model["model_dir"])
    dest = tmp_path / "other"
    shutil.copytree(src, dest)
    state = load_file(str(dest / "model.safetensors"))
    g = torch.Generator().manual_seed(3)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=g) * v.abs().mean() if v.is_floating_point() else v
               for k, v in state.items()}, str(dest / "model.safetensors"))
    return dest


def test_an_ensemble_averages_its_members_logits_and_serves_every_verb(instance_model, built, tmp_path):
    import shutil

    import torch

    from temsynth.cli import main
    from training.predict import evaluate

    a, b = instance_model["model_dir"], _other_training(instance_model, tmp_path)
    assert main(["ensemble", a, str(b), "--out", str(tmp_path / "ens")]) == 0
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        members = [load_model(f)[0](x) for f in (a, b)]
        assert not torch.allclose(members[0], members[1])
        # the folder holds copies of its members: moved elsewhere, it still loads, alone
        shutil.move(tmp_path / "ens", tmp_path / "moved")
        model, config = load_model(tmp_path / "moved")
        torch.testing.assert_close(model(x), (members[0] + members[1]) / 2, rtol=1e-5, atol=1e-5)
    assert config.model.instances and len(config.ensemble.members) == 2 and config.pixel_size_A is not None
    assert "ensemble of 2" in (tmp_path / "moved" / "README.md").read_text()
    # evaluate and measure read it as any model folder
    r = evaluate(tmp_path / "moved", built, split="validation")
    assert 0 < r["dice"] <= 1 and r["particles"]["count_true"] >= 1
    np.save(tmp_path / "f.npy", np.random.default_rng(1).normal(100, 10, (96, 96)).astype(np.float32))
    assert main(["measure", str(tmp_path / "moved"), str(tmp_path / "f.npy"), "--pixel-size-A", "0.25",
                 "--out", str(tmp_path / "sizes")]) == 0
    assert (tmp_path / "sizes" / "summary.json").is_file()


def test_an_ensemble_refuses_members_that_differ_and_is_not_fine_tuned(instance_model, built, tmp_path, capsys):
    import yaml

    from temsynth.cli import main
    from training.config import ModelConfig
    from training.finetune import finetune_config
    from training.models import build_model, read_model_config, save_model
    from training.train import TrainError

    a = instance_model["model_dir"]
    binary = ModelConfig.model_validate({"unet": {"depth": 2, "base_width": 8}})
    info = read_model_config(a).model_dump(mode="json", exclude={"model"})
    other = save_model(build_model(binary), tmp_path / "binary", binary, info)
    same = read_model_config(a)
    info["training_config"]["augment"]["normalise"] = "zscore"
    assert same.augment.normalise != "zscore"
    zscore = save_model(build_model(same.model), tmp_path / "zscore", same.model, info)
    out = tmp_path / "ens"
    for args, words in [([a, str(other)], "model (architecture and output channels) differs in instances"),
                        ([a, str(zscore)], "input normalisation differs (zscore against"),
                        ([a], "at least two"), ([a, a], "given twice"),
                        ([a, str(tmp_path / "nothing")], "is not a model folder")]:
        capsys.readouterr()
        assert main(["ensemble", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
        assert not out.exists() and not list(tmp_path.glob(".ens.*"))
    assert main(["ensemble", a, str(_other_training(instance_model, tmp_path)), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["ensemble", str(out), a, "--out", str(tmp_path / "nested")]) == 2
    assert "is an ensemble already; give its members" in capsys.readouterr().err
    f = tmp_path / "ft.yaml"
    f.write_text(yaml.safe_dump({"name": "ft", "output_dir": str(tmp_path / "ft"), "init_from": str(out),
                                 "epochs": 1, "data": {"path": str(built), "split": "test"},
                                 "benchmarks": [{"name": "validation", "path": str(built)}]}))
    with pytest.raises(TrainError, match="is an ensemble of 2 models; fine-tune one of its members"):
        run(finetune_config(f), progress=False, echo=False)
