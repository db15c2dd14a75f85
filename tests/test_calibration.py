"""`temsynth calibrate`: the CTF fit on simulated carbon of known imaging conditions, the noise and dose read
from counts, the proposed config, and bad input."""
import json
import math

import numpy as np
import pytest
import yaml
from conftest import tiny_dict, with_fields

from generators.calibration.ctf_fit import abtem_ctf_power, ctf_power, fit_ctf
from generators.calibration.measure import data_kind, measure
from generators.calibration.spectrum import power_spectrum
from generators.config import from_dict, load_config
from generators.distributions import Uniform
from temsynth.cli import main

CARBON_A = 30.0
N_FIELDS = 4


def carbon_cfg(**over):
    """Bare carbon, 256 px at 0.35 Å (a native micrograph's sampling, two or three rings in the band); each
    condition i takes step i of every linspace: four known imaging conditions on one exit wave."""
    d = tiny_dict()
    with_fields(d, **{
        "n_structures": 1, "conditions_per_structure": N_FIELDS, "structure.n_particles": 0,
        "structure.radius_A": 10.0, "structure.substrate.thickness_A": CARBON_A, "structure.substrate.bank_size": 1,
        "imaging.image_size_px": 256, "imaging.pixel_size_A": 0.35, "simulation.sampling_A": 0.175,
        "imaging.cs_mm": 0.0,
        # rings inside the band: |defocus| >= 8 nm at 0.35 Å (nearer focus the first ring lies past Nyquist)
        "imaging.defocus_nm": {"linspace": {"start": -30, "stop": 30, "num": N_FIELDS}},
        "imaging.astigmatism_nm": {"linspace": {"start": 0.5, "stop": 3.0, "num": N_FIELDS}},
        "imaging.astigmatism_angle_deg": {"linspace": {"start": 10, "stop": 150, "num": N_FIELDS}},
        "imaging.focal_spread_nm": {"linspace": {"start": 2, "stop": 6, "num": N_FIELDS}},
        # the realistic preset's doses, lowest first
        "imaging.dose_e_per_A2": {"linspace": {"start": 150, "stop": 3000, "num": N_FIELDS}},
        # a counting camera: its MTF is Gaussian, the fit's exp(-B k^2) (a scintillator's Lorentzian MTF is
        # measured by benchmarks/bench_calibrate.py, less precisely)
        "imaging.detector": {"type": "counting", "dqe0": 0.8, "counting_sigma_px": 0.3},
    })
    for k, v in over.items():
        with_fields(d, **{k: v})
    return from_dict(d)


@pytest.fixture(scope="module")
def carbon_fields():
    from generators.run import simulate_structure

    cfg = carbon_cfg()
    images, _, _, metas, _ = simulate_structure(cfg, 0)
    return cfg, images, metas


def test_fast_model_is_abtems_ctf():
    """The fit scales abTEM's chi of unit C10 and C30; the result must be abTEM's CTF itself, astigmatism
    included (a direction's defocus is C10 + C12 cos 2(phi - phi12))."""
    k = np.linspace(0.02, 1.2, 300)
    for phi in (0.0, 0.7, 2.0):
        direct = abtem_ctf_power(k, np.full_like(k, phi), 300.0, -23.0, 2.0, 40.0, 0.015, 3.5)
        local_df = -230.0 + 20.0 * math.cos(2 * (phi - math.radians(40.0)))
        fast = ctf_power(k, 300.0, local_df, 0.015 * 1e7, 3.5)
        np.testing.assert_allclose(fast, direct, atol=2e-5)
    # and a zero where chi = pi: sin chi - w cos chi vanishes just past it
    assert ctf_power(np.array([math.sqrt(1 / (0.019687 * 200))]), 300.0, 200.0, 0.0, 0.0)[0] < 0.01


def test_defocus_and_astigmatism_recovered_on_simulated_carbon(carbon_fields):
    """Within 2 nm of the defocus at the carbon's mid-plane: the multislice's defocus is that
    of its exit plane, half the carbon's thickness further on; astigmatism within 1 nm."""
    cfg, images, metas = carbon_fields
    for img, m in zip(images, metas):
        fit = fit_ctf(power_spectrum(img, cfg.imaging.pixel_size_A), cs_mm=0.0)
        mid = m["defocus_nm"] + CARBON_A / 20
        msg = f"true {mid:.1f} nm (dose {m['dose_e_per_A2']:.0f}), fitted {fit.defocus_nm:.1f}"
        # Cs = 0: under- and overfocus give the same rings up to the weak amplitude contrast
        assert abs(abs(fit.defocus_nm) - abs(mid)) < 2.0, msg
        if not fit.sign_ambiguous:
            assert np.sign(fit.defocus_nm) == np.sign(mid), msg
        assert abs(fit.astigmatism_nm - m["astigmatism_nm"]) < 1.0, (msg, fit.astigmatism_nm, m["astigmatism_nm"])
        if m["astigmatism_nm"] > 1.5:
            # the angle of the longer axis; a sign flip of the defocus turns it by 90 degrees
            flip = 0 if np.sign(fit.defocus_nm) == np.sign(mid) else 90
            d = (fit.astigmatism_angle_deg - m["astigmatism_angle_deg"] - flip) % 180
            assert min(d, 180 - d) < 15, (msg, fit.astigmatism_angle_deg, m["astigmatism_angle_deg"])
        assert fit.explained > 0.5
        # the envelope is read too: within the preset's plausible range, ordered with the truth
        assert 0.5 <= fit.focal_spread_nm <= 8.0


def test_defocus_recovered_through_a_renderings_blur(carbon_fields):
    """A display rendering's resampling blurs signal and noise alike, so the noise floor falls too: read by a
    polynomial, its Gaussian fall-off was taken for a near-focus passband (a field at -28.5 nm blurred by one pixel
    fitted -0.3 nm). The fit's noise carries its own fall-off, and the defocus comes back within 2 nm."""
    from scipy import ndimage

    cfg, images, metas = carbon_fields
    for img, m in zip(images, metas):
        blurred = ndimage.gaussian_filter(np.asarray(img, np.float64), 1.0)
        fit = fit_ctf(power_spectrum(blurred, cfg.imaging.pixel_size_A), cs_mm=0.0)
        mid = m["defocus_nm"] + CARBON_A / 20
        assert abs(abs(fit.defocus_nm) - abs(mid)) < 2.0, (mid, fit.defocus_nm, fit.falloff_A2)


def test_focal_spread_on_its_search_bound_is_not_proposed(carbon_fields):
    """A spread that ends on the search's bound was not measured (the fall-off took the envelope): with most
    fields there, the base config's range is kept and the note says why; otherwise only the fields that
    resolved it are drawn from."""
    import dataclasses

    from generators.calibration.propose import propose

    cfg, images, metas = carbon_fields
    ms = [measure(np.round(img), cfg.imaging.pixel_size_A, f"f{i}.npy") for i, img in enumerate(images)]
    assert not any(m.ctf.focal_spread_at_bound for m in ms)  # 2-6 nm, inside the search's 0.5-8 nm
    for n_bound in (3, 1):
        marked = [dataclasses.replace(m, ctf=dataclasses.replace(m.ctf, focal_spread_at_bound=i < n_bound))
                  for i, m in enumerate(ms)]
        data, notes = propose(marked, cfg, "mine")
        note = next(n for n in notes if n.startswith("imaging.focal_spread_nm"))
        if n_bound == 3:
            kept = cfg.model_dump(mode="json", exclude_none=True)["imaging"]["focal_spread_nm"]
            assert data["imaging"]["focal_spread_nm"] == kept
            assert "kept" in note and "3 of 4" in note, note
        else:
            values = data["imaging"]["focal_spread_nm"]["empirical"]["values"]
            assert values == [round(m.ctf.focal_spread_nm, 2) for m in ms[1:]], (values, note)
            assert "1 left out" in note, note


def test_defocus_intervals_hold_the_truth_and_every_plausible_minimum_is_proposed(carbon_fields):
    """The 1-D search's runs within one unit of chi-square of its minimum: on fields with rings in the band one of
    them holds the true defocus; a profile with two equal minima gives two runs, and the proposal keeps both."""
    import dataclasses

    from generators.calibration.ctf_fit import _intervals
    from generators.calibration.propose import _plausible_defoci

    cfg, images, metas = carbon_fields
    for img, m in zip(images, metas):
        fit = fit_ctf(power_spectrum(img, cfg.imaging.pixel_size_A), cs_mm=0.0)
        mid = abs(m["defocus_nm"] + CARBON_A / 20)
        assert any(lo - 1.0 <= s * mid <= hi + 1.0 for lo, hi in fit.defocus_intervals_nm for s in (-1, 1)), (
            mid, fit.defocus_intervals_nm)
    dfs = np.linspace(-50, 50, 101)
    cost = np.minimum((dfs + 30) ** 2, (dfs - 10) ** 2 + 0.5) + 100.0  # two minima, 40 nm apart
    runs = _intervals(dfs, cost, n=58)  # chi-square unit: 100 / 50 = 2
    assert len(runs) == 2 and runs[0][0] <= -30 <= runs[0][1] and runs[1][0] <= 10 <= runs[1][1], runs
    ms = measure(np.round(images[0]), cfg.imaging.pixel_size_A, "f0.npy")
    two = dataclasses.replace(ms, ctf=dataclasses.replace(ms.ctf, defocus_nm=-30.0, defocus_intervals_nm=runs))
    assert _plausible_defoci(two) == pytest.approx([-30.0, 10.0], abs=1.0)


def test_dose_and_gain_from_counts():
    """Poisson counts times a gain: past the information limit the spectrum's floor is gain x mean, so the
    gain and the dose come back; grey levels in [0, 1] are display values and give neither."""
    rng = np.random.default_rng(0)
    px, dose, gain = 0.5, 800.0, 3.0
    k = np.fft.fftfreq(256, d=px)
    kk = np.hypot(*np.meshgrid(k, k))
    # a weak carbon-like signal inside 0.4 1/Å (information limit), nothing beyond
    sig = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(256, 256))) * (kk < 0.4) * np.sin(25 * kk**2)))
    intensity = 1 + 0.05 * sig / sig.std()
    counts = rng.poisson(dose * px**2 * intensity) * gain
    assert data_kind(counts)[0] == "counts"
    m = measure(counts, px, "counts.npy")
    assert m.noise.kind == "counts"
    assert m.noise.gain_counts_per_e == pytest.approx(gain, rel=0.1)
    assert m.noise.dose_e_per_A2 == pytest.approx(dose, rel=0.1)
    assert m.texture.speckle_contrast == pytest.approx(0.05, rel=0.25)
    display = (counts - counts.min()) / np.ptp(counts)
    kind, why = data_kind(display)
    assert kind == "display" and "[0, 1]" in why
    assert measure(display, px, "display.npy").noise.dose_e_per_A2 is None


@pytest.mark.parametrize("camera", ["counting", "scintillator"])
def test_camera_told_from_the_noise_past_the_information_limit(camera):
    """Past the information limit only noise is left: white for a counting camera (whose dose then comes back),
    MTF-filtered for a scintillator (half-width 0.3 cycles/px: the noise near Nyquist is a few % of its zero-
    frequency power), whose floor must not be read as a dose. Counts rounded as a camera's ADC gives them."""
    from generators.calibration.propose import propose
    from generators.run import simulate_structure

    det = ({"type": "counting", "dqe0": 0.8, "counting_sigma_px": 0.3} if camera == "counting" else
           {"type": "scintillator", "gain_counts_per_e": 10.0, "dqe0": 0.8, "mtf_c": 0.1, "mtf_f0": 0.3,
            "read_noise_counts": 1.0})
    # a focal spread of 8 nm puts the information limit near 1.6 Å, well inside Nyquist (0.7 Å)
    cfg = carbon_cfg(**{"imaging.detector": det, "imaging.focal_spread_nm": 8.0, "conditions_per_structure": 1,
                        "imaging.defocus_nm": -30.0, "imaging.dose_e_per_A2": 1000.0})
    images, _, _, _, _ = simulate_structure(cfg, 0)
    m = measure(np.round(images[0]), cfg.imaging.pixel_size_A, f"{camera}.npy")
    assert m.noise.kind == "counts" and m.noise.camera.kind == camera, m.noise.camera
    if camera == "counting":
        assert m.noise.dose_e_per_A2 == pytest.approx(0.8 * 1000.0, rel=0.1)  # the detected dose: DQE x dose
    else:
        assert m.noise.dose_e_per_A2 is None and "not measurable" in m.noise.why
    data, notes = propose([m], cfg.model_copy(update={"imaging": cfg.imaging.model_copy(
        update={"image_spread_A": Uniform(uniform=(0.0, 0.8))})}), "cam")
    assert data["imaging"]["detector"]["type"] == {"value": camera}
    assert any(n.startswith("imaging.detector.type: from the noise spectra") for n in notes)
    # an image spread is not told apart from the other fall-offs: the base config's range is kept and said so
    assert data["imaging"]["image_spread_A"] == {"uniform": [0.0, 0.8]}
    assert any(n.startswith("imaging.image_spread_A: kept (uniform") for n in notes)


def test_support_thickness_from_the_speckle_contrast():
    """Counts of bare carbon 40 Å thick: its speckle contrast, read off bare carbon simulated at 10-80 Å under the
    field's fitted conditions, gives its thickness within 25 %; the proposed range holds it, and the defocus is
    moved to the exit plane by the field's own half thickness."""
    from generators.calibration.propose import propose
    from generators.calibration.run import read_thicknesses
    from generators.run import simulate_structure

    cfg = carbon_cfg(**{"structure.substrate.thickness_A": 40.0, "conditions_per_structure": 1,
                        "imaging.defocus_nm": -25.0, "imaging.focal_spread_nm": 3.0, "imaging.astigmatism_nm": 1.0,
                        "imaging.dose_e_per_A2": 2000.0})
    m = measure(simulate_structure(cfg, 0)[0][0], cfg.imaging.pixel_size_A, "t40.npy")
    read_thicknesses([m], cfg, log=lambda *a: None)
    assert m.texture.thickness_A == pytest.approx(40.0, rel=0.25), m.texture.thickness_why
    data, notes = propose([m], cfg, "thick")
    lo, hi = data["structure"]["substrate"]["thickness_A"]["loguniform"]
    assert lo < 40.0 < hi and any(n.startswith("structure.substrate.thickness_A: from the speckle") for n in notes)
    half_nm = m.texture.thickness_A / 20
    assert data["imaging"]["defocus_nm"]["empirical"]["values"][0] == pytest.approx(
        min(m.ctf.defocus_nm - half_nm, -m.ctf.defocus_nm - half_nm), abs=0.01)


def test_calibrate_writes_a_config_that_spans_the_fits(carbon_fields, tmp_path, capsys, monkeypatch):
    cfg, images, metas = carbon_fields
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, img in enumerate(images[:3]):
        np.save(folder / f"field{i}.npy", np.round(img).astype(np.float32))
    (folder / "index.csv").write_text("file,pixel_size_A\n" + "".join(f"field{i}.npy,0.35\n" for i in range(3)))
    out = tmp_path / "my.yaml"
    assert main(["calibrate", str(folder), "--pixel-sizes", str(folder / "index.csv"), "--out", str(out)]) == 0
    proposed = load_config(out)  # a valid generation config
    record = json.loads(out.with_suffix(".calibration.json").read_text())
    assert len(record["measurements"]) == 3
    dfs = proposed.imaging.defocus_nm.empirical.values
    # every field's exit-plane defocus is among the values (up to the fit's error), both signs when unsure
    for m in metas[:3]:
        assert min(abs(abs(v) - abs(m["defocus_nm"])) for v in dfs) < 2.5, (dfs, m["defocus_nm"])
    # counts were read: the dose range is measured, not the preset's
    assert "measured from counts" in out.read_text()
    lo, hi = proposed.imaging.dose_e_per_A2.support()
    assert lo < min(m["dose_e_per_A2"] for m in metas[:3]) * 1.0 and hi > max(m["dose_e_per_A2"] for m in metas[:3])
    # what was not measured is named as kept
    assert "imaging.cs_mm: kept" in out.read_text()
    # the same folder named relatively, its CSV too: the rows are found as with absolute paths
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "mine", "--pixel-sizes", "mine/index.csv", "--out", "again.yaml"]) == 0
    again = json.loads((tmp_path / "again.calibration.json").read_text())
    assert [m["pixel_size_A"] for m in again["measurements"]] == [0.35] * 3


def test_a_dose_the_acquisition_recorded_replaces_the_range_display_values_hide(carbon_fields, tmp_path, capsys):
    """Display values do not show the dose, so the base's range stays, and the note says how to give it; given,
    it is what the config draws. For counts the given dose wins too, and the measured one is quoted beside it."""
    cfg, images, _ = carbon_fields
    shown = tmp_path / "shown"
    shown.mkdir()
    for i, img in enumerate(images[:2]):  # 8-bit renderings of two fields
        grey = np.round(255 * (img - img.min()) / np.ptp(img)) / 255
        np.save(shown / f"field{i}.npy", grey.astype(np.float32))
    kept, given = tmp_path / "kept.yaml", tmp_path / "given.yaml"
    assert main(["calibrate", str(shown), "--pixel-size-A", "0.35", "--from-config", _write(cfg, tmp_path),
                 "--out", str(kept)]) == 0
    assert load_config(kept).imaging.dose_e_per_A2 == cfg.imaging.dose_e_per_A2
    assert "give --dose-e-per-A2" in kept.read_text()
    assert main(["calibrate", str(shown), "--pixel-size-A", "0.35", "--from-config", _write(cfg, tmp_path),
                 "--dose-e-per-A2", "300", "600", "--out", str(given)]) == 0
    assert load_config(given).imaging.dose_e_per_A2.support() == (300.0, 600.0)
    assert "300-600 e/Å², as given (--dose-e-per-A2)" in given.read_text()
    # counts: one given dose is drawn as it is, and the noise floor's reading is quoted
    counts = tmp_path / "counts"
    counts.mkdir()
    np.save(counts / "field0.npy", np.round(images[3]).astype(np.float32))
    out = tmp_path / "counts.yaml"
    assert main(["calibrate", str(counts), "--pixel-size-A", "0.35", "--from-config", _write(cfg, tmp_path),
                 "--dose-e-per-A2", "3000", "--out", str(out)]) == 0
    assert load_config(out).imaging.dose_e_per_A2.support() == (3000.0, 3000.0)
    assert "the counts' noise floor reads" in out.read_text()
    # a dose that is no dose: one line naming the option, nothing written
    bad = tmp_path / "bad.yaml"
    capsys.readouterr()
    assert main(["calibrate", str(shown), "--pixel-size-A", "0.35", "--dose-e-per-A2", "-5",
                 "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dose-e-per-A2 -5" in err, err
    assert not bad.exists() and not bad.with_suffix(".calibration.json").exists()


def _write(cfg, folder) -> str:
    path = folder / "base.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return str(path)


@pytest.mark.parametrize("case", ["flat", "nyquist", "unreadable", "tiny"])
def test_bad_input_one_line_nothing_written(case, tmp_path, capsys):
    rng = np.random.default_rng(1)
    f = tmp_path / "x.npy"
    px = "0.35"
    if case == "flat":  # white noise: no carbon, no rings
        np.save(f, rng.normal(100, 1, (256, 256)).astype(np.float32))
        expect = "no Thon rings"
    elif case == "nyquist":  # a pixel size given in nm for Å... or a far too coarse one
        np.save(f, rng.normal(100, 1, (256, 256)).astype(np.float32))
        px, expect = "12", "past Nyquist"
    elif case == "unreadable":
        f.write_bytes(b"not a numpy file")
        expect = "x.npy"
    else:
        np.save(f, rng.normal(100, 1, (20, 20)).astype(np.float32))
        expect = "too small"
    out = tmp_path / "my.yaml"
    assert main(["calibrate", str(f), "--pixel-size-A", px, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err and "x.npy" in err, err
    assert not out.exists() and not out.with_suffix(".calibration.json").exists()


def test_empirical_distribution_reflects_into_its_bounds():
    cfg = carbon_cfg(**{"imaging.focal_spread_nm": {"empirical": {"values": [0.2, 3.0], "jitter_sd": 1.0,
                                                                  "low": 0, "high": 100}}})
    d = cfg.imaging.focal_spread_nm
    rng = np.random.default_rng(0)
    draws = np.array([d.sample(rng) for _ in range(4000)])
    assert draws.min() >= 0 and d.support() == (0, 8.0)
    # half the draws near each value
    assert 0.4 < np.mean(draws < 1.6) < 0.6
    with pytest.raises(Exception, match="outside"):
        carbon_cfg(**{"imaging.focal_spread_nm": {"empirical": {"values": [-1.0], "low": 0}}})


def test_report_shows_fits_and_simulated_fields(carbon_fields, tmp_path):
    """The page names what was kept, holds one fit figure per micrograph, and compares the proposed config's
    simulated fields with the micrographs (a spectrum distance that is a number, figures that exist)."""
    import yaml

    cfg, images, metas = carbon_fields
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, img in enumerate(images[:2]):
        np.save(folder / f"f{i}.npy", np.round(img).astype(np.float32))
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_dict()))
    out, report = tmp_path / "my.yaml", tmp_path / "report"
    assert main(["calibrate", str(folder), "--pixel-size-A", "0.35", "--from-config", str(base), "--out", str(out),
                 "--report", str(report)]) == 0
    page = (report / "index.html").read_text()
    for src in ("fit_000.png", "fit_001.png", "spectra.png", "fields.png"):
        assert f"src='{src}'" in page or f'src="{src}"' in page
        assert (report / src).stat().st_size > 5000
    assert "imaging.cs_mm: kept" in page
    import re

    distance = float(re.search(r"distance\s+([0-9.]+)", page).group(1))
    assert 0 <= distance < 2


def test_particle_sizes_and_coverage_from_a_mask_set_the_scene_ranges():
    """`--model`'s pass: equivalent radii of the particles inside the field (a border-cut one is left out), the
    coverage, and the proposal's radius range and area fractions from them."""
    from generators.calibration.propose import propose
    from generators.calibration.run import particle_sizes

    yy, xx = np.mgrid[:200, :200]
    mask = np.zeros((200, 200), bool)
    for (cx, cy), r in {(50, 50): 10, (120, 60): 20, (60, 140): 15, (198, 100): 12}.items():
        mask |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    sizes = particle_sizes(mask, pixel_size_A=0.5)
    assert sorted(np.round(sizes["radii_A"], 1)) == pytest.approx([5.0, 7.5, 10.0], abs=0.15)
    assert sizes["n_border"] == 1 and sizes["coverage"] == pytest.approx(mask.mean())

    base = carbon_cfg()
    from generators.calibration.ctf_fit import CTFFit
    from generators.calibration.measure import Measurement, Noise, Texture

    fit = CTFFit(-20.0, 1.0, 30.0, 3.0, 2.0, 0.0, 300.0, 0.05, 1.0, 0.9, True, 3.0, 1.2)
    m = Measurement("a.npy", 0.5, (200, 200), fit, Noise("display", "grey levels"), Texture(6.0, None, "no counts"),
                    particles={**sizes, "radii_A": sizes["radii_A"] * 3})  # enough particles for percentiles
    data, notes = propose([m], base, "sized")
    lo, hi = data["structure"]["radius_A"]["loguniform"]
    assert lo <= 5.0 and hi >= 10.0 and hi <= 12.5
    assert data["structure"]["area_fraction"] == {"choice": [round(round(mask.mean() / 0.05) * 0.05, 2)]}
    assert any(n.startswith("structure.radius_A: from the model's masks") for n in notes)
    # both signs of an ambiguous defocus, moved from mid-plane to exit plane by half the carbon (30 Å -> 1.5 nm)
    assert sorted(data["imaging"]["defocus_nm"]["empirical"]["values"]) == pytest.approx([-21.5, 18.5])
    assert data["simulation"]["energy_keV"] == 300.0
    # micrographs at 200 kV: the proposed config simulates at 200 kV, where its rings were fitted
    fit200 = CTFFit(-20.0, 1.0, 30.0, 3.0, 2.0, 0.0, 200.0, 0.05, 1.0, 0.9, True, 3.0, 1.2)
    data200, notes200 = propose([Measurement("a.npy", 0.5, (200, 200), fit200, m.noise, m.texture)], base, "at200")
    assert data200["simulation"]["energy_keV"] == 200.0 and from_dict(data200).simulation.energies_keV == (200.0,)
    assert any(n.startswith("simulation.energy_keV: 200") for n in notes200)


def test_model_pass_on_the_realistic_preset_counts_what_a_small_field_hides(carbon_fields, tmp_path):
    """`calibrate --model` on the realistic preset (icosahedra and decahedra among its shapes): specks of the
    segmentation are not particles; a particle the border cuts still bounds the sizes from below; a field whose
    spectrum cannot be fitted (crowded, little carbon) still counts for sizes and coverage; and the proposed
    radii start where the preset's smallest decahedron can be built, so the config is written, not refused."""
    from generators.calibration.run import calibrate

    _, images, _ = carbon_fields
    px = 0.35
    yy, xx = np.mgrid[:256, :256]
    disc = lambda cx, cy, r: (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2  # noqa: E731
    masks = {  # by the field's mean, which the segmenter below is handed the image of
        0: disc(60, 60, 6 / px) | disc(180, 70, 8 / px) | disc(200, 200, 1.2) | disc(120, 200, 1.2),
        1: disc(190, 120, 10 / px) | disc(0, 128, 100),  # the border cuts half of a 35 Å particle
        2: disc(128, 128, 14 / px),  # the field with no carbon to fit
    }
    rng = np.random.default_rng(3)
    fields = [np.round(images[0]), np.round(images[1]), rng.normal(100, 1, (256, 256))]
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, img in enumerate(fields):
        np.save(folder / f"field{i}.npy", img.astype(np.float32))

    def segment(image, pixel_size_A):
        i = next(i for i, f in enumerate(fields) if np.allclose(image, f))
        return masks[i]

    out = tmp_path / "my.yaml"
    calibrate([folder], out, pixel_size_A=px, preset="realistic", segment=segment, log=lambda s: None)
    proposed, text = load_config(out), out.read_text()
    record = json.loads(out.with_suffix(".calibration.json").read_text())
    assert len(record["measurements"]) == 2 and len(record["skipped"]) == 1  # the noise field is left out...
    note = next(line for line in text.splitlines() if "structure.radius_A: from the model's masks" in line)
    assert "(4 particles, equivalent radii 6-14 Å)" in note  # ...but its particle counts
    assert "2 specks under 3 Å left out" in note
    lo, hi = proposed.structure.radius_A.support()
    least, shape, _ = proposed.least_radius_A()
    assert shape == "decahedron" and lo == math.ceil(least) == 6 and "smallest decahedron" in note
    visible = math.sqrt(math.pi * 100**2 / 2 / math.pi) * px  # half a 100 px disc: 24.7 Å
    assert hi == pytest.approx(1.2 * visible, abs=0.3) and "borders cut" in note
    cover = proposed.structure.area_fraction.choice
    assert round(round(masks[2].mean() / 0.05) * 0.05, 2) in cover  # the left-out field's coverage too


def test_report_figure_of_the_model_pass_marks_what_counted(tmp_path):
    """The report's first-pass figure outlines counted particles cyan, border-cut ones orange and specks red."""
    import matplotlib.image as mpimg

    from generators.calibration.report import _segmentation_figure

    yy, xx = np.mgrid[:200, :200]
    mask = ((xx - 60) ** 2 + (yy - 60) ** 2 <= 30**2) | ((xx - 199) ** 2 + (yy - 120) ** 2 <= 40**2)
    mask |= (xx - 150) ** 2 + (yy - 40) ** 2 <= 2**2  # 13 px at 0.35 Å: a speck of 0.7 Å
    image = np.random.default_rng(0).normal(100, 5, (200, 200)) - 30 * mask
    path, sizes = tmp_path / "particles.png", tmp_path / "sizes.png"
    _segmentation_figure([("a.npy", image, mask, 0.35)], {"loguniform": [6.0, 20.0]}, path, sizes)
    rgb = mpimg.imread(path)[..., :3]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    cyan = (r < 0.3) & (g > 0.8) & (b > 0.8)
    orange = (r > 0.9) & (g > 0.4) & (g < 0.75) & (b < 0.25)
    red = (r > 0.8) & (g < 0.2) & (b < 0.2)
    assert cyan.sum() > 50 and orange.sum() > 20 and red.sum() > 3
    assert sizes.stat().st_size > 5000


def test_a_renderings_blur_read_off_the_noise_and_proposed(carbon_fields):
    """Display files resampled after the camera: the noise floor falls off as the blur's exp(-4π²σ²k²), and the
    proposed config blurs its recorded images by the σ read off it (imaging.output_blur_A)."""
    from scipy import ndimage

    from generators.calibration.propose import propose

    cfg, images, metas = carbon_fields
    measured = []
    for sigma_A in (0.25, 0.5):  # 0.7 and 1.4 pixels of 0.35 Å
        for img in images[:3]:  # 150-2050 e/Å²
            blurred = ndimage.gaussian_filter(np.asarray(img, float), sigma_A / 0.35, mode="wrap")
            # grey levels in [0, 1]; cast to 8 bits, the blurred noise at 1.4 px sinks under the cast's own white
            # noise near Nyquist and σ reads 0.35-0.37 Å for 0.5 (docs/calibration.md)
            grey = (blurred - blurred.min()) / np.ptp(blurred)
            m = measure(grey, 0.35, "rendered.png")
            assert m.noise.kind == "display"
            read = math.sqrt(m.ctf.noise_falloff_A2) / (2 * math.pi)
            assert read == pytest.approx(sigma_A, abs=0.08), (sigma_A, read)
            measured.append(m)
    data, notes = propose(measured, cfg, "rendered")
    values = data["imaging"]["output_blur_A"]["empirical"]["values"]
    assert len(values) == 6 and 0.17 < min(values) and max(values) < 0.58
    assert from_dict(data).imaging.output_blur_A.support()[1] > 0.5
    assert any(n.startswith("imaging.output_blur_A: measured") for n in notes)
    # counts: the base's camera models the noise's fall-off, nothing is proposed
    counts = measure(np.round(images[0]), 0.35, "counts.npy")
    data, notes = propose([counts], cfg, "counted")
    assert data["imaging"]["output_blur_A"] == {"value": 0.0}
    assert any(n.startswith("imaging.output_blur_A: kept") for n in notes)


def test_a_crowded_field_keeps_enough_tiles_for_its_spectrum(carbon_fields):
    """Particles over all but one tile: the spectrum still averages the four least covered, not one."""
    _, images, _ = carbon_fields
    exclude = np.ones((256, 256), bool)
    exclude[:128, :128] = False  # tiles of 128 px: only the top-left one is clean
    assert power_spectrum(images[0], 0.35).n_tiles == 9
    assert power_spectrum(images[0], 0.35, exclude=exclude).n_tiles == 4
    exclude[:, :] = False
    assert power_spectrum(images[0], 0.35, exclude=exclude).n_tiles == 9


def test_another_microscope_uncorrected_lens_and_calibrated_files(tmp_path):
    # an uncorrected 300 kV lens (Cs 1.2 mm) around its Scherzer focus (-58 nm), recorded into TIFFs that carry
    # their own pixel size (ImageJ): calibrate needs no pixel-size option, reads the sign of the defocus through
    # Cs, and the proposed config simulates with that Cs (the preset's |Cs| <= 0.03 mm would draw other rings)
    import tifffile

    from generators.run import simulate_structure

    # 512 px: at 256 px (nine tiles of 128 px, 19 frequency samples in the band) the 150 e/Å² field's spectrum
    # let the 2-D fit take -46 nm for -68.5 nm; at 512 px every field is read within 1 nm (docs/calibration.md)
    cfg = carbon_cfg(**{"imaging.cs_mm": 1.2, "imaging.image_size_px": 512,
                        "imaging.defocus_nm": {"linspace": {"start": -70, "stop": -40, "num": N_FIELDS}}})
    images, _, _, metas, _ = simulate_structure(cfg, 0)
    paths = []
    for i, img in enumerate(images[:3]):
        paths.append(str(tmp_path / f"f{i}.tif"))
        tifffile.imwrite(paths[-1], np.round(img).astype(np.float32), imagej=True,
                         resolution=(1 / 0.035, 1 / 0.035), metadata={"unit": "nm"})
    out = tmp_path / "scope.yaml"
    assert main(["calibrate", *paths, "--cs-mm", "1.2", "--out", str(out)]) == 0
    proposed = load_config(out)
    assert proposed.imaging.cs_mm.support() == (1.2, 1.2)
    assert "as given (--cs-mm)" in out.read_text()
    record = json.loads(out.with_suffix(".calibration.json").read_text())
    values = proposed.imaging.defocus_nm.empirical.values
    for m, truth in zip(record["measurements"], metas[:3]):
        assert m["pixel_size_A"] == pytest.approx(0.35)
        # every field's exit-plane defocus is among the proposed draws (up to the fit's error)
        assert min(abs(v - truth["defocus_nm"]) for v in values) < 2.5, (values, truth["defocus_nm"])
        # the rings' mid-plane defocus (exit plane + half the carbon), its sign read through Cs, at every dose
        # from 150 e/Å²; the astigmatism within 1 nm
        assert not m["ctf"]["sign_ambiguous"]
        assert m["ctf"]["defocus_nm"] == pytest.approx(truth["defocus_nm"] + CARBON_A / 20, abs=2.0)
        assert m["ctf"]["astigmatism_nm"] == pytest.approx(truth["astigmatism_nm"], abs=1.0)


def test_a_file_without_pixel_size_and_no_option_is_refused(tmp_path, capsys):
    f = tmp_path / "plain.npy"
    np.save(f, np.random.default_rng(0).normal(100, 5, (128, 128)).astype(np.float32))
    out = tmp_path / "my.yaml"
    assert main(["calibrate", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plain.npy" in err and "--pixel-size-A" in err, err
    assert not out.exists()


def test_energy_read_from_the_files_and_mixed_energies_refused(tmp_path, capsys):
    # a 200 kV microscope's DM4 files (calibrated, with the voltage in their tags): calibrate fits the rings at the
    # files' energy, with no option, and the proposed config simulates at it; mixing energies is refused
    from dm_files import write_dm

    from generators.run import simulate_structure

    cfg = carbon_cfg(**{"simulation.energy_keV": 200.0})
    images, _, _, metas, _ = simulate_structure(cfg, 0)
    paths = []
    for i in (1, 3):  # fields at 1100 and 3000 e/Å²
        paths.append(str(tmp_path / f"f{i}.dm4"))
        write_dm(paths[-1], np.round(images[i]).astype(np.float32), 0.035, "nm", voltage_V=200e3)
    out = tmp_path / "scope.yaml"
    assert main(["calibrate", *paths, "--out", str(out)]) == 0
    assert "beam energy 200 keV, as the files record it" in capsys.readouterr().out
    proposed = load_config(out)
    assert proposed.simulation.energies_keV == (200.0,)
    record = json.loads(out.with_suffix(".calibration.json").read_text())
    assert record["energy_keV"] == 200.0
    for m, i in zip(record["measurements"], (1, 3)):
        # |defocus| (a corrected lens: the sign may stay open) at the carbon's mid-plane
        assert abs(m["ctf"]["defocus_nm"]) == pytest.approx(abs(metas[i]["defocus_nm"] + CARBON_A / 20), abs=2.0)

    other = tmp_path / "at300.dm4"
    write_dm(other, np.round(images[0]).astype(np.float32), 0.035, "nm", voltage_V=300e3)
    out2 = tmp_path / "mixed.yaml"
    assert main(["calibrate", paths[0], str(other), "--out", str(out2)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "200, 300 keV" in err and "--energy-keV" in err, err
    assert not out2.exists()


def test_a_low_frequency_hump_is_not_taken_for_a_passband():
    # a spectrum of carbon under an uncorrected 200 kV lens (Cs 1.2 mm, -50 to -75 nm) with, on top, a smooth hump
    # of power about k = 0 (a field holding many particles): the fit reads the rings, not the hump (without the
    # hump terms each of these was read within 2 nm of focus, the hump taken for a near-focus passband)
    from generators.calibration.spectrum import Spectrum

    n, px = 128, 0.7
    f = np.fft.fftshift(np.fft.fftfreq(n, px))
    k = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        df_A = -10 * rng.uniform(50, 75)
        rings = ctf_power(k.ravel(), 200.0, df_A, 1.2e7, 5.0).reshape(k.shape) * np.exp(-10 * k**2)
        hump = 30 * np.exp(-k**2 / (2 * 0.045**2))
        power = (1.0 + 0.2 * k**2 + 3 * rings + hump) * rng.gamma(9, 1 / 9, k.shape)  # nine tiles' average
        fit = fit_ctf(Spectrum(power, px, 9), energy_keV=200.0, cs_mm=1.2)
        assert fit.defocus_nm == pytest.approx(df_A / 10, abs=2.0), (seed, fit.defocus_nm, df_A / 10)
