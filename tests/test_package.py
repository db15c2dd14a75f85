"""The package as a user meets it: one command line, the bundled real set, scoring on it."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from temsynth.cli import VERBS, build_parser, main
from temsynth.resources import cards_dir, real_set_dir

WORKFLOW = ["presets", "generate", "info", "gallery", "query", "trace", "regenerate", "import", "train", "finetune",
            "evaluate", "score", "predict", "study"]


def test_help_lists_the_verbs_in_workflow_order(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    positions = [out.index(f"    {v} ") if f"    {v} " in out else out.index(f"    {v}\n") for v in WORKFLOW]
    assert positions == sorted(positions), out
    # Other verbs (calibrate, measure, ...) may join the table; the workflow ones keep their order.
    assert [v.name for v in VERBS if v.name in WORKFLOW] == WORKFLOW


@pytest.mark.parametrize("verb", [v.name for v in VERBS])
def test_every_verb_help_has_an_example(verb, capsys):
    """Delegated verbs (train, import, score, ...) answer with their own parser, and the example reaches it."""
    with pytest.raises(SystemExit) as code:
        main([verb, "--help"])
    out = capsys.readouterr().out
    assert code.value.code == 0 and f"usage: temsynth {verb}" in out
    example = next(v.example for v in VERBS if v.name == verb)
    assert "example:" in out and example.split()[1] == verb and " ".join(example.split()) in " ".join(out.split())


def test_python_dash_m_entry_points_keep_working():
    for module in ("temsynth", "training.train", "training.finetune"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "usage:" in r.stdout, (module, r.stderr[-500:])


def test_the_real_set_is_bundled_with_its_licence_and_index():
    real = real_set_dir()
    rows = list(csv.DictReader(open(real / "index.csv", newline="")))
    assert len(rows) == 16 and {r["material"] for r in rows} == {"Au", "Ag"}
    for r in rows:
        image, mask = np.load(real / r["file"]), np.load(real / r["mask"])
        assert image.shape == mask.shape == tuple(int(n) for n in r["shape"].split("x"))
        assert set(np.unique(mask)) <= {0, 1} and abs(mask.mean() - float(r["mask_fraction"])) < 0.001
    notice = (real.parent / "LICENCE").read_text()
    assert "MIT License" in notice and "Scott Lab" in notice and "0da34bb" in (real.parent / "README.md").read_text()
    assert {p.name for p in cards_dir().iterdir()} >= {"dataset_card.md", "model_card.md", "study_report.md"}


# ---------------------------------------------------------------- score
def _tiny_model(tmp_path, px=0.7):
    from training.config import ModelConfig
    from training.models import build_model, save_model

    folder = tmp_path / "model"
    cfg = ModelConfig.model_validate({"unet": {"depth": 2, "base_width": 4}})
    save_model(build_model(cfg), folder, cfg, {"training_config": {"augment": {"normalise": "minmax"}},
                                               "train_data": [{"pixel_sizes_A": [px]}]})
    return folder


@pytest.mark.parametrize("oracle", ["truth", "everything"])
def test_score_pools_dice_over_fields_and_measures_bare_carbon(tmp_path, monkeypatch, oracle):
    """With a model that answers the hand-drawn mask, pooled Dice is 1 and no false positive; with one that calls
    every pixel a particle, pooled Dice is 2 L / (N + L) and the bare-carbon false-positive area ~1."""
    import training.score as sc

    real = real_set_dir()
    index = {r["file"]: r for r in sc.fields(real)}
    truth = {f: np.load(real / r["mask"]).astype(np.uint8) for f, r in index.items()}

    def fake(model, config, image, px, tta=False):
        from scipy import ndimage

        f = next(k for k, r in index.items() if float(r["pixel_size_A"]) == px and truth[k].shape == image.shape
                 and np.array_equal(np.load(real / k), image))
        mask = truth[f] if oracle == "truth" else np.ones_like(truth[f])
        return mask, ndimage.label(mask)[0]

    import training.real_particles as rp

    monkeypatch.setattr(rp, "predict_particles", fake)
    r = sc.score(str(_tiny_model(tmp_path)))
    labelled = sum(int(m.sum()) for m in truth.values())
    pixels = sum(m.size for m in truth.values())
    assert r["n_fields"] == 16 and r["bare_carbon_fields"] == 3
    assert set(r["dice_by_class"]) == {"Ag 5 nm", "Au 2.2 nm", "Au 5 nm", "Au 10 nm"}
    if oracle == "truth":
        assert r["pooled_dice"] == 1.0 and r["bare_carbon_false_positive_fraction"] == 0.0
        # the particles are the labels' own components: every one found, none extra
        assert r["particles"]["all"]["particle_f1"] == 1.0
        assert r["particles"]["with_border"]["all"]["particle_f1"] == 1.0
        # the table says so in words: 17 labelled particles away from the border, all found, at their sizes
        a = r["particles"]["all"]
        assert f"1.000  ({a['count_true']} found for {a['count_true']} labelled" in sc.table(r)
    else:
        assert r["pooled_dice"] == pytest.approx(2 * labelled / (pixels + labelled))
        assert r["bare_carbon_false_positive_fraction"] > 0.99


def test_temsynth_score_prints_the_table_and_bench_real_the_json(tmp_path, capsys):
    model = _tiny_model(tmp_path)
    assert main(["score", str(model), "--out", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "pooled Dice" in out and "bare-carbon false-positive area" in out and out.count(".npy") == 16
    saved = json.loads((tmp_path / "s.json").read_text())
    assert f"{saved['pooled_dice']:.4f}" in out and saved["real"] == str(real_set_dir())
    r = subprocess.run([sys.executable, "benchmarks/bench_real.py", str(model)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and json.loads(r.stdout)["pooled_dice"] == saved["pooled_dice"]


@pytest.mark.parametrize("argv,needle", [(["--real", "nowhere"], "nowhere has no index.csv"),
                                         (["--fields", "benchmark"], "--fields needs --split-from")])
def test_score_bad_input_is_one_line(tmp_path, capsys, argv, needle):
    assert main(["score", str(_tiny_model(tmp_path)), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- the wheel, installed away from the source tree
def _copy_sources(root, dest):
    """The files git tracks (what a fresh clone has), or the tree without generated folders outside git."""
    import shutil

    r = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True)
    if r.returncode == 0 and r.stdout:
        for name in r.stdout.decode().split("\0"):
            if name and (root / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / name, dest / name)
    else:
        shutil.copytree(root, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", "runs", "tem_*", "real_exp", "__pycache__", "bench_out"))


def test_the_wheel_installs_alone_and_writes_dataset_and_model_cards(tmp_path):
    """Build the wheel from the tracked files, install it without dependencies (no network) into a fresh
    environment that sees the project venv's packages through a .pth line (not the editable install: a plain path
    line runs no finder), then from a folder outside the source tree: import the bundled real set (dataset card)
    and train one epoch (model card). Scoring is `test_temsynth_score_prints_the_table...`."""
    import sysconfig
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src, dist, env, work = (tmp_path / n for n in ("src", "dist", "env", "work"))
    for d in (src, work):
        d.mkdir()
    _copy_sources(root, src)
    run = lambda cmd, **kw: subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)

    r = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(src),
             "-w", str(dist)])
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(dist.glob("temsynth-*.whl"))
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"temsynth/cards/dataset_card.md", "temsynth/cards/model_card.md", "generators/presets/demo.yaml",
            "training/examples/demo.yaml", "temsynth/data/real/LICENCE",
            "temsynth/data/real/hrtem_generalization/index.csv"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert run([sys.executable, "-m", "venv", "--without-pip", str(env)]).returncode == 0
    py = env / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_project_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    # --target: the wheel goes to the new environment only; nothing of the project venv is touched or replaced.
    r = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
             str(wheel)])
    assert r.returncode == 0, r.stderr[-2000:]
    env_vars = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env_vars["HF_HUB_OFFLINE"] = "1"
    temsynth = lambda *args: run([str(py), str(site / "bin" / "temsynth"), *args], cwd=work, env=env_vars)

    # (not `training`: it loads torch, seconds the train step below spends anyway)
    where = run([str(py), "-c", "import temsynth.resources as r, generators; "
                 "print(r.__file__, r.real_set_dir(), generators.__file__)"], cwd=work, env=env_vars)
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(p.startswith(str(site)) for p in where.stdout.split()), where.stdout
    real = where.stdout.split()[1]

    r = temsynth("import", real, "--pixel-sizes", f"{real}/index.csv", "--target-pixel-size-A", "0.7", "--tile-px",
                 "144", "--out", "exp")
    assert r.returncode == 0, r.stderr[-2000:]
    card = (work / "exp" / "README.md").read_text()
    assert "configs:" in card and "finetune" in card and "benchmark" in card

    (work / "t.yaml").write_text(
        "name: wheel-unet\noutput_dir: run\nepochs: 1\nbatch_size: 8\ndata: {path: exp, split: finetune}\n"
        "benchmarks:\n  - {name: real_benchmark, path: exp, split: benchmark}\n"
        "model: {unet: {depth: 2, base_width: 4}}\naugment: {crop_px: 128}\n")
    r = temsynth("train", "--config", "t.yaml", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    model_card = (work / "run" / "model" / "README.md").read_text()
    assert "# wheel-unet: unet for nanoparticle segmentation" in model_card and "real_benchmark" in model_card


# ---------------------------------------------------------------- docs/configuration.md, generated
def test_the_configuration_reference_is_generated_from_the_schemas_and_current():
    from pathlib import Path

    from temsynth.configdoc import render

    text = render()
    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.is_file() and doc.read_text() == text, \
        "docs/configuration.md is stale: regenerate it with `python -m temsynth.configdoc --write`"
    rows = {line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[2:7]]
            for line in text.splitlines() if line.startswith("| `")}
    # type, range, unit, default: from the schema (a Field bound, a ranged() support, a choice_of list, a name)
    assert rows["imaging.dose_e_per_A2"][:4] == ["distribution", "[0.001, 1e+07]", "e⁻/Å²",
                                                 "`uniform: [100.0, 1200.0]`"]
    assert rows["simulation.sampling_A"][:3] == ["float", "(0.01, 1]", "Å"]
    assert rows["structure.material"][1].startswith("`Au`, `Ag`")
    assert rows["optimizer.lr"][0] == "float" and rows["benchmarks[].name"][3] == "required"
    from pydantic import BaseModel

    from generators.config import GenerationConfig

    def leaves(model, prefix=""):
        for name, f in model.model_fields.items():
            yield prefix + name
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                yield from leaves(f.annotation, f"{prefix}{name}.")
    assert set(leaves(GenerationConfig)) <= set(rows)  # every field of the generation config, nested ones too


# ---------------------------------------------------------------- Makefile
@pytest.mark.skipif(__import__("shutil").which("make") is None, reason="make is not installed")
def test_make_real_exp_rebuilds_when_its_flags_change_and_only_then(tmp_path):
    """`real_exp` is made through its manifest and a stamp holding the import flags; a stand-in `temsynth` in a
    stand-in venv records each import, so this runs the Makefile's own rules in a second, not the import."""
    import os
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "Makefile", tmp_path / "Makefile")
    (tmp_path / "setup.cfg").touch()
    (tmp_path / "pyproject.toml").touch()
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()
    fake = venv / "bin" / "temsynth"
    fake.write_text('#!/bin/sh\necho "$@" >> imports.log\nmkdir -p real_exp && touch real_exp/manifest.json\n')
    fake.chmod(0o755)
    real = tmp_path / "real"
    real.mkdir()
    (real / "index.csv").write_text("file,mask\n")
    make = lambda *extra: subprocess.run(["make", "-s", f"VENV={venv}", f"REAL={real}", "real_exp/manifest.json",
                                          *extra], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    imports = lambda: (tmp_path / "imports.log").read_text().splitlines() if (tmp_path / "imports.log").exists() else []
    assert make().returncode == 0 and len(imports()) == 1 and "--tile-px 144" in imports()[0]
    os.utime(tmp_path / "real_exp" / "manifest.json")
    assert make().returncode == 0 and len(imports()) == 1  # same flags: nothing to do
    flags = f"{real} --pixel-sizes {real}/index.csv --target-pixel-size-A 0.5 --tile-px 128"
    assert make(f"REAL_EXP_FLAGS={flags}").returncode == 0 and len(imports()) == 2 and "--tile-px 128" in imports()[1]
    text = (root / "Makefile").read_text()
    phony = next(line for line in text.splitlines() if line.startswith(".PHONY:")).split()[1:]
    assert not {"real_exp", "tem_np_realistic", "tem_au_np"} & set(phony)
