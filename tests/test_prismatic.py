"""Prismatic backend: cross-check against abTEM on one structure, the whole pipeline, refusals and failures.

The physics checks need `make prismatic` (CI builds it as root: `make test` runs it first); without a build they
skip with the reason recorded by the build. The refusal and failure tests run everywhere.

Matched comparison: Prismatic computes its potential at half our sampling (that is how its output lands on our
grid) and band-limits the wave to our grid's square; abTEM is run at that same potential sampling (2N grid),
cut to our N x N grid in Fourier space (exact: nothing is outside the band limit) and both get abTEM's anti-
aliasing disc. Both use Kirkland's parametrization, 2 Å slices, atoms in the slice of their centre (abTEM
'infinite' projection, Prismatic 2D projected potentials) and the same atoms, placed on Prismatic's potential
pixels (it snaps each atom to the nearest one). The residual differences are the codes' potential tables (cut-off
radius, pixel integration at the core) and float32 arithmetic.
"""
import dataclasses
import tempfile

import numpy as np
import pytest
import yaml

from generators import simulate_prismatic as sp
from generators.config import from_dict
from generators.simulate import SimulationError, SimulatorUnavailable, make_simulator
from temsynth.cli import main
from tests.conftest import tiny_dict

OK, REASON, _ = sp.prismatic_status()
needs_prismatic = pytest.mark.skipif(not OK, reason=f"Prismatic not built: {REASON} (run `make prismatic`)")
KIRKLAND = {"simulation.parametrization": "kirkland"}


def corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def fourier_crop(waves: np.ndarray, n: int) -> np.ndarray:
    """(.., 2n, 2n) -> (.., n, n) keeping the central n x n frequencies; values (vacuum = 1) preserved."""
    f = np.fft.fftshift(np.fft.fft2(waves), axes=(-2, -1))
    m = waves.shape[-1]
    lo = (m - n) // 2
    f = f[..., lo:lo + n, lo:lo + n] * (n * n) / (m * m)
    return np.fft.ifft2(np.fft.ifftshift(f, axes=(-2, -1)))


def band_limit(waves: np.ndarray, cell_A: float) -> np.ndarray:
    n = waves.shape[-1]
    return np.fft.ifft2(np.fft.fft2(waves) * sp.abtem_aperture(n, cell_A))


@pytest.fixture(scope="module")
def crosscheck():
    from generators.imaging import ImageFormer, sample_conditions
    from generators.masks import particle_mask
    from generators.simulate import AbtemSimulator, wavelength_A
    from generators.structures import build_structure

    cfg = from_dict(tiny_dict(**KIRKLAND))  # 256² grid at 0.125 Å, Au particle r 8-11 Å on 10-16 Å of carbon
    n, index = cfg.sim_gpts, 1
    s = build_structure(cfg, index)
    grid = s.cell_xy_A / (2 * n)  # Prismatic's potential pixel

    def on_grid(pos):
        pos = np.array(pos, float)
        pos[:, :2] = np.round(pos[:, :2] / grid) * grid
        return pos

    s = dataclasses.replace(s, particle_positions=on_grid(s.particle_positions),
                            substrate_positions=on_grid(s.substrate_positions))
    prism = sp.PrismaticSimulator(cfg.simulation, n, threads=1).exit_waves(s, cfg.seed)
    fine = AbtemSimulator(cfg.simulation, 2 * n).exit_waves(s, cfg.seed)
    matched = {k: band_limit(fourier_crop(getattr(fine, k), n), s.cell_xy_A) for k in ("particle", "full")}
    pipeline = AbtemSimulator(cfg.simulation, n).exit_waves(s, cfg.seed)  # what an abTEM dataset holds

    p, f = cfg.imaging.pixel_size_A, cfg.bin_factor
    former = ImageFormer(cfg.imaging, n, cfg.simulation.sampling_A, wavelength_A(cfg.simulation.energy_keV), f)
    conditions = sample_conditions(cfg, index, [(pt.center_A[0] / p, pt.center_A[1] / p) for pt in s.particles],
                                   [pt.bounding_radius_A / p for pt in s.particles])
    mask = lambda w: particle_mask(w, f, cfg.mask.phase_threshold_rad, cfg.mask.closing_radius_A / p)
    figures = {}
    for name, other in (("matched", matched), ("pipeline", {"particle": pipeline.particle, "full": pipeline.full})):
        for k in ("particle", "full"):
            a, b = other[k][0], getattr(prism, k)[0]
            figures[f"{name}_{k}_phase"] = corr(np.angle(a), np.angle(b))
            figures[f"{name}_{k}_amplitude"] = corr(np.abs(a), np.abs(b))
        img_a = former.intensity(np.asarray(other["full"], np.complex64), conditions)
        img_b = former.intensity(prism.full, conditions)
        figures[f"{name}_image"] = min(corr(x, y) for x, y in zip(img_a, img_b))
        figures[f"{name}_mask_differing"] = float(np.mean(mask(np.asarray(other["particle"])) != mask(prism.particle)))
    print("prismatic vs abTEM:", {k: round(v, 5) for k, v in figures.items()})
    return figures, prism, n


@needs_prismatic
def test_prismatic_lands_on_our_grid_with_vacuum_one(crosscheck):
    _, prism, n = crosscheck
    assert prism.particle.shape == prism.full.shape == (1, n, n)
    assert prism.particle.dtype == np.complex64
    # a corner of the field is vacuum above thin carbon: |psi| ~ 1 for the particle-only wave
    assert abs(np.abs(prism.particle[0, :8, :8]).mean() - 1) < 0.01


@needs_prismatic
def test_exit_waves_agree_at_matched_sampling_and_band_limit(crosscheck):
    fig = crosscheck[0]
    for k in ("particle", "full"):
        assert fig[f"matched_{k}_phase"] >= 0.99, fig
        assert fig[f"matched_{k}_amplitude"] >= 0.99, fig
    assert fig["matched_image"] >= 0.99, fig
    assert fig["matched_mask_differing"] < 0.01, fig


@needs_prismatic
def test_datasets_of_either_backend_give_the_same_images_and_masks(crosscheck):
    """Pipeline against pipeline (abTEM's potential at our sampling, not Prismatic's half of it): the images and
    masks, which is what a dataset stores, still agree."""
    fig = crosscheck[0]
    assert fig["pipeline_particle_phase"] >= 0.99 and fig["pipeline_full_phase"] >= 0.99, fig
    assert fig["pipeline_image"] >= 0.99, fig
    assert fig["pipeline_mask_differing"] < 0.01, fig


@needs_prismatic
def test_prismatic_pipeline_records_and_selection(tmp_path, monkeypatch):
    from datasets import load_dataset

    from generators.query import select
    from generators.run import generate

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    cfg = from_dict(tiny_dict(n_structures=2, **KIRKLAND, **{"simulation.backend": "prismatic",
                                                             "simulation.n_frozen_phonons": 2,
                                                             "structure.thermal_sigma_A": 0.05,
                                                             "splits": {"train": 1.0, "validation": 0.0,
                                                                        "test": 0.0}}))
    out = tmp_path / "ds"
    generate(cfg, out, workers=0, progress=False, log=lambda *a: None)
    ds = load_dataset(str(out), split="train")
    assert set(ds["simulator"]) == {"prismatic"}
    assert set(ds["simulator_version"]) == {sp.prismatic_status()[2]} and "@" in ds["simulator_version"][0]
    assert len(select(ds, "simulator == 'prismatic'")) == 4 and len(select(ds, "simulator == 'abtem'")) == 0
    assert min(ds["mask_area_px"]) > 50
    assert not list(scratch.iterdir()), "Prismatic's temporary files were left behind"
    assert not list(home.rglob("prismatic*")), "Prismatic wrote into $HOME"


def test_prismatic_without_a_build_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sp, "prismatic_status", lambda: (False, "pyprismatic is not importable", ""))
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(tiny_dict(**KIRKLAND, **{"simulation.backend": "prismatic", "n_structures": 1})))
    out = tmp_path / "o"
    assert main(["generate", "--config", str(cfg), "--out", str(out), "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make prismatic" in err[0] and "HRTEM" in err[0]
    assert not out.exists()


@needs_prismatic
def test_prismatic_needs_kirkland(tmp_path):
    cfg = from_dict(tiny_dict(**{"simulation.backend": "prismatic"}))
    with pytest.raises(SimulatorUnavailable, match="parametrization: kirkland"):
        make_simulator(cfg.simulation, cfg.sim_gpts)


@needs_prismatic
def test_prismatic_failure_names_the_structure_and_writes_nothing(tmp_path, monkeypatch):
    from generators.run import RunError, generate

    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nprint('Prismatic: Error opening atoms.xyz')\nsys.exit(1)\n")
    monkeypatch.setattr(sp, "_CHILD", crash)
    cfg = from_dict(tiny_dict(n_structures=2, **KIRKLAND, **{"simulation.backend": "prismatic"}))
    out = tmp_path / "ds"
    with pytest.raises((SimulationError, RunError), match=r"structure s000000 .*Error opening atoms.xyz"):
        generate(cfg, out, workers=0, progress=False, log=lambda *a: None)
    assert not list((out / "_work" / "parts").glob("*")) and not (out / "structures").exists()
    assert not (out / "manifest.json").exists()
