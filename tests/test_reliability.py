"""Fuzz and fault suite: bad configs, crafted inputs, damaged folders, concurrent runs, odd images.

Every case must give the right answer or one line naming the input and the fix (exit 2; `info` exits 1 on a
damaged folder), never a traceback, and leave nothing behind that blocks a corrected re-run.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_dict

from generators.config import ConfigError, from_dict, load_config
from generators.run import RunError
from temsynth.cli import main

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys, code=2):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


def damaged_copy(built, tmp_path, name="ds"):
    out = tmp_path / name
    shutil.copytree(built, out)
    return out


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("field,value", [
    ("imaging.cs_mm", float("nan")), ("imaging.pixel_size_A", float("inf")),
    ("imaging.defocus_nm", {"uniform": [-5, float("inf")]}), ("structure.radius_A", {"choice": [9, float("nan")]}),
    ("imaging.residual_aberrations_A", {"C30": float("-inf")}), ("mask.phase_threshold_rad", float("nan")),
    ("imaging.dose_e_per_A2", {"truncnormal": {"mean": float("nan"), "sd": 1, "low": 1, "high": 9}}),
])
def test_non_finite_numbers_are_refused_anywhere(field, value):
    with pytest.raises(ConfigError) as err:
        from_dict(tiny_dict(**{field: value}))
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and field in lines[1] and "finite" in lines[1]


def test_cli_nan_config_writes_nothing(tmp_path, capsys):
    cfg = tmp_path / "nan.yaml"
    cfg.write_text(yaml.safe_dump(tiny_dict()).replace("cs_mm", "cs_mm") + "\nmask: {closing_radius_A: .nan}\n")
    out = tmp_path / "out"
    assert main(["generate", "--config", str(cfg), "--out", str(out), "--workers", "0", "--quiet"]) == 2
    assert "mask.closing_radius_A" in one_line_error(capsys) and not out.exists()


def test_a_range_error_in_a_distribution_is_reported_once():
    with pytest.raises(ConfigError) as err:
        from_dict(tiny_dict(**{"imaging.defocus_nm": {"uniform": [20, -20]}}))
    lines = str(err.value).splitlines()[1:]
    assert lines == ["  - imaging.defocus_nm: uniform: [low, high] needs low <= high, got [20.0, -20.0]"]
    with pytest.raises(ConfigError) as err:
        from_dict(tiny_dict(**{"imaging.defocus_nm": {"unifrom": [0, 1]}}))
    assert len(str(err.value).splitlines()) == 2 and "uniform: [low, high]" in str(err.value)


@pytest.mark.parametrize("text,needle", [
    ("", "is empty"), ("# only a comment\n", "is empty"), ("- a\n- b\n", "must be a mapping"),
    ("just words\n", "must be a mapping"),
    ("name: a\nseed: 1\nname: b\n", "key 'name' is given twice (lines 1 and 3)"),
    ("imaging:\n  cs_mm: 0.001\n  defocus_nm: 0\n  cs_mm: 1.2\n", "key 'cs_mm' is given twice (lines 2 and 4)")])
@pytest.mark.parametrize("reader", ["generation", "training", "study"])
def test_every_yaml_reader_refuses_empty_repeated_and_non_mapping_files(tmp_path, capsys, text, needle, reader):
    """The three kinds of config the project reads, each through its own front door; one line, the key and lines."""
    from training.config import load_train_config
    from training.study import load_study

    path = tmp_path / "c.yaml"
    path.write_text(text)
    load = {"generation": load_config, "training": load_train_config, "study": lambda p: load_study(p)}[reader]
    with pytest.raises(ConfigError) as err:
        load(path)
    assert needle in str(err.value) and str(path) in str(err.value) and len(str(err.value).splitlines()) == 1
    if reader == "generation":  # and on the command line: exit 2, one line, nothing generated
        assert main(["generate", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
        assert needle in one_line_error(capsys) and not (tmp_path / "out").exists()


def test_yaml_merge_keys_may_still_override(tmp_path):
    """`<<: *anchor` then a key is YAML's way to override on purpose: not a repeated key."""
    from generators.config import read_yaml

    path = tmp_path / "m.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
    assert read_yaml(path)["other"] == {"x": 1, "y": 3}


def test_zone_axis_zero_and_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="zone_axis"):
        from_dict(tiny_dict(**{"structure.orientation": {"mode": "zone_axis", "zone_axis": [0, 0, 0]}}))
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


def test_runs_that_cannot_fit_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    import time

    from generators import run as run_mod

    monkeypatch.setattr(run_mod, "_available_memory", lambda: 8 * 2 ** 30)
    big = from_dict(tiny_dict(**{"imaging.image_size_px": 8192, "n_structures": 2}))
    with pytest.raises(RunError, match=r"GiB per worker .* 8\.0 GiB are available"):
        run_mod.generate(big, tmp_path / "big", workers=2, progress=False)
    t0 = time.perf_counter()
    many = from_dict(tiny_dict(n_structures=10_000_000))
    with pytest.raises(RunError, match="GiB free"):
        run_mod.generate(many, tmp_path / "many", workers=2, progress=False)
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "big").exists() and not (tmp_path / "many").exists()


def test_split_map_is_compact_and_the_same_as_before(tiny_cfg):
    from generators.run import assign_splits

    m = assign_splits(from_dict(tiny_dict(n_structures=2_000_000)))
    assert m._codes.nbytes == 2_000_000 and set(m.values()) == {"train", "validation", "test"}
    small = assign_splits(tiny_cfg)
    assert sorted(small.items()) == sorted((i, small[i]) for i in range(tiny_cfg.n_structures))
    assert [small[i] for i in small.indices("train")] == ["train"] * len(small.indices("train"))


# ---------------------------------------------------------------- generation lock and stale runs
def test_a_second_generate_into_a_running_folder_refuses_at_once(tmp_path, tiny_cfg):
    from filelock import FileLock

    from generators.run import LOCK_NAME, OWNER_NAME, generate

    out = tmp_path / "busy"
    out.mkdir()
    held = FileLock(str(out / LOCK_NAME))
    held.acquire()
    (out / OWNER_NAME).write_text(json.dumps({"pid": 4242, "host": "node7", "started": "2026-11-25T15:00:00+00:00"}))
    try:
        with pytest.raises(RunError, match="being generated by another run .pid 4242 on node7"):
            generate(tiny_cfg, out, workers=0, progress=False)
        assert not (out / "_work").exists()
    finally:
        held.release()


def test_a_failed_run_with_nothing_finished_does_not_lock_the_folder(tmp_path, tiny_cfg):
    from generators.run import _check_folder

    out = tmp_path / "failed"
    (out / "_work" / "parts").mkdir(parents=True)
    (out / "_work" / "config.json").write_text(json.dumps({"config_sha256": "0" * 64}))
    (out / "structures").mkdir()
    assert _check_folder(tiny_cfg, out) == "new" and not (out / "_work").exists()
    (out / "_work" / "parts").mkdir(parents=True)
    (out / "_work" / "config.json").write_text(json.dumps({"config_sha256": "0" * 64}))
    (out / "_work" / "parts" / "s000000.parquet").write_bytes(b"x")
    with pytest.raises(RunError, match="1 structures done"):
        _check_folder(tiny_cfg, out)


def test_a_failing_structure_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, tiny_cfg):
    from generators import run as run_mod

    real = run_mod.process_structure
    calls = []

    def flaky(cfg_json, index, out_dir):
        calls.append(index)
        if index == 1:
            raise MemoryError("Unable to allocate 2.00 GiB for an array")
        return real(cfg_json, index, out_dir)

    cfg = from_dict(tiny_dict(n_structures=2, conditions_per_structure=1))
    monkeypatch.setattr(run_mod, "process_structure", flaky)
    with pytest.raises(RunError, match=r"structure 1 failed \(MemoryError: Unable to allocate.*1 finished"):
        run_mod.generate(cfg, tmp_path / "o", workers=0, progress=False, log=lambda *a: None)
    monkeypatch.setattr(run_mod, "process_structure", real)
    m = run_mod.generate(cfg, tmp_path / "o", workers=0, progress=False, log=lambda *a: None)
    assert m["n_records"] == 2 and not (tmp_path / "o" / "_work").exists()
    assert not (tmp_path / "o" / run_mod.OWNER_NAME).exists()


# ---------------------------------------------------------------- integrity where data are read
def _readers(ds, tmp_path):
    """Every reader of a dataset folder, as (name, callable) raising a one-line error on a damaged folder."""
    from generators.run import regenerate_record
    from generators.subsets import query_summary, save_named_subset, trace, write_subset
    from training.config import train_config
    from training.data import DataError, read_arrays
    from training.predict import evaluate

    rid = "s000000-c000"
    src = train_config({"output_dir": str(tmp_path / "r"), "data": {"path": str(ds)},
                        "benchmarks": [{"name": "v", "path": str(ds)}]}).data_sources[0]
    return [("query", lambda: query_summary(ds, "dose_e_per_A2 > 0")),
            ("subset", lambda: write_subset(ds, "dose_e_per_A2 > 0", tmp_path / "sub")),
            ("named subset", lambda: save_named_subset(ds, "all", "dose_e_per_A2 > 0")),
            ("trace", lambda: trace(ds, rid)), ("regenerate", lambda: regenerate_record(ds, rid)),
            ("training", lambda: read_arrays(src)),
            ("evaluate", lambda: evaluate(_model_folder(tmp_path), ds, split="train"))], (RunError, DataError)


def test_a_deleted_shard_stops_every_reader_and_info(built, tmp_path, capsys):
    ds = damaged_copy(built, tmp_path)
    m = json.loads((ds / "manifest.json").read_text())
    gone = next(s["path"] for s in m["shards"] if s["format"] == "parquet" and s["split"] == "train")
    (ds / gone).unlink()
    readers, errors = _readers(ds, tmp_path)
    for name, fn in readers:
        with pytest.raises(errors) as err:
            fn()
        assert f"shard {gone} is missing" in str(err.value) and "\n" not in str(err.value), name
    assert not (tmp_path / "sub").exists()  # the refused subset left nothing behind
    from datasets import load_dataset

    with pytest.raises(FileNotFoundError, match=Path(gone).name):  # the card names every shard: no silent 80 of 144
        load_dataset(str(ds))
    assert main(["info", str(ds)]) == 1 and f"shard {gone} is missing" in capsys.readouterr().out
    assert main(["info", str(ds), "--verify"]) == 1
    assert main(["query", str(ds), "n_particles < 2.5"]) == 2 and "is missing" in one_line_error(capsys)


def test_an_extra_shard_is_refused(built, tmp_path):
    from generators.info import check

    ds = damaged_copy(built, tmp_path)
    shutil.copy(next((ds / "data").glob("train-*.parquet")), ds / "data" / "train-00009-of-00009.parquet")
    assert any("does not list" in p for p in check(ds))


@pytest.mark.parametrize("edit", ["n_records", "seed", "structure", "hash-consistent n_records"])
def test_verify_covers_structure_files_and_the_manifest_itself(built, tmp_path, capsys, edit):
    from generators.writers import write_manifest

    ds = damaged_copy(built, tmp_path)
    m = json.loads((ds / "manifest.json").read_text())
    assert main(["info", str(ds), "--verify"]) == 0 and "checksums OK" in capsys.readouterr().out
    if edit == "structure":
        (ds / m["structures"][0]["path"]).unlink()
    elif edit == "n_records":
        m["n_records"] += 1
        (ds / "manifest.json").write_text(json.dumps(m, indent=2))
    elif edit == "seed":
        m["config"]["seed"] += 1
        (ds / "manifest.json").write_text(json.dumps(m, indent=2))
    else:  # re-hashed by someone who knew how: the counts still disagree
        m["n_records"] += 1
        m["splits"]["train"] += 1
        write_manifest(ds, m)
    assert main(["info", str(ds), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "Traceback" not in out


@pytest.mark.parametrize("content", ["{not json", "[]", '{"name": "x"}', "\xff\xfe"])
def test_invalid_or_incomplete_manifests_are_one_line(built, tmp_path, capsys, content):
    ds = damaged_copy(built, tmp_path)
    (ds / "manifest.json").write_bytes(content.encode("latin-1"))
    for argv in (["info", str(ds)], ["query", str(ds), "n_particles > 0"], ["trace", str(ds), "s000000-c000"]):
        assert main(argv) == 2
        err = one_line_error(capsys)
        assert "manifest.json" in err and len(err.strip().splitlines()) == 1


def test_a_corrupt_row_group_is_one_line_for_trace_regenerate_and_training(built, tmp_path, capsys):
    import pyarrow.parquet as pq

    from training.config import train_config
    from training.data import DataError, read_arrays

    ds = damaged_copy(built, tmp_path)
    for shard in (ds / "data").glob("*.parquet"):  # same size, footer intact, pages overwritten
        raw = bytearray(shard.read_bytes())
        footer = pq.read_metadata(shard).serialized_size + 8
        raw[8:len(raw) - footer - 8] = b"\x5a" * (len(raw) - footer - 16)
        shard.write_bytes(bytes(raw))
    assert main(["trace", str(ds), "s000000-c000"]) == 2
    assert "cannot be read" in one_line_error(capsys)
    assert main(["regenerate", str(ds), "s000000-c000"]) == 2
    assert "cannot be read" in one_line_error(capsys)
    src = train_config({"output_dir": "x", "data": {"path": str(ds)},
                        "benchmarks": [{"name": "v", "path": str(ds)}]}).data_sources[0]
    with pytest.raises(DataError, match="cannot be read"):
        read_arrays(src)
    assert main(["info", str(ds), "--verify"]) == 1


def test_info_after_a_run_resumed_during_assembly(built, tmp_path, capsys):
    from generators.writers import write_manifest

    ds = damaged_copy(built, tmp_path)
    m = json.loads((ds / "manifest.json").read_text())
    m["timing"] = {"seconds": 0.4, "structures_timed": 0, "mean_structure_seconds": None}
    write_manifest(ds, m)
    assert main(["info", str(ds)]) == 0
    assert "0.4 s for 0 structures" in capsys.readouterr().out


def test_subset_folders_record_their_structures_and_verify(built, tmp_path):
    from generators.info import check
    from generators.subsets import write_subset

    m = write_subset(built, "n_particles >= 1", tmp_path / "sub")
    assert m["structures"] and check(tmp_path / "sub", full=True) == []


# ---------------------------------------------------------------- queries on the command line
@pytest.mark.parametrize("expr", ["not " * 1000 + "n_particles < 2", "n_particles < " + "9" * 24, "defocus_nm == True",
                                  "crop_offset_px[True] > 0", "(" * 300 + "n_particles < 2" + ")" * 300])
def test_crafted_queries_are_one_line_on_the_command_line(built, capsys, expr):
    assert main(["query", str(built), expr]) == 2
    err = one_line_error(capsys)
    assert err.startswith("temsynth query: ") and "columns:" in err


def test_select_on_the_real_train_split_keeps_decimal_meaning(built):
    from datasets import load_dataset

    from generators.query import select

    train = load_dataset(str(built), split="train")
    n = train["n_particles"]
    assert len(select(train, "n_particles < 1.5")) == sum(v < 1.5 for v in n)
    assert len(select(train, "image_size_px == 128.9")) == 0


# ---------------------------------------------------------------- models and inference
def _model_folder(tmp_path, depth=2, norm="group", px=0.25):
    from training.config import ModelConfig
    from training.models import build_model, save_model

    folder = tmp_path / f"model-{depth}-{norm}"
    if not folder.exists():
        cfg = ModelConfig.model_validate({"unet": {"depth": depth, "base_width": 4, "norm": norm}})
        save_model(build_model(cfg), folder, cfg, {"training_config": {"augment": {"normalise": "minmax"}},
                                                   "train_data": [{"pixel_sizes_A": [px]}]})
    return folder


def test_a_model_folder_config_is_read_typed_once(tmp_path):
    from training.config import ModelConfig
    from training.models import ModelFolderError, build_model, read_model_config, save_model

    cfg = ModelConfig.model_validate({"unet": {"depth": 2, "base_width": 4, "norm": "group"}})
    info = {"name": "ft", "training_config": {"augment": {"normalise": "percentile"}, "optimizer": {"lr": 0.004}},
            "train_data": [{"pixel_sizes_A": [0.7], "n_images": 8}], "init_from": {"train_data": [{"n_images": 96}]},
            "seed": 3}
    folder = save_model(build_model(cfg), tmp_path / "m", cfg, info)
    m = read_model_config(folder)
    assert m.model == cfg and m.augment.normalise == "percentile" and m.lr == 0.004 and m.pixel_size_A == 0.7
    # a fine-tuned model's simulated data is its parent's; a typed record dumps back to what was written
    assert [s.model_dump(exclude_unset=True) for s in m.first_phase_data] == [{"n_images": 96}]
    assert m.seed == 3 and m.n_parameters > 0 and m.init_from.seed is None  # provenance, typed
    # config.json as a training run writes it (the full training config, its sources' records) reads typed
    train = {"name": "t", "output_dir": str(tmp_path / "run"), "seed": 5, "optimizer": {"lr": 0.02},
             "data": {"path": "d", "split": "train", "query": "n_particles >= 1"},
             "benchmarks": [{"name": "validation", "path": "d"}], "augment": {"normalise": "zscore"}}
    from training.config import train_config
    src = {"path": "d", "split": "train", "query": "n_particles >= 1", "format": "parquet", "n_images": None,
           "fingerprint": "abc", "pixel_sizes_A": [0.25]}
    full = {"name": "t", "phase": "train", "seed": 5, "world_size": 1, "mixed_precision": "no",
            "training_config": train_config(train).model_dump(mode="json"), "train_data": [src],
            "benchmarks": [{**src, "name": "validation", "split": "validation", "query": None}], "init_from": None,
            "epoch_offset": 0, "epoch": 4, "phase_epoch": 4, "scores": {"validation": {"dice": 0.9}},
            "written_by_a_later_version": 1}
    m = read_model_config(save_model(build_model(cfg), tmp_path / "full", cfg, full))
    assert m.training_config.data.query == "n_particles >= 1" and m.training_config.seed == 5 and m.lr == 0.02
    assert m.augment.normalise == "zscore" and m.pixel_size_A == 0.25 and m.epoch == 4
    assert m.first_phase_data[0].fingerprint == "abc" and m.benchmarks[0].name == "validation"
    assert m.model_extra == {"written_by_a_later_version": 1}  # keys a later version adds pass through
    assert m.training_config.model_dump(mode="json") == full["training_config"]
    (folder / "config.json").write_text('{"model": {"architecture": "resnet"}}')
    with pytest.raises(ModelFolderError, match="does not describe a model"):
        read_model_config(folder)


def test_broken_model_folders_are_one_line(tmp_path, capsys):
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).random((64, 64)).astype(np.float32))
    good = _model_folder(tmp_path)
    trunc = tmp_path / "trunc"
    shutil.copytree(good, trunc)
    raw = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    other = tmp_path / "other"
    shutil.copytree(good, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["unet"]["depth"] = 3
    (other / "config.json").write_text(json.dumps(cfg))
    notjson = tmp_path / "notjson"
    shutil.copytree(good, notjson)
    (notjson / "config.json").write_text("{")
    for folder, needle in ((trunc, "truncated"), (other, "do not fit the architecture"),
                           (notjson, "does not describe a model")):
        assert main(["predict", str(folder), str(img), "--pixel-size-A", "0.25"]) == 2
        err = one_line_error(capsys)
        assert needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind,needle", [("constant", "constant image"),
                                         ("one_px", "one_px.npy: 1 x 1 px is smaller than 32 px"),
                                         ("tiny", "smaller than"), ("nan", "NaN"), ("shrinks", "smaller than")])
def test_predict_refuses_what_no_model_can_answer(tmp_path, capsys, kind, needle):
    img = tmp_path / f"{kind}.npy"
    arr = {"constant": np.full((64, 64), 7.0), "one_px": np.ones((1, 1)), "tiny": np.arange(9.0).reshape(3, 3),
           "nan": np.where(np.eye(64) > 0, np.nan, 1.0), "shrinks": np.random.default_rng(1).random((40, 40))}[kind]
    np.save(img, arr.astype(np.float32))
    px = {"shrinks": "0.05", "tiny": "0.25"}.get(kind, "4.0")  # 40 px at 0.05 Å are 8 px at the model's 0.25 Å
    assert main(["predict", str(_model_folder(tmp_path)), str(img), "--pixel-size-A", px]) == 2
    assert needle in one_line_error(capsys)


def test_evaluate_batch_size_zero(built, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(_model_folder(tmp_path)), str(built), "--batch-size", "0"])
    assert e.value.code == 2 and "positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_tiled_inference_equals_the_whole_field_away_from_seams(tmp_path, norm):
    import torch

    from training.models import load_model
    from training.predict import _geometry, logits_tiled

    model, _ = load_model(_model_folder(tmp_path, depth=3, norm=norm))
    x = np.random.default_rng(2).random((600, 700)).astype(np.float32)
    with torch.no_grad():
        whole = model(torch.from_numpy(x)[None, None])[0, 0].numpy()
    align, margin, _ = _geometry(model)
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[-2:])))
    tiled = logits_tiled(model, x, tile=256)
    hook.remove()
    assert len(seen) > 4 and max(max(s) for s in seen) <= 256  # memory bounded by one tile
    assert np.abs(tiled - whole).max() < 1e-4
    assert margin % align == 0 and margin >= (14 * 2 ** 3 - 9) // 2


def test_predict_array_writes_the_tiled_mask_directly(tmp_path):
    from training.data import normalise
    from training.models import load_model
    from training.predict import logits_tiled, predict_array

    model, _ = load_model(_model_folder(tmp_path, depth=2, norm="group"))
    x = np.random.default_rng(3).random((1100, 600)).astype(np.float32) * 50
    mask = predict_array(model, x, "minmax")  # 1100 px > one 512 px tile: several tiles
    assert mask.dtype == np.uint8 and mask.shape == x.shape
    assert np.array_equal(mask, logits_tiled(model, normalise(x, "minmax")) > 0)


def test_test_time_augmentation_makes_predictions_equivariant_under_rotations_and_mirrors(tmp_path):
    import torch

    from training.data import normalise
    from training.models import load_model
    from training.predict import _dihedral, logits_dihedral, logits_tiled, predict_array

    torch.manual_seed(0)
    model, _ = load_model(_model_folder(tmp_path, depth=2, norm="group"))
    yy, xx = np.mgrid[:96, :128]
    noise = np.random.default_rng(4).random((96, 128))
    x = (np.sin(xx / 3.0) * np.cos(yy / 5.0) + 0.02 * xx + noise).astype(np.float32)
    avg = logits_dihedral(model, x)
    for k, flip in ((1, False), (2, True), (3, True)):
        moved = np.ascontiguousarray(_dihedral(x, k, flip))
        back = _dihedral(logits_dihedral(model, moved), k, flip, inverse=True)
        assert np.abs(back - avg).max() < 1e-4 * (1 + np.abs(avg).max())  # the same, whichever way it lies
        # an untrained net alone is far from equivariant: that is what the averaging removes
        plain = _dihedral(logits_tiled(model, moved), k, flip, inverse=True)
        assert np.abs(plain - logits_tiled(model, x)).max() > 100 * np.abs(back - avg).max() + 1e-4
    mask = predict_array(model, x, "minmax", tta=True)
    assert mask.dtype == np.uint8 and np.array_equal(mask, logits_dihedral(model, normalise(x, "minmax")) > 0)


# ---------------------------------------------------------------- importer: masks and per-file pixel sizes
def _micrographs(d: Path, n=3, size=64):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    disk = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 5) ** 2).astype(np.uint8)
    for i in range(n):
        np.save(d / f"m{i}.npy", rng.random((size, size)).astype(np.float32) + disk)
        np.save(d / f"m{i}_mask.npy", disk)
    return disk


def _import(argv):
    from dataset_scripts.import_experimental import main as imp

    return imp(argv)


@pytest.mark.parametrize("mask,mapping,needle", [
    ("labels012", None, "mask values {0, 1, 2}"), ("white255", None, "white background"),
    ("labels012", "0=0,1=1,2=1", None), ("white255", "255=0,0=1", None), ("bool", None, None),
    ("labels012", "0=0,1=1", "not in --mask-values"),
])
def test_importer_masks_must_be_binary_or_mapped(tmp_path, capsys, mask, mapping, needle):
    from PIL import Image

    disk = _micrographs(tmp_path / "in", n=2)
    for i in range(2):
        (tmp_path / "in" / f"m{i}_mask.npy").unlink()
        if mask == "labels012":
            np.save(tmp_path / "in" / f"m{i}_mask.npy", disk * (1 + (np.arange(64)[None, :] > 32)))
        elif mask == "white255":
            Image.fromarray(((1 - disk) * 255).astype(np.uint8)).save(tmp_path / "in" / f"m{i}_mask.png")
        else:
            np.save(tmp_path / "in" / f"m{i}_mask.npy", disk.astype(bool))
    argv = [str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--pixel-size-A", "0.25",
            "--target-pixel-size-A", "0.25", "--tile-px", "64"] + (["--mask-values", mapping] if mapping else [])
    rc = _import(argv)
    err = one_line_error(capsys)
    if needle:
        assert rc == 2 and needle in err and "m0_mask" in err and not (tmp_path / "out").exists()
    else:
        assert rc == 0
        import pyarrow.parquet as pq

        masks = np.concatenate([np.asarray(pq.read_table(p)["mask"].to_pylist(), np.uint8)
                                for p in (tmp_path / "out" / "data").glob("*.parquet")])
        assert all(np.array_equal(m, disk) for m in masks)


def _csv(path, rows):
    path.write_text("file,material,pixel_size_A\n" + "".join(f"{f},Au,{p}\n" for f, p in rows))
    return path


@pytest.mark.parametrize("rows,extra,needle", [
    ([("m0.npy", 0.2), ("m1.npy", 0.4)], [], "no row for micrograph m2.npy"),
    ([("m0.npy", 0.2), ("m1.npy", 0.4), ("m2.npy", 0.2), ("m1.npy", 0.4)], [], "m1.npy has more than one row"),
    ([("m0.npy", 0.2), ("m1.npy", -1), ("m2.npy", 0.2)], [], "m1.npy: pixel_size_A '-1'"),
    ([("m0.npy", 0.2), ("m1.npy", "abc"), ("m2.npy", 0.2)], [], "m1.npy: pixel_size_A 'abc'"),
    ([("m0.npy", 0.2), ("m1.npy", "nan"), ("m2.npy", 0.2)], [], "m1.npy: pixel_size_A 'nan'"),
    ([("m0.npy", 0.2), ("m1.npy", 0.4), ("m2.npy", 0.2)], ["--pixel-size-A", "0.3"], "not both"),
])
def test_pixel_size_csv_errors_name_the_file(tmp_path, capsys, rows, extra, needle):
    _micrographs(tmp_path / "in")
    csv = _csv(tmp_path / "px.csv", rows)
    rc = _import([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--pixel-sizes", str(csv),
                  "--target-pixel-size-A", "0.4", "--tile-px", "16", *extra])
    assert rc == 2 and needle in one_line_error(capsys) and not (tmp_path / "out").exists()


def test_pixel_size_csv_sets_each_micrographs_size(tmp_path):
    import pyarrow.dataset as pads

    _micrographs(tmp_path / "in")
    csv = _csv(tmp_path / "px.csv", [("m0.npy", 0.2), ("m1.npy", 0.4), ("m2.npy", 0.8), ("other.npy", 1)])
    assert _import([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--pixel-sizes", str(csv),
                    "--target-pixel-size-A", "0.4", "--tile-px", "16"]) == 0
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    got = {s["file"]: (s["pixel_size_A"], s["resampled_size_px"][0]) for s in m["sources"]}
    assert got == {"m0.npy": (0.2, 32), "m1.npy": (0.4, 64), "m2.npy": (0.8, 128)}
    t = pads.dataset(tmp_path / "out" / "data").to_table(columns=["source_file", "pixel_size_source"])
    assert set(t["pixel_size_source"].to_pylist()) == {"csv"}


@pytest.mark.parametrize("size,tile,needle", [
    (1, "8", "m0.npy: 1 x 1 px is smaller than 32 px"),
    (20, "8", "m0.npy: 20 x 20 px is smaller than 32 px"),
    (48, "64", "m0.npy: 48 x 48 px (48 x 48 px at the target 1 Å/px) is smaller than one 64-px tile")])
def test_import_refuses_micrographs_smaller_than_a_tile_or_32_px(tmp_path, capsys, size, tile, needle):
    d = tmp_path / "in"
    d.mkdir()
    img = np.random.default_rng(0).random((size, size)).astype(np.float32)
    np.save(d / "m0.npy", img)
    np.save(d / "m0_mask.npy", (img > 0.5).astype(np.uint8))
    assert _import([str(d), "--out", str(tmp_path / "out"), "--pixel-size-A", "1", "--target-pixel-size-A", "1",
                    "--tile-px", tile]) == 2
    err = one_line_error(capsys)
    assert needle in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_the_real_set_imports_with_its_index(tmp_path):
    from datasets import load_dataset

    from temsynth.resources import real_set_dir

    real = real_set_dir()  # bundled with the package: present on every checkout and install

    assert _import([str(real), "--out", str(tmp_path / "exp"), "--pixel-sizes", str(real / "index.csv"),
                    "--target-pixel-size-A", "0.5", "--tile-px", "128"]) == 0
    ds = load_dataset(str(tmp_path / "exp"))
    assert sum(len(d) for d in ds.values()) == 64 and set(ds) == {"finetune", "benchmark"}
    assert set(ds["benchmark"]["pixel_size_source"]) == {"csv"}


def test_a_webdataset_query_matching_nothing_is_refused_and_does_not_lock_the_run(built, tmp_path, capsys):
    from training.train import main as train_main

    out = tmp_path / "run"
    cfg = {"output_dir": str(out), "epochs": 1, "batch_size": 2,
           "data": {"path": str(built), "format": "webdataset", "query": "dose_e_per_A2 < 0"},
           "benchmarks": [{"name": "v", "path": str(built)}], "model": {"unet": {"depth": 2, "base_width": 4}}}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(path), "--quiet"]) == 2
    assert "selects no records" in one_line_error(capsys)
    assert not (out / "train_config.json").exists()
