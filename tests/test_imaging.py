"""Imaging physics: the CTF against abTEM's, Thon rings in carbon, Au lattice fringes, dose statistics."""
import numpy as np
import pytest

from generators.config import from_dict
from generators.detector import Detector
from generators.imaging import Condition, ImageFormer, polar_chi
from generators.simulate import make_simulator, wavelength_A
from generators.structures import build_structure
from tests.conftest import tiny_dict

LAM300 = 0.01969


def cond(**kw):
    base = dict(condition_index=0, defocus_nm=0.0, cs_mm=0.0, astigmatism_nm=0.0, astigmatism_angle_deg=0.0,
                focal_spread_nm=0.0, dose_e_per_A2=1000.0, crop_offset_px=(0, 0))
    base.update(kw)
    return Condition(**base)


def test_wavelength():
    assert wavelength_A(300) == pytest.approx(LAM300, rel=1e-3)
    assert wavelength_A(200) == pytest.approx(0.02508, rel=1e-3)


def test_chi_matches_abtem_ctf():
    import abtem

    rng = np.random.default_rng(0)
    n, s = 96, 0.1
    arr = (rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))).astype(np.complex64)
    coeffs = dict(C10=-123.0, C12=45.0, phi12=0.7, C30=-2e5, C23=1800.0, phi23=0.3, C50=1e7, C21=700.0)
    with abtem.config.set({"diagnostics.progress_bar": False}):
        ref = abtem.Waves(arr, energy=300e3, sampling=s).apply_ctf(abtem.CTF(energy=300e3, **coeffs)).compute().array
    lam = wavelength_A(300)
    kx, ky = np.fft.fftfreq(n, s)[:, None], np.fft.fftfreq(n, s)[None, :]  # abTEM arrays are [x, y]
    chi = polar_chi(lam * np.hypot(kx, ky), np.arctan2(ky, kx), lam, coeffs)
    ours = np.fft.ifft2(np.fft.fft2(arr) * np.exp(-1j * chi))
    assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()


def test_image_former_chi_is_the_polar_formula():
    im = from_dict(tiny_dict()).imaging
    lam = wavelength_A(300)
    f = ImageFormer(im, 64, 0.125, lam, 2)
    c = cond(defocus_nm=-7.0, cs_mm=0.003, astigmatism_nm=1.5, astigmatism_angle_deg=30.0)
    ky, kx = np.fft.fftfreq(64, 0.125)[:, None], np.fft.fftfreq(64, 0.125)[None, :]
    ref = polar_chi(lam * np.hypot(kx, ky), np.arctan2(ky, kx), lam,
                    {"C10": -70.0, "C12": 15.0, "phi12": np.radians(30), "C30": 3e4})
    assert np.allclose(f.chi(c), ref, atol=1e-3)


def test_poisson_dose_statistics():
    rng = np.random.default_rng(1)
    flat = np.ones((256, 256), np.float32)
    for dose, px in ((400.0, 0.25), (2000.0, 0.2)):
        counts = Detector("ideal", 1.0, 0.0, 1.0, 0.05, 0.15, 0.3).record(flat, dose, px, rng)
        lam = dose * px**2
        assert counts.dtype == np.float32 and np.all(counts == np.round(counts))
        assert counts.mean() == pytest.approx(lam, abs=4 * np.sqrt(lam / counts.size))
        assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.03), "Poisson: variance = mean"


def test_vacuum_wave_gives_unit_intensity_for_any_aberration():
    im = from_dict(tiny_dict()).imaging
    f = ImageFormer(im, 64, 0.125, wavelength_A(300), 2)
    out = f.intensity(np.ones((1, 64, 64), np.complex64), [cond(defocus_nm=-30, cs_mm=1.0, focal_spread_nm=3)])
    assert out.shape == (1, 32, 32) and np.allclose(out, 1.0, atol=1e-4)


def radial_profile(img, sampling_A):
    n = img.shape[0]
    p = np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean()))) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftshift(np.fft.fftfreq(n, sampling_A)),
                              np.fft.fftshift(np.fft.fftfreq(n, sampling_A)), indexing="ij"))
    dk = 1 / (n * sampling_A)
    bins = np.round(k / dk).astype(int)
    prof = np.bincount(bins.ravel(), p.ravel()) / np.maximum(np.bincount(bins.ravel()), 1)
    return np.arange(len(prof)) * dk, prof


def _simulate(cfg, index=0):
    sim = make_simulator(cfg.simulation, cfg.sim_gpts, 0.0)
    return sim.exit_waves(build_structure(cfg, index), cfg.seed)


def test_first_ctf_zero_in_carbon_where_defocus_and_cs_put_it():
    # Carbon only (particle radius tiny, placed anyway; the carbon dominates the spectrum), 64 Å field.
    cfg = from_dict(tiny_dict(**{"imaging.image_size_px": 256, "structure.radius_A": 3.0,
                                  "structure.substrate.thickness_A": 30.0, "structure.substrate.bank_size": 1}))
    waves = _simulate(cfg)
    lam = wavelength_A(300)
    f = ImageFormer(cfg.imaging, cfg.sim_gpts, cfg.simulation.sampling_A, lam, cfg.bin_factor)
    df_A, cs_A = -800.0, 0.5e7
    img = f.intensity(waves.full, [cond(defocus_nm=df_A / 10, cs_mm=cs_A / 1e7)])[0]
    k, prof = radial_profile(img, cfg.imaging.pixel_size_A)
    kk = np.linspace(0.01, 1.0, 100000)
    chi = np.pi * lam * df_A * kk**2 + 0.5 * np.pi * cs_A * lam**3 * kk**4
    k_zero = kk[np.argmax(np.abs(chi) >= np.pi)]  # first zero of sin(chi) past the origin
    sel = (k > 0.6 * k_zero) & (k < 1.4 * k_zero)
    smooth = np.convolve(prof, np.ones(3) / 3, mode="same")
    k_min = k[sel][np.argmin(smooth[sel])]
    assert k_min == pytest.approx(k_zero, rel=0.08)
    # and the ring moves when the defocus does: at twice the defocus the zero sits ~1/sqrt(2) as far out
    img2 = f.intensity(waves.full, [cond(defocus_nm=2 * df_A / 10, cs_mm=0.0)])[0]
    k2, prof2 = radial_profile(img2, cfg.imaging.pixel_size_A)
    k_zero2 = 1 / np.sqrt(lam * 2 * abs(df_A))
    sel2 = (k2 > 0.6 * k_zero2) & (k2 < 1.4 * k_zero2)
    smooth2 = np.convolve(prof2, np.ones(3) / 3, mode="same")
    assert k2[sel2][np.argmin(smooth2[sel2])] == pytest.approx(k_zero2, rel=0.08)


def test_au_lattice_fringes_at_their_d_spacings_on_zone_axis():
    cfg = from_dict(tiny_dict(**{"imaging.image_size_px": 256, "structure.radius_A": 20.0,
                                  "structure.defects.type": "none",
                                  "structure.orientation": {"mode": "zone_axis", "zone_axis": [1, 1, 0]},
                                  "structure.substrate.thickness_A": 0.0}))
    waves = _simulate(cfg)
    f = ImageFormer(cfg.imaging, cfg.sim_gpts, cfg.simulation.sampling_A, wavelength_A(300), cfg.bin_factor)
    img = f.intensity(waves.full, [cond(defocus_nm=-4.0, cs_mm=-0.015)])[0]
    k, prof = radial_profile(img, cfg.imaging.pixel_size_A)
    peak = lambda d: prof[np.argmin(np.abs(k - 1 / d))]
    background = np.median(prof[(k > 0.6) & (k < 0.62)]), np.median(prof[(k > 0.3) & (k < 0.36)])
    for d in (2.355, 2.039):  # d(111), d(200): the reflections of a [110] zone
        assert peak(d) > 10 * max(background), f"no fringe at d = {d} Å"
    # and not at a spacing the fcc lattice does not have (between d111 and d200)
    assert peak(2.355) > 5 * peak(2.2) and peak(2.039) > 5 * peak(2.2)


def test_band_limited_image_formation_equals_the_full_grid():
    """Exit waves band-limited by the antialias aperture are imaged on the band's rows and columns only; any
    other wave (power outside the band) takes the full grid. Both give the full-grid images to float rounding."""
    import scipy.fft

    from generators.fftw import band_columns
    from generators.imaging import Condition, ImageFormer

    cfg = from_dict(tiny_dict())
    n, s = cfg.sim_gpts, cfg.simulation.sampling_A
    former = ImageFormer(cfg.imaging, n, s, 0.0197, cfg.bin_factor)
    rng = np.random.default_rng(0)
    wave = np.exp(1j * rng.normal(0, 0.3, (1, n, n))).astype(np.complex64)
    m = band_columns(n)
    spec = scipy.fft.fft2(wave)
    out = np.ones(n, bool)
    out[:m] = out[n - m:] = False
    spec[:, out, :] = 0
    spec[:, :, out] = 0
    limited = scipy.fft.ifft2(spec).astype(np.complex64)
    conds = [Condition(condition_index=0, crop_offset_px=(0, 0), defocus_nm=-8.0, cs_mm=0.001, astigmatism_nm=1.0,
                       astigmatism_angle_deg=30.0, focal_spread_nm=2.0, dose_e_per_A2=500.0)]
    calls = []
    real_accumulate = former._accumulate
    former._accumulate = lambda *a: (calls.append(a[-1]), real_accumulate(*a))[1]
    for w, grid in ((limited, "band"), (wave, "full")):
        calls.clear()
        fast = former.intensity(w, conds)
        assert set(calls) == {grid}
        former._band, saved = None, former._band  # the reference: every wave on the full grid
        slow = former.intensity(w, conds)
        former._band = saved
        assert np.abs(fast - slow).max() < 1e-5 and fast.std() > 0.01  # real contrast, same image


def _focal_images(points: int, wave: np.ndarray, c) -> np.ndarray:
    cfg = from_dict(tiny_dict())
    im = cfg.imaging.model_copy(update={"focal_series_points": points})
    former = ImageFormer(im, cfg.sim_gpts, cfg.simulation.sampling_A, wavelength_A(300), cfg.bin_factor)
    return former.intensity(wave, [c])


def test_focal_series_agrees_with_the_quasi_coherent_envelope_for_a_weak_phase_object():
    """In the linear (weak phase) regime the incoherent defocus sum and the temporal envelope on the wave are the
    same physics: the two implementations give the same image contrast."""
    cfg = from_dict(tiny_dict())
    n = cfg.sim_gpts
    rng = np.random.default_rng(4)
    phase = np.fft.ifft2(np.fft.fft2(rng.normal(0, 1, (n, n))) *
                         (np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n))) < 0.2)).real
    wave = np.exp(1j * 0.01 * phase / phase.std())[None].astype(np.complex64)
    c = cond(defocus_nm=-15.0, cs_mm=0.01, focal_spread_nm=1.5)
    series = _focal_images(25, wave, c) - 1  # the seed study's 25 points over +-3 sigma
    envelope = _focal_images(1, wave, c) - 1
    sharp = _focal_images(1, wave, cond(defocus_nm=-15.0, cs_mm=0.01, focal_spread_nm=0.0)) - 1
    assert series.std() > 0.005
    assert np.abs(series - envelope).max() < 0.03 * np.abs(series).max()
    assert np.abs(sharp - envelope).max() > 0.1 * np.abs(series).max()  # and the spread does damp this image


def test_display_cast_spans_the_grey_levels_and_the_median_takes_out_lone_pixels():
    from generators.imaging import saved_for_display

    rng = np.random.default_rng(3)
    counts = rng.poisson(400.0, size=(64, 64)).astype(np.float32)
    counts[10, 10] = 5000.0   # one lone hot pixel (a cosmic ray)
    cast = saved_for_display(counts, 8, 0)
    assert cast.min() == 0 and cast.max() == 255 and np.all(cast == np.round(cast))
    # the cast is monotonic in the counts: it keeps their order, only their levels merge
    order = np.argsort(counts, axis=None, kind="stable")
    assert np.all(np.diff(cast.ravel()[order]) >= 0)
    filtered = saved_for_display(counts, 8, 3)
    # the hot pixel set the top level; a 3 x 3 median replaces it by its neighbours' level, and smooths the noise
    assert filtered[10, 10] < 0.2 * 255 and filtered.std() < cast.std()
    assert saved_for_display(counts, None, 0) is counts
    assert saved_for_display(np.full((8, 8), 7.0, np.float32), 8, 3).max() == 0, "a flat field has one level"


def test_paper_preset_saves_8_bit_median_filtered_images_with_the_studys_label_margin():
    """The seed study's last imaging step and its mask margin, from the `paper` preset, on a small scene: the
    margin brings the phase-threshold mask (about one atomic radius inside the sphere) out to the sphere's
    projected radius; the images hold 8-bit grey levels, the same-seed counts cast and filtered."""
    from generators.config_files import load_preset
    from generators.imaging import saved_for_display
    from generators.work import simulate_structure

    paper = load_preset("paper")
    assert (paper.imaging.output_bits, paper.imaging.median_filter_px) == (8, 3)
    assert paper.mask.blur_sigma_A / paper.imaging.pixel_size_A == pytest.approx(5.0)
    one = {"structure.n_particles": 1, "structure.radius_A": 11.0, "structure.radius_spread": 0.0,
           "structure.defects.type": "none", "n_structures": 1, "conditions_per_structure": 1}
    plain = simulate_structure(from_dict(tiny_dict(**one)), 0)
    saved = simulate_structure(from_dict(tiny_dict(**one, **{
        "imaging.output_bits": paper.imaging.output_bits, "imaging.median_filter_px": paper.imaging.median_filter_px,
        "mask.blur_sigma_A": paper.mask.blur_sigma_A, "mask.blur_threshold": paper.mask.blur_threshold})), 0)
    p = saved.records[0]["pixel_size_A"]
    r_plain = np.sqrt(plain.masks[0].sum() / np.pi) * p
    r_saved = np.sqrt(saved.masks[0].sum() / np.pi) * p
    assert r_plain < 11.0 - 0.3, "the phase threshold stops short of the outermost atoms' centres"
    assert r_saved - r_plain == pytest.approx(1.25, abs=0.3) and abs(r_saved - 11.0) < 0.8
    img = saved.images[0]
    assert img.min() >= 0 and img.max() <= 255 and np.all(img == np.round(img))
    # at these few counts per pixel the cast keeps every count level apart (no more levels than counts had)
    assert 20 < len(np.unique(img)) <= len(np.unique(plain.images[0]))
    assert saved.records[0]["output_bits"] == 8 and saved.records[0]["median_filter_px"] == 3
    # the same seeds draw the same counts: the saved image is exactly their cast, median-filtered copy
    assert np.array_equal(img, saved_for_display(plain.images[0], 8, 3))


def test_image_spread_damps_each_frequency_by_its_gaussian_envelope_and_leaves_other_draws_alone():
    """Image spread (vibration, drift) blurs the intensity: a fringe of spatial frequency k keeps
    exp(-2 pi^2 sigma^2 k^2) of its amplitude, so 2.3 Å lattice fringes fade far more than 5 Å carbon speckle."""
    from generators.imaging import sample_conditions

    cfg = from_dict(tiny_dict())
    n, s = cfg.sim_gpts, cfg.simulation.sampling_A
    field = n * s
    y, x = np.mgrid[:n, :n] * s
    fringe, speckle = 14, 6  # periods field/14 = 2.29 Å and field/6 = 5.33 Å
    phase = 0.01 * (np.cos(2 * np.pi * fringe * x / field) + np.cos(2 * np.pi * speckle * y / field))
    wave = np.exp(1j * phase)[None].astype(np.complex64)
    former = ImageFormer(cfg.imaging, n, s, wavelength_A(300), cfg.bin_factor)

    def amplitudes(sigma):
        image = former.intensity(wave, [cond(defocus_nm=-6.0, image_spread_A=sigma)])[0]
        spec = np.abs(np.fft.fft2(image - image.mean()))
        return spec[0, fringe], spec[speckle, 0]

    sharp, blurred = amplitudes(0.0), amplitudes(0.5)
    assert min(sharp) > 1e-3 * n * n / cfg.bin_factor**2  # both gratings are imaged
    for k_index, a, b in ((fringe, sharp[0], blurred[0]), (speckle, sharp[1], blurred[1])):
        expected = np.exp(-2 * np.pi**2 * 0.5**2 * (k_index / field) ** 2)
        assert abs(b / a - expected) < 0.01, (k_index, b / a, expected)
    assert blurred[0] / sharp[0] < 0.5 < 0.8 < blurred[1] / sharp[1]

    # drawn per condition from its own stream: the other draws are those of a config without it
    spread = from_dict(tiny_dict(**{"imaging.image_spread_A": {"uniform": [0.2, 0.6]}}))
    plain_conditions = sample_conditions(cfg, 3, [(60.0, 60.0)], [10.0])
    spread_conditions = sample_conditions(spread, 3, [(60.0, 60.0)], [10.0])
    for a, b in zip(plain_conditions, spread_conditions):
        assert a.image_spread_A == 0.0 and 0.2 <= b.image_spread_A <= 0.6
        assert {**a.as_dict(), "image_spread_A": 0} == {**b.as_dict(), "image_spread_A": 0}
    assert cfg.sha256() == from_dict(tiny_dict(**{"imaging.image_spread_A": 0.0})).sha256() != spread.sha256()


def test_output_blur_smooths_the_recorded_image_noise_included_and_leaves_other_draws_alone():
    """A file resampled on export: the recorded counts (signal and shot noise alike) blurred by a Gaussian of σ Å,
    so the noise's power falls as exp(-4π²σ²k²), as `temsynth calibrate` reads it off display files."""
    from scipy import ndimage

    from generators.imaging import sample_conditions
    from generators.work import simulate_structure

    one = {"structure.n_particles": 1, "structure.radius_A": 11.0, "n_structures": 1, "conditions_per_structure": 2}
    plain_cfg = from_dict(tiny_dict(**one))
    blur_cfg = from_dict(tiny_dict(**one, **{"imaging.output_blur_A": {"uniform": [0.3, 0.6]}}))
    plain, blurred = simulate_structure(plain_cfg, 0), simulate_structure(blur_cfg, 0)
    p = plain.records[0]["pixel_size_A"]
    assert plain_cfg.imaging.image_size_px == plain.images[0].shape[0]  # no crop: the whole field is stored
    for a, b, rec in zip(plain.images, blurred.images, blurred.records):
        sigma = rec["output_blur_A"]
        assert 0.3 <= sigma <= 0.6 and plain.records[0]["output_blur_A"] == 0.0
        assert np.allclose(b, ndimage.gaussian_filter(a, sigma / p, mode="wrap"), atol=1e-3)
        # the shot noise is smoothed too: neighbouring pixels correlate, the pixel variance drops
        assert b.var() < 0.8 * a.var()
    assert all(np.array_equal(m, n) for m, n in zip(plain.masks, blurred.masks))
    # drawn from its own stream: every other draw is the config's without it, and the default keeps the hash
    for a, b in zip(sample_conditions(plain_cfg, 0, [(60.0, 60.0)], [10.0]),
                    sample_conditions(blur_cfg, 0, [(60.0, 60.0)], [10.0])):
        assert {**a.as_dict(), "output_blur_A": 0} == {**b.as_dict(), "output_blur_A": 0}
    assert plain_cfg.sha256() == from_dict(tiny_dict(**one, **{"imaging.output_blur_A": 0.0})).sha256()
    assert plain_cfg.sha256() != blur_cfg.sha256()
