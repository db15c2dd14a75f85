"""Training: learning, metrics, resume after a kill, two processes, model folders, fine-tuning, errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from generators.config import ConfigError
from generators.query import QueryError
from training.config import AugmentConfig, train_config
from training.data import ArraySet, DataError, WdsSet, augment, read_arrays
from training.metrics import counts, scores
from training.models import build_model, load_model, save_model
from training.train import read_metrics, run

ROOT = Path(__file__).resolve().parents[1]


def cfg_dict(data_dir, out, **over):
    d = {"name": "tiny-unet", "output_dir": str(out), "epochs": 12, "batch_size": 4, "seed": 3,
         "data": {"path": str(data_dir)},
         "benchmarks": [{"name": "validation", "path": str(data_dir)},
                        {"name": "test_twins", "path": str(data_dir), "split": "test",
                         "query": "any(particle_n_twins >= 1)"}],
         "model": {"unet": {"depth": 3, "base_width": 8}}, "optimizer": {"lr": 0.01, "lr_decay_per_epoch": 0.9}}
    d.update(over)
    return d


@pytest.fixture(scope="session")
def trained(built, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    summary = run(train_config(cfg_dict(built, out)), progress=False)
    return out, summary


def _chance_dice(data_dir, split="validation"):
    """Dice of the best constant guess (every pixel particle), the bar a network must clear."""
    _, masks, _ = read_arrays(train_config(cfg_dict(data_dir, "x")).benchmarks[0])
    p = masks.reshape(len(masks), -1).mean(1)
    return float(np.mean(2 * p / (1 + p)))


def test_training_learns_and_writes_a_model_folder(trained, built):
    out, summary = trained
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 12 * 2 and {r["benchmark"] for r in rows} == {"validation", "test_twins"}
    losses = [float(r["train_loss"]) for r in rows if r["benchmark"] == "validation"]
    assert losses[-1] < 0.75 * losses[0]
    dice = summary["best"]["validation"]["dice"]
    assert dice > 0.75 and dice > _chance_dice(built) + 0.25
    model_dir = Path(summary["model_dir"])
    assert {p.name for p in model_dir.iterdir()} >= {"model.safetensors", "config.json", "metrics.csv", "README.md"}
    config = json.loads((model_dir / "config.json").read_text())
    assert config["train_data"][0]["fingerprint"] and config["seed"] == 3 and config["epoch"] == summary["best_epoch"]
    card = (model_dir / "README.md").read_text()
    assert "any(particle_n_twins >= 1)" in card and config["train_data"][0]["fingerprint"] in card and "torch" in card
    # The lr decays once per epoch, whatever the number of optimizer steps.
    lrs = sorted({float(r["lr"]) for r in rows}, reverse=True)
    assert lrs[1] == pytest.approx(0.009) and lrs[-1] == pytest.approx(0.01 * 0.9 ** 11)


def test_scores_match_a_reference_computation():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(6, 1, 20, 20)).astype(np.float32))
    target = torch.from_numpy((rng.random((6, 1, 20, 20)) < 0.3).astype(np.float32))
    logits[5] = -1.0  # empty prediction and empty label: a perfect score
    target[5] = 0.0
    got = scores(counts(logits, target))
    pred, true = logits.numpy() > 0, target.numpy() > 0.5
    ref_dice, ref_iou = [], []
    for p, t in zip(pred, true):
        inter, union, total = (p & t).sum(), (p | t).sum(), p.sum() + t.sum()
        ref_dice.append(2 * inter / total if total else 1.0)
        ref_iou.append(inter / union if union else 1.0)
    assert got["dice"] == pytest.approx(np.mean(ref_dice), abs=1e-12)
    assert got["iou"] == pytest.approx(np.mean(ref_iou), abs=1e-12)
    assert got["dice_pooled"] == pytest.approx(2 * (pred & true).sum() / (pred.sum() + true.sum()), abs=1e-12)
    assert got["n_images"] == 6


def test_augmentations_move_image_and_mask_together():
    rng = np.random.default_rng(1)
    mask = np.zeros((96, 96), np.uint8)
    mask[10:50, 20:30] = 1  # an asymmetric L: any flip or rotation of one but not the other shows
    mask[40:50, 20:70] = 1
    image = (mask * 10 + rng.random(mask.shape)).astype(np.float32)  # particle pixels >= 10, the rest < 1
    outcomes = set()
    for seed in range(16):
        img, msk = augment(image, mask, np.random.default_rng(seed), AugmentConfig(crop_px=64))
        assert img.shape == msk.shape == (64, 64)
        assert np.array_equal(img >= 10, msk.astype(bool))
        outcomes.add(img.tobytes())
    assert len(outcomes) > 8  # crops, flips and rotations really vary


def test_sample_normalisation_is_per_image(built):
    images, masks, ids = read_arrays(train_config(cfg_dict(built, "x")).data)
    ds = ArraySet(images, masks, ids, AugmentConfig(), train=False)
    for i in range(3):
        x = ds[i]["image"]
        assert x.shape == (1, 128, 128) and float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)
        assert torch.equal(ds[i]["mask"][0].to(torch.uint8), torch.from_numpy(masks[i].copy()))


def test_parquet_and_webdataset_give_the_same_records(built):
    query = "any(particle_defect_type != 'none')"
    src = train_config(cfg_dict(built, "x", data={"path": str(built), "query": query})).data
    images, _, _ = read_arrays(src)
    stream = WdsSet(src.model_copy(update={"format": "webdataset"}), AugmentConfig(flips=False, rot90=False))
    streamed = [s["image"][0].numpy() for s in stream]
    from training.data import normalise
    ref = sorted(normalise(i, "minmax").sum() for i in images)
    assert len(streamed) == len(images) > 0
    assert np.allclose(sorted(x.sum() for x in streamed), ref, rtol=1e-6)


def test_saved_model_reloads_and_predicts_identically(trained, built, tmp_path):
    from training.predict import evaluate

    out, summary = trained
    model, config = load_model(summary["model_dir"])
    # Scoring the reloaded model reproduces the numbers logged at its epoch during training.
    row = [r for r in read_metrics(out / "metrics.csv")
           if r["benchmark"] == "test_twins" and int(r["phase_epoch"]) == summary["best_epoch"]][0]
    again = evaluate(summary["model_dir"], built, "any(particle_n_twins >= 1)", split="test")
    assert again["dice"] == pytest.approx(float(row["dice"]), abs=1e-12) and again["n_images"] == int(row["n_images"])
    # A save / load round trip gives the same outputs bit for bit.
    save_model(model, tmp_path / "copy", train_config(cfg_dict(built, "x")).model, {"name": "copy"})
    copy, _ = load_model(tmp_path / "copy")
    x = torch.randn(2, 1, 72, 88)
    with torch.no_grad():
        assert torch.equal(model(x), copy(x))


def test_finetune_continues_the_curves(trained, built, tmp_path):
    from training.finetune import finetune_config

    out, summary = trained
    f = tmp_path / "ft.yaml"
    f.write_text(yaml.safe_dump({"name": "tiny-ft", "output_dir": str(tmp_path / "ft"),
                                 "init_from": summary["model_dir"], "epochs": 3, "batch_size": 2,
                                 "data": {"path": str(built), "split": "test", "n_images": 2},
                                 "benchmarks": cfg_dict(built, "x")["benchmarks"]}))
    cfg = finetune_config(f)
    assert cfg.optimizer.lr == pytest.approx(0.005) and cfg.patience == 10 and cfg.model.unet.depth == 3
    ft = run(cfg, progress=False)
    rows = read_metrics(Path(ft["metrics_file"]))
    phases = [(r["phase"], int(r["epoch"])) for r in rows if r["benchmark"] == "validation"]
    assert phases == [("train", e) for e in range(1, 13)] + [("finetune", e) for e in range(13, 16)]
    config = json.loads((Path(ft["model_dir"]) / "config.json").read_text())
    assert config["init_from"]["path"] == str(Path(summary["model_dir"]).resolve())
    assert config["train_data"][0]["n_images"] == 2
    assert "Parent model" in (Path(ft["model_dir"]) / "README.md").read_text()


def _write_cfg(tmp_path, d):
    f = tmp_path / "train.yaml"
    f.write_text(yaml.safe_dump(d))
    return f


def test_resume_after_kill_continues_the_same_run(built, tmp_path):
    """Kill a real training process after its second checkpoint; the re-run ends where an unbroken run ends."""
    d = cfg_dict(built, tmp_path / "broken", epochs=5)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "training.train", "--quiet", "--config", str(_write_cfg(tmp_path, d))]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = tmp_path / "broken" / "checkpoints" / "epoch-0002"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {int(r["phase_epoch"]) for r in read_metrics(tmp_path / "broken" / "metrics.csv")}
    assert 2 in done and 5 not in done
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    run(train_config(cfg_dict(built, tmp_path / "whole", epochs=5)), progress=False)
    broken = read_metrics(tmp_path / "broken" / "metrics.csv")
    whole = read_metrics(tmp_path / "whole" / "metrics.csv")
    keys = ("epoch", "benchmark", "dice", "iou", "train_loss", "lr")
    assert [[r[k] for k in keys] for r in broken] == [[r[k] for k in keys] for r in whole]


def test_two_processes_gather_the_same_metrics_as_one(built, tmp_path):
    """A real 2-process CPU launch (gloo): the benchmarks it logs equal one process scoring the same weights.

    `accelerate launch --cpu --num_processes 2` silently runs one process; MULTI_CPU needs --multi_gpu with
    ACCELERATE_USE_CPU=1. 8 training records in batches of 3 over 2 processes pad the last batch, which
    gather_for_metrics must drop.
    """
    from training.predict import evaluate

    d = cfg_dict(built, tmp_path / "two", epochs=1, batch_size=3)
    d["benchmarks"].append({"name": "train_all", "path": str(built), "split": "train"})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", "29533", "-m", "training.train", "--quiet",
                        "--config", str(_write_cfg(tmp_path, d))],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    model_dir = tmp_path / "two" / "model"
    assert json.loads((model_dir / "config.json").read_text())["world_size"] == 2
    logged = {row["benchmark"]: row for row in read_metrics(model_dir / "metrics.csv")}
    for name, split, query in (("train_all", "train", None), ("validation", "validation", None),
                               ("test_twins", "test", "any(particle_n_twins >= 1)")):
        one = evaluate(model_dir, built, query, split=split, batch_size=3)
        assert int(logged[name]["n_images"]) == one["n_images"]
        assert float(logged[name]["dice"]) == pytest.approx(one["dice"], abs=1e-9)
    assert int(logged["train_all"]["n_images"]) == 8


@pytest.mark.parametrize("change, field", [
    ({"benchmarks": []}, "benchmarks"),
    ({"epochs": 0}, "epochs"),
    ({"monitor": "nope"}, "monitor"),
    ({"model": {"architecture": "resnet"}}, "model.architecture"),
    ({"optimizer": {"lr": -1}}, "optimizer.lr"),
    ({"learning_rate": 0.1}, "learning_rate"),
    ({"model": {"segformer": {"hidden_sizes": [30, 64], "depths": [1, 1], "num_attention_heads": [4, 2]}}},
     "model.segformer"),
])
def test_bad_configs_name_the_field(built, change, field):
    with pytest.raises(ConfigError) as err:
        train_config(cfg_dict(built, "x", **change))
    assert field in str(err.value)


def test_bad_data_sources_say_what_to_fix(built, tmp_path):
    with pytest.raises(DataError, match="data.split.*has no split 'training'.*'train'"):
        run(train_config(cfg_dict(built, tmp_path / "a", data={"path": str(built), "split": "training"})))
    with pytest.raises(DataError, match="not a dataset folder"):
        run(train_config(cfg_dict(built, tmp_path / "b", data={"path": str(tmp_path)})))
    with pytest.raises(QueryError, match="defocus"):
        run(train_config(cfg_dict(built, tmp_path / "c", data={"path": str(built), "query": "defocus > 3"})))
    with pytest.raises(DataError, match="selects no records"):
        run(train_config(cfg_dict(built, tmp_path / "d", data={"path": str(built), "query": "dose_e_per_A2 > 1e9"})))
    f = _write_cfg(tmp_path, cfg_dict(built, tmp_path / "e", epochs="many"))
    r = subprocess.run([sys.executable, "-m", "training.train", "--config", str(f)], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "epochs" in r.stderr and "Traceback" not in r.stderr


def test_segformer_from_config_trains(built, tmp_path):
    small = {"hidden_sizes": [16, 32], "depths": [1, 1], "num_attention_heads": [1, 2], "decoder_hidden_size": 32}
    model = build_model(train_config(cfg_dict(built, "x", model={"architecture": "segformer",
                                                                  "segformer": small})).model)
    assert model.net.config.num_channels == 1
    assert model(torch.randn(2, 1, 64, 96)).shape == (2, 1, 64, 96)  # logits upsampled from 1/4 resolution
    s = run(train_config(cfg_dict(built, tmp_path / "sf", epochs=3, model={"architecture": "segformer",
                                                                          "segformer": small})), progress=False)
    rows = read_metrics(Path(s["metrics_file"]))
    losses = [float(r["train_loss"]) for r in rows if r["benchmark"] == "validation"]
    assert losses[-1] < losses[0]
    reloaded, cfg = load_model(s["model_dir"])
    assert cfg.model.architecture == "segformer" and type(reloaded).__name__ == "SegFormer"


def test_predict_writes_the_mask_a_micrograph_file_gets(trained, built, tmp_path):
    import tifffile
    from PIL import Image

    from generators.run import read_record
    from training.predict import predict_array, predict_file

    _, summary = trained
    model, config = load_model(summary["model_dir"])
    rec = read_record(built, "s000000-c000")
    f = tmp_path / "micrograph.tif"
    tifffile.imwrite(f, rec["image"])
    r = predict_file(summary["model_dir"], f, tmp_path / "mask.png", pixel_size_A=0.25)
    written = np.asarray(Image.open(tmp_path / "mask.png")) // 255
    assert np.array_equal(written, predict_array(model, rec["image"], "minmax"))
    dice = 2 * (written & rec["mask"]).sum() / (written.sum() + rec["mask"].sum())
    assert dice > 0.7 and r["n_particles"] >= 1 and r["model_pixel_size_A"] == 0.25
    # Twice the pixel count over the same field: resampled to the model's 0.25 Å and back to the file's grid.
    big = np.kron(rec["image"], np.ones((2, 2), np.float32))
    np.save(tmp_path / "big.npy", big)
    r2 = predict_file(summary["model_dir"], tmp_path / "big.npy", tmp_path / "big_mask.npy", pixel_size_A=0.125)
    big_mask = np.load(tmp_path / "big_mask.npy")
    assert big_mask.shape == big.shape
    assert (big_mask == np.kron(written, np.ones((2, 2), np.uint8))).mean() > 0.98
    assert r2["particle_fraction"] == pytest.approx(written.mean(), abs=0.02)


def test_cli_predict_and_evaluate(trained, built, tmp_path):
    from temsynth.cli import main

    _, summary = trained
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    assert main(["predict", summary["model_dir"], str(tmp_path / "broken.tif")]) == 2
    assert main(["predict", str(tmp_path), str(tmp_path / "broken.tif")]) == 2   # not a model folder
    assert main(["evaluate", summary["model_dir"], str(built), "nope > 1"]) == 2
    r = subprocess.run([sys.executable, "-m", "temsynth", "evaluate", summary["model_dir"], str(built),
                        "any(particle_n_twins >= 1)", "--split", "test"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_images"] >= 1 and 0 <= out["dice"] <= 1 and out["fingerprint"]


def test_several_sources_are_pooled(built):
    from training.data import training_set

    cfg = train_config(cfg_dict(built, "x", data=[{"path": str(built), "query": "all(particle_n_twins == 0)"},
                                                  {"path": str(built), "split": "test", "n_images": 2}]))
    pooled = training_set(cfg.data_sources, cfg.augment, 0)
    alone = [read_arrays(s, 0)[2] for s in cfg.data_sources]
    assert pooled.ids == alone[0] + alone[1] and len(alone[1]) == 2
    with pytest.raises(ConfigError, match="format: parquet"):
        train_config(cfg_dict(built, "x", data=[{"path": str(built)}, {"path": str(built), "format": "webdataset"}]))


def test_sources_of_different_image_sizes_pool_as_crops(built, monkeypatch):
    """Real 144-px tiles beside 256-px simulated fields: with a crop no larger than the smallest image every draw
    is one size and both sources feed the batches; without one, a one-line error says which field to set."""
    from torch.utils.data import DataLoader

    import training.data as data

    stacks = {0: np.zeros((3, 40, 40), np.float32), 1: np.zeros((2, 32, 48), np.float32)}
    for a in stacks.values():
        a[:, :, (np.arange(a.shape[2]) // 4) % 2 == 1] = 1.0  # 4-px stripes: every 24-px crop holds both levels

    def fake_read(src, seed=0, field="data"):
        k = int(field[5]) if field.startswith("data[") else 0
        a = stacks[k]
        return a, a.astype(np.uint8), [f"src{k}-{i}" for i in range(len(a))]

    monkeypatch.setattr(data, "read_arrays", fake_read)
    two = [{"path": str(built)}, {"path": str(built), "split": "test"}]
    cfg = train_config(cfg_dict(built, "x", data=two, augment={"crop_px": 48}))
    with pytest.raises(DataError, match=r"augment.crop_px <= 32"):
        data.training_set(cfg.data_sources, cfg.augment, 0)
    cfg = train_config(cfg_dict(built, "x", data=two, augment={"crop_px": 24}))
    pooled = data.training_set(cfg.data_sources, cfg.augment, 0)
    assert len(pooled) == 5 and pooled.ids[3:] == ["src1-0", "src1-1"]
    for i in range(5):  # record i is its own source's record, not a copy
        assert np.shares_memory(pooled.images[i], stacks[0 if i < 3 else 1][i if i < 3 else i - 3])
    batch = next(iter(DataLoader(pooled, batch_size=5)))
    assert batch["image"].shape == (5, 1, 24, 24) and batch["mask"].shape == (5, 1, 24, 24)
    # every crop keeps its image and mask together (flips and rotations included): the mask is the bright stripes
    assert torch.equal(batch["mask"] > 0.5, batch["image"] > batch["image"].amin(dim=(2, 3), keepdim=True))


def test_weight_average_is_what_is_scored_saved_and_resumed(built, tmp_path):
    """With ema_decay the logged scores and the saved model are the averaged weights, not the last step's, and a
    checkpoint carries the average so that a resumed run goes on averaging."""
    from training.predict import evaluate

    summary = run(train_config(cfg_dict(built, tmp_path / "ema", epochs=3, ema_decay=0.9)), progress=False)
    ckpt = sorted((tmp_path / "ema" / "checkpoints").glob("epoch-*"))[-1]
    raw = load_model(summary["model_dir"])[0].state_dict()
    from safetensors.torch import load_file
    last_raw = load_file(str(ckpt / "model.safetensors"))
    averaged = torch.load(ckpt / "custom_checkpoint_1.pkl", weights_only=True)
    n_train = len(read_arrays(train_config(cfg_dict(built, "x")).data_sources[0])[0])
    assert int(averaged["n_averaged"]) == 3 * (n_train // 4)  # one update per optimizer step (batch 4, drop_last)
    name = next(k for k in raw if k.endswith("weight") and raw[k].ndim == 4)
    assert not torch.equal(raw[name], last_raw[name])  # the saved model is not the last step's weights
    if summary["best_epoch"] == 3:
        assert torch.equal(raw[name], averaged["module." + name])
    row = [r for r in read_metrics(tmp_path / "ema" / "metrics.csv")
           if r["benchmark"] == "validation" and int(r["phase_epoch"]) == summary["best_epoch"]][0]
    again = evaluate(summary["model_dir"], built, split="validation")
    assert again["dice"] == pytest.approx(float(row["dice"]), abs=1e-12)
