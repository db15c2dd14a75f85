"""A dataset folder is opened once per command: its manifest.json is read (and checked) one time, whatever the
command does with it afterwards (issue 24)."""
import shutil
from collections import Counter
from pathlib import Path

import pytest

from temsynth.cli import main


@pytest.fixture
def reads(monkeypatch):
    """Every read of a file named manifest.json, by folder: through any reader, not only the project's own."""
    seen = Counter()
    for method in ("read_bytes", "read_text"):
        real = getattr(Path, method)

        def counted(self, *a, _real=real, **k):
            if self.name == "manifest.json":
                seen[self.parent.resolve()] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(Path, method, counted)
    return seen


@pytest.fixture
def folder(built, tmp_path):
    """A private copy: `query --save-as` rewrites the folder's manifest and card."""
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    return out


def _model(tmp_path):
    from training.config import ModelConfig
    from training.models import build_model, save_model

    cfg = ModelConfig.model_validate({"unet": {"depth": 2, "base_width": 4, "norm": "group"}})
    return save_model(build_model(cfg), tmp_path / "model", cfg, {"training_config": {"augment": {}},
                                                                  "train_data": [{"pixel_sizes_A": [0.25]}]})


@pytest.mark.parametrize("argv", [
    ["info", "{ds}"],
    ["info", "{ds}", "--verify"],
    ["query", "{ds}", "n_particles >= 1"],
    ["query", "{ds}", "n_particles >= 1", "--save-as", "some", "--out", "{tmp}/sub"],
    ["trace", "{ds}", "s000001-c000"],
    ["regenerate", "{ds}", "s000001-c000"],
    ["evaluate", "{model}", "{ds}", "n_particles >= 1", "--split", "train"],
])
def test_each_command_reads_the_manifest_once(argv, folder, tmp_path, reads, capsys):
    model = _model(tmp_path) if argv[0] == "evaluate" else None
    args = [a.format(ds=folder, tmp=tmp_path, model=model) for a in argv]
    assert main(args) == 0, capsys.readouterr().err
    n = reads[folder.resolve()]
    assert n == 1, f"temsynth {argv[0]} read {folder}/manifest.json {n} times"
    if "--out" in argv:  # the subset it wrote is complete and intact
        from generators.info import verify

        assert verify(tmp_path / "sub") == []


def test_generate_on_a_finished_folder_reads_its_manifest_once(folder, tmp_path, tiny_cfg, reads, capsys):
    """Re-running `generate` on its finished folder: one read decides that nothing is to do (and skips the
    resource check); another config on that folder is refused after that same one read."""
    import json

    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg.model_dump(mode="json")))
    before = (folder / "manifest.json").read_bytes()
    reads.clear()
    assert main(["generate", "--config", str(cfg), "--out", str(folder), "--workers", "0", "--quiet"]) == 0
    assert "complete" in capsys.readouterr().out and reads[folder.resolve()] == 1
    assert (folder / "manifest.json").read_bytes() == before  # nothing rewritten
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**json.loads(json.dumps(tiny_cfg.model_dump(mode="json"))), "seed": 99}))
    reads.clear()
    assert main(["generate", "--config", str(other), "--out", str(folder), "--workers", "0", "--quiet"]) == 2
    assert "built from another config" in capsys.readouterr().err and reads[folder.resolve()] == 1


def test_training_reads_each_source_manifest_once(folder, tmp_path, reads):
    """Two data sources from one folder and a benchmark from another: one read per source and benchmark, not the
    five per source of reading shards, checking them, fingerprinting and taking the pixel size separately."""
    from training.config import train_config
    from training.train import run

    other = tmp_path / "other"
    shutil.copytree(folder, other)
    cfg = train_config({"name": "reads", "output_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 4,
                        "data": [{"path": str(folder), "split": "train"}, {"path": str(folder), "split": "test"}],
                        "benchmarks": [{"name": "validation", "path": str(other)}],
                        "model": {"unet": {"depth": 2, "base_width": 4}}})
    summary = run(cfg, progress=False, echo=False)
    assert reads[folder.resolve()] == 2 and reads[other.resolve()] == 1
    # the pixel size the model records is the folder's own
    from training.models import read_model_config

    assert read_model_config(summary["model_dir"]).pixel_size_A == 0.25
