"""Running generate: bad configs, foreign folders, kill-and-resume through Dask (the prismatic backend:
test_prismatic)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from generators.config import from_dict, load_preset
from generators.run import RunError, generate
from temsynth.cli import main
from tests.conftest import tiny_dict


@pytest.mark.parametrize("field,value,needle", [
    ("imaging.dose_e_per_A2", {"uniform": [-5, 10]}, "dose_e_per_A2 must lie in"),
    ("simulation.energy_keV", 5, "simulation.energy_keV"),
    ("imaging.defocus_um", 3, "imaging.defocus_um: unknown field"),
    ("structure.defects.type", {"choice": ["twinned"]}, "allowed: ['none', 'twin'"),
    ("imaging.pixel_size_A", 0.3, "integer multiple of simulation.sampling_A"),
    ("structure.radius_A", {"uniform": [5, 30]}, "does not fit in half the image"),
])
def test_bad_config_names_the_field_and_writes_nothing(tmp_path, capsys, field, value, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(tiny_dict(**{field: value})))
    out = tmp_path / "out"
    assert main(["generate", "--config", str(cfg), "--out", str(out), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not out.exists()


def test_presets_validate():
    demo, paper = load_preset("demo"), load_preset("paper")
    assert demo.imaging.image_size_px == 256 and demo.n_structures == 48
    assert paper.imaging.image_size_px == 512 and paper.imaging.field_px == 640
    assert paper.simulation.sampling_A == 0.1 and paper.imaging.focal_series_points == 25


def test_folder_of_another_config_is_refused(built):
    with pytest.raises(RunError, match="another config"):
        generate(from_dict(tiny_dict(seed=12)), built, workers=0, progress=False)


def test_kill_and_resume_gives_every_record_once(tmp_path):
    d = tiny_dict(n_structures=6, **{"splits": {"train": 1.0, "validation": 0.0, "test": 0.0}})
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(d))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "temsynth", "generate", "--config", str(cfg_path), "--out", str(out),
           "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    parts = out / "_work" / "parts"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list(parts.glob("*.parquet")))
    assert 2 <= n_before < 6, "killed mid-run"
    assert not (out / "manifest.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming, {n_before} of 6" in done.stdout
    from datasets import load_dataset

    ds = load_dataset(str(out), split="train")
    assert len(ds) == 12 and len(set(ds["record_id"])) == 12
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "nothing to do" in again.stdout


def test_webdataset_shards_depend_only_on_their_records(built, tmp_path):
    """Tar members carry a fixed mtime: rewriting the same records later gives the same bytes and checksum."""
    import pyarrow.dataset as pads

    from generators.writers import sha256_file, write_wds

    table = pads.dataset(built / "data", format="parquet").to_table().slice(0, 3)
    write_wds(table, tmp_path / "a.tar")
    time.sleep(1.1)
    write_wds(table, tmp_path / "b.tar")
    assert sha256_file(tmp_path / "a.tar") == sha256_file(tmp_path / "b.tar")


def test_a_dask_run_longer_than_its_submission_window_builds_every_structure(tmp_path):
    """1 worker submits 4 structures at a time: the 5th onwards must follow, none dropped at the window's edge."""
    cfg = from_dict(tiny_dict(**{"n_structures": 7, "conditions_per_structure": 1, "imaging.image_size_px": 64,
                                 "structure.radius_A": {"uniform": [4, 5]}, "structure.edge_margin_A": 1}))
    m = generate(cfg, tmp_path / "ds", workers=1, progress=False, log=lambda *a: None)
    assert m["n_structures"] == 7 and m["n_records"] == 7
