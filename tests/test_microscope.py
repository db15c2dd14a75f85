"""The microscope per record: a beam energy drawn per structure from a set, the antialias band checked at each
energy, and the focal spread computed from Cc and the energy spread."""
import math

import numpy as np
import pytest
from conftest import tiny_dict, with_fields
from test_calibration import CARBON_A, carbon_cfg

from generators.config import ConfigError, from_dict
from generators.imaging import beam_energy_keV, chromatic_focal_spread_nm


def test_focal_spread_from_cc_hand_worked():
    # 300 kV Schottky FEG, Cc 1.2 mm, 0.7 eV FWHM: sigma_E = 0.7 / 2.3548 = 0.29727 eV, / 300 keV = 9.909e-7,
    # times k_rel = (1 + 300/511) / (1 + 150/511) = 1.22692: 1.2158e-6; times 1.2 mm: 1.459 nm
    assert chromatic_focal_spread_nm(1.2, 0.7, 300.0) == pytest.approx(1.459, abs=0.002)
    # a lens-current ripple of 1 ppm alone: 2 x 1e-6 x Cc, no relativistic factor
    assert chromatic_focal_spread_nm(1.0, 0.0, 300.0, lens_current_ppm=1.0) == pytest.approx(2.0, rel=1e-9)
    # a high-tension ripple acts as an energy spread of the same RMS (relative): 1 ppm of 300 kV = 0.3 eV RMS
    ht = chromatic_focal_spread_nm(1.0, 0.0, 300.0, high_tension_ppm=1.0)
    assert ht == pytest.approx(chromatic_focal_spread_nm(1.0, 0.3 * 2 * math.sqrt(2 * math.log(2)), 300.0), rel=1e-9)
    # independent contributions add in quadrature; the spread grows at lower energy for the same eV spread
    both = chromatic_focal_spread_nm(1.2, 0.7, 300.0, lens_current_ppm=0.5)
    assert both == pytest.approx(math.hypot(1.459, 1.2), abs=0.003)
    assert chromatic_focal_spread_nm(1.2, 0.7, 80.0) > 3 * chromatic_focal_spread_nm(1.2, 0.7, 300.0)


def test_energy_choice_is_validated_and_one_number_keeps_the_hash():
    plain = from_dict(tiny_dict())
    assert plain.simulation.energies_keV == (300.0,)
    assert from_dict(tiny_dict(**{"simulation.energy_keV": 300.0})).sha256() == plain.sha256()
    # the chromatic section is new: a config without it keeps its hash (ADDED_FIELDS)
    assert '"chromatic"' not in plain.canonical_json()
    multi = from_dict(tiny_dict(**{"simulation.energy_keV": {"choice": [80, 200, 300]}}))
    assert multi.simulation.energies_keV == (80.0, 200.0, 300.0)
    with pytest.raises(ConfigError, match=r"simulation.energy_keV.*\[5\]"):
        from_dict(tiny_dict(**{"simulation.energy_keV": {"choice": [5, 300]}}))
    with pytest.raises(ConfigError, match="focal_spread_nm and chromatic both given"):
        from_dict(tiny_dict(**{"imaging.focal_spread_nm": 2.0,
                               "imaging.chromatic": {"cc_mm": 1.2, "energy_spread_eV": 0.7}}))
    with pytest.raises(ConfigError, match="imaging.chromatic.energy_spread_eV"):
        from_dict(tiny_dict(**{"imaging.chromatic": {"cc_mm": 1.2}}))


def test_objective_aperture_checked_against_the_band_at_each_energy():
    """The multislice band is 2/3 of Nyquist in spatial frequency: 1 / (3 x 0.125 Å) = 2.67 / Å, which is
    52.5 mrad at 300 kV (lambda 0.0197 Å) and 111 mrad at 80 kV (0.0418 Å). A 70 mrad aperture fits the band at
    80 kV only."""
    ok = tiny_dict(**{"simulation.energy_keV": 80.0, "imaging.objective_aperture_mrad": 70.0})
    from_dict(ok)
    with pytest.raises(ConfigError, match=r"objective_aperture_mrad 70 is wider than the multislice band at 300 keV "
                                          r"\(52.5 mrad"):
        from_dict(tiny_dict(**{"simulation.energy_keV": {"choice": [80, 300]},
                               "imaging.objective_aperture_mrad": 70.0}))


def test_slices_and_phase_follow_each_structures_energy(tmp_path):
    """A weak phase object's phase is sigma(E) V: carbon's exit-wave phase at 80 kV is sigma(80)/sigma(300) = 1.55
    times that at 300 kV, also when both energies share one run's cached carbon slices. Compared below
    0.25 / Å, where propagation inside the film barely mixes phase into amplitude (pi lambda dz k^2 < 0.05)."""
    from abtem.core.energy import energy2sigma

    from generators.simulate import make_simulator
    from generators.structures import build_structure

    cfg = carbon_cfg(**{"simulation.energy_keV": {"choice": [80, 300]}, "structure.substrate.thickness_A": 12.0})
    s = build_structure(cfg, 0, tmp_path)
    phase = {}
    for e in (300.0, 80.0):  # the second reads the cache the first wrote, if it were shared
        sim = make_simulator(cfg.simulation, cfg.sim_gpts, energy_keV=e)
        sim.use_folders(None, tmp_path)
        w = np.fft.fft2(sim.exit_waves(s, cfg.seed).full[0])
        k = np.hypot(*np.meshgrid(*[np.fft.fftfreq(n, cfg.simulation.sampling_A) for n in w.shape]))
        phase[e] = np.std(np.angle(np.fft.ifft2(np.where(k < 0.25, w, 0))))
    expected = energy2sigma(80e3) / energy2sigma(300e3)
    assert phase[80.0] / phase[300.0] == pytest.approx(expected, rel=0.05)
    with pytest.raises(ValueError, match="give the structure's energy"):
        make_simulator(cfg.simulation, cfg.sim_gpts)


def test_records_carry_their_structures_energy_and_computed_focal_spread():
    from generators.run import simulate_structure

    cfg = from_dict(with_fields(tiny_dict(), **{
        "n_structures": 6, "structure.n_particles": 0, "simulation.energy_keV": {"choice": [80, 300]},
        "imaging.chromatic": {"cc_mm": {"uniform": [1.0, 2.0]}, "energy_spread_eV": 0.7, "lens_current_ppm": 0.5}}))
    drawn = [beam_energy_keV(cfg, i) for i in range(cfg.n_structures)]
    assert set(drawn) == {80.0, 300.0}, drawn  # seed 11 draws both
    for i in (drawn.index(80.0), drawn.index(300.0)):
        _, _, _, metas, _ = simulate_structure(cfg, i)
        assert {m["energy_keV"] for m in metas} == {drawn[i]}
        for m in metas:
            assert 1.0 <= m["cc_mm"] <= 2.0 and m["energy_spread_eV"] == 0.7 and m["lens_current_ppm"] == 0.5
            assert m["focal_spread_nm"] == pytest.approx(
                chromatic_focal_spread_nm(m["cc_mm"], 0.7, drawn[i], 0.0, 0.5), rel=1e-12)
    plain = from_dict(tiny_dict(**{"n_structures": 1, "structure.n_particles": 0}))
    _, _, _, metas, _ = simulate_structure(plain, 0)
    assert all(m["cc_mm"] is None and m["energy_keV"] == 300.0 and m["focal_spread_nm"] == 1.5 for m in metas)


def test_thon_rings_move_with_the_wavelength():
    """Carbon imaged at 80 kV: the CTF fit at 80 kV finds the defocus (at the carbon's mid-plane) within 2 nm;
    read as if at 300 kV the same rings give a defocus off by far more (chi goes as lambda df k^2)."""
    from generators.calibration.ctf_fit import fit_ctf
    from generators.calibration.spectrum import power_spectrum
    from generators.run import simulate_structure

    cfg = carbon_cfg(**{"simulation.energy_keV": 80.0, "conditions_per_structure": 2,
                        "imaging.defocus_nm": {"linspace": {"start": -30, "stop": 20, "num": 2}},
                        "imaging.dose_e_per_A2": 3000.0})
    images, _, _, metas, _ = simulate_structure(cfg, 0)
    for img, m in zip(images, metas):
        mid = m["defocus_nm"] + CARBON_A / 20
        s = power_spectrum(img, cfg.imaging.pixel_size_A)
        right = fit_ctf(s, energy_keV=80.0, cs_mm=0.0)
        wrong = fit_ctf(s, energy_keV=300.0, cs_mm=0.0)
        assert abs(abs(right.defocus_nm) - abs(mid)) < 2.0, (mid, right.defocus_nm)
        assert abs(abs(wrong.defocus_nm) - abs(mid)) > 10.0, (mid, wrong.defocus_nm)
