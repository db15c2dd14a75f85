"""The CPU multislice (generators/multislice.py) against abTEM's own, the carbon's reused slices, FFTW wisdom, and
bit-exact generation across fresh processes, one of them on a loaded machine."""
import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from generators.config import from_dict
from generators.simulate import make_simulator
from generators.structures import build_structure
from generators.substrate import cut_positions
from tests.conftest import tiny_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    return from_dict(tiny_dict(**{"structure.substrate.thickness_A": {"uniform": [12, 17]}}))


def _with_cut(cfg, s, **change):
    cut = dataclasses.replace(s.substrate, **change)
    return dataclasses.replace(s, substrate=cut, substrate_positions=cut_positions(
        s.substrate_block, cut, cfg.field_of_view_A))


@pytest.mark.parametrize("shift,flip,swap", [((0, 0), (False, False), False), ((37, 201), (True, False), False),
                                             ((5, 250), (False, True), True), ((128, 1), (True, True), True)])
def test_cpu_multislice_equals_abtem_on_the_same_structure(cfg, shift, flip, swap):
    """Carbon slices reused from the block's frame (shifted, flipped, transposed wave) give abTEM's exit waves
    of the moved atoms, to float rounding."""
    sim = make_simulator(cfg.simulation, cfg.multislice_gpts)
    s = _with_cut(cfg, build_structure(cfg, 1), shift_px=shift, flip=flip, swap=swap)
    rng = np.random.default_rng
    ours, theirs = sim._exit_waves_cpu(s, rng(0)), sim._exit_waves_abtem(s, rng(0))
    for a, b in zip(ours, theirs):
        a, b = a[0], b[0]
        assert np.abs(a - b).max() < 2e-5
        # and the carbon really is there: the full wave is far from the particle's alone
    assert np.abs(ours[1][0] - ours[0][0]).max() > 0.1
    ia, ib = np.abs(ours[1][0]) ** 2, np.abs(theirs[1][0]) ** 2
    assert np.corrcoef(ia.ravel(), ib.ravel())[0, 1] > 1 - 1e-9


@pytest.mark.parametrize("factor", [2, 0.75])
def test_a_grid_the_cut_was_not_made_on_still_equals_abtem(cfg, factor):
    """Cross-checks simulate a structure on a finer or coarser grid than its run's: a shift that is a whole
    number of that grid's samples reuses the block frame, any other takes the cut's own atoms."""
    n = int(cfg.multislice_gpts * factor)
    sim = make_simulator(cfg.simulation, n)
    s = _with_cut(cfg, build_structure(cfg, 2), shift_px=(3, 8), flip=(True, False), swap=True)
    rng = np.random.default_rng
    for a, b in zip(sim._exit_waves_cpu(s, rng(0)), sim._exit_waves_abtem(s, rng(0))):
        assert a[0].shape == (n, n) and np.abs(a[0] - b[0]).max() < 2e-5


def test_carbon_slices_are_built_once_per_block_and_shared_through_the_folder(cfg, tmp_path):
    from generators.multislice import CarbonSlices

    sim = make_simulator(cfg.simulation, cfg.multislice_gpts)
    sim.use_folders(None, tmp_path)
    s = build_structure(cfg, 0)
    engine, carbon = sim._cpu_engine(s.cell_xy_A)
    built = []
    real = engine._potential  # every slice with atoms that is built (not read from the block) computes one
    engine._potential = lambda p, z: (built.append(len(z)), real(p, z))[1]
    sim._exit_waves_cpu(s, np.random.default_rng(0))
    n_particle = sum(1 for _, z in engine.slices(s.particle_positions, s.particle_numbers,
                                                 int(round(s.particle_height_A / engine.dz))) if len(z))
    first = len(built)
    assert first > n_particle + 1  # the block's slices were built
    stored = list(tmp_path.glob("*-transmission.npy"))
    assert len(stored) == 1 and np.load(stored[0]).shape[1:] == (engine.gpts, engine.gpts)
    # Another structure cut from the same block (its own thickness, shift and flips) builds only its own
    # particle's slices and its carbon's partial bottom slice; so does a fresh cache reading the folder.
    other = _with_cut(cfg, s, shift_px=(3, 9), flip=(True, True), thickness_A=s.substrate.thickness_A - 1.0)
    for cache in (carbon, CarbonSlices(engine, tmp_path)):
        sim._engine = (engine, cache)
        built.clear()
        sim._exit_waves_cpu(other, np.random.default_rng(0))
        assert len(built) == n_particle + 1


def test_wisdom_is_copied_into_the_folder_and_a_foreign_one_is_refused_in_one_line(tmp_path, monkeypatch):
    from generators import fftw

    monkeypatch.setenv("TEMSYNTH_CACHE", str(tmp_path / "cache"))
    path = fftw.ensure_wisdom(64, tmp_path / "ds")
    assert path.parent == tmp_path / "ds" / fftw.WISDOM_DIR and path.read_bytes() == \
        (tmp_path / "cache" / path.name).read_bytes()
    fftw.deterministic_plans(64, tmp_path / "ds")  # replays it
    # wisdom with no plan for this grid (e.g. measured on another CPU) names the file and the fix
    path.write_bytes(pickle.dumps((b"", b"(fftw-3.3.10 fftwf_wisdom)\n", b"")))
    with pytest.raises(RuntimeError, match="holds no FFTW plan.*delete it"):
        fftw.deterministic_plans(64, tmp_path / "ds")


def _burn(n: int):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _cli(args, env, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "temsynth", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_two_fresh_builds_share_every_shard_and_regenerate_is_identical_under_load(tmp_path):
    """The issue's promise: two builds of one config in fresh processes, one on a loaded machine, have the same
    shard hashes, and `regenerate --all` in a fresh process under load finds every record (20) identical."""
    d = tiny_dict(n_structures=10)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(d))
    env = {**os.environ, "TEMSYNTH_CACHE": str(tmp_path / "machine_cache")}
    r = _cli(["generate", "--config", str(config), "--out", str(tmp_path / "a"), "--workers", "0", "--quiet"], env)
    assert r.returncode == 0, r.stderr
    burners = _burn(os.cpu_count() or 2)
    try:
        r = _cli(["generate", "--config", str(config), "--out", str(tmp_path / "b"), "--workers", "2", "--quiet"],
                 env)
        assert r.returncode == 0, r.stderr
        regen = _cli(["regenerate", str(tmp_path / "a"), "--all"], env)
    finally:
        for p in burners:
            p.kill()
    shards = lambda ds: {(s["path"], s["sha256"]) for s in json.loads((ds / "manifest.json").read_text())["shards"]}
    assert shards(tmp_path / "a") == shards(tmp_path / "b") and len(shards(tmp_path / "a")) >= 4
    assert regen.returncode == 0 and "20 of 20 records identical" in regen.stdout, regen.stdout[-2000:]


WAVE_SHA = """
import hashlib
from generators.config import from_dict
from generators.simulate import make_simulator
from generators.structures import build_structure
from tests.conftest import tiny_dict
cfg = from_dict(tiny_dict())
sim = make_simulator(cfg.simulation, cfg.multislice_gpts)
w = sim.exit_waves(build_structure(cfg, 1), cfg.seed)
print(hashlib.sha256(w.full.tobytes() + w.particle.tobytes()).hexdigest())
"""


def test_exit_waves_have_the_same_bits_in_fresh_processes_busy_or_not(tmp_path):
    """The sensitive form of the promise: the exit waves themselves, before any Poisson draw can hide a
    difference. Plans measured per process give different bits here in most pairs of runs (FFTW's timing picks
    one of several algorithms); replayed wisdom gives one answer."""
    env = {**os.environ, "TEMSYNTH_CACHE": str(tmp_path / "machine_cache")}
    run = lambda: subprocess.run([sys.executable, "-c", WAVE_SHA], env=env, cwd=ROOT, capture_output=True,
                                 text=True, timeout=300, check=True).stdout.strip()
    quiet = [run(), run()]
    burners = _burn(os.cpu_count() or 2)
    try:
        busy = run()
    finally:
        for p in burners:
            p.kill()
    assert len(set(quiet + [busy])) == 1, (quiet, busy)
