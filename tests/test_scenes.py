"""Scenes of several particles: materials, Wulff shapes, geometry on the carbon, instance masks, per-particle
columns, refusals of scenes that cannot be laid out."""
from dataclasses import fields

import numpy as np
import pytest
from scipy.spatial import cKDTree

from generators.config import ConfigError, Defects, from_dict
from generators.structures import build_particle, build_structure
from tests.conftest import tiny_dict, with_fields


def scene_dict(**over):
    """Several small particles of three metals and shapes, cut by the border, on thin carbon: 64 Å field."""
    d = tiny_dict(**{
        "imaging.image_size_px": 128, "imaging.pixel_size_A": 0.5, "simulation.sampling_A": 0.25,
        "structure.n_particles": {"integers": [3, 4]},
        "structure.radius_A": {"uniform": [5, 8]},
        "structure.material": {"choice": ["Au", "Ag", "Pt"]},
        "structure.shape": {"choice": ["sphere", "cuboctahedron", "octahedron"]},
        "structure.allow_border_cuts": True,
        "structure.defects": {"type": {"choice": ["none", "twin"]}},
    })
    return with_fields(d, **over)


@pytest.mark.parametrize("material, a", [("Ag", 4.086), ("Pt", 3.924)])
def test_more_fcc_metals_have_their_lattice_constant(material, a):
    pos, numbers, _ = build_particle(material, 10.0, "none", 0, Defects(), seed=1)
    d, _ = cKDTree(pos).query(pos, k=2)
    assert np.median(d[:, 1]) == pytest.approx(a / np.sqrt(2), rel=0.005)
    assert set(numbers) == {47 if material == "Ag" else 78}


def test_wulff_octahedron_is_bounded_by_111_facets_at_the_equivalent_volume():
    r = 12.0
    pos, _, _ = build_particle("Au", r, "none", 0, Defects(), seed=0, shape="octahedron")
    pos = pos - pos.mean(axis=0)
    n111 = np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]]) / np.sqrt(3)
    n100 = np.eye(3)
    reach111 = np.abs(pos @ n111.T).max()
    reach100 = np.abs(pos @ n100.T).max()
    # an octahedron's vertices lie along <100> at sqrt(3) times its {111} facet distance
    assert reach100 / reach111 == pytest.approx(np.sqrt(3), rel=0.08)
    # the same volume (atom count) as the sphere of the equivalent radius, to within wulffpack's whole facets
    assert len(pos) == pytest.approx(4 / 4.07825**3 * 4 / 3 * np.pi * r**3, rel=0.2)


@pytest.mark.parametrize("placement", ["random", "aggregate"])
def test_scene_geometry_no_interpenetration_contact_and_carbon_distances(placement):
    cfg = from_dict(scene_dict(**{"structure.placement": placement}))
    L = cfg.field_of_view_A
    saw_cut = False
    for index in range(3):
        s = build_structure(cfg, index)
        assert s.n_particles >= 2
        sub = np.c_[np.mod(s.substrate_positions[:, :2], L), s.substrate_positions[:, 2] + s.particle_height_A]
        box = [L, L, 1e6]
        metal = np.c_[np.mod(s.particle_positions[:, :2], L), s.particle_positions[:, 2]]
        # no metal atom within 2 Å of carbon (periodic images included); the configured contact is 2.2 Å
        d_mc, _ = cKDTree(sub, boxsize=box).query(metal)
        assert d_mc.min() >= cfg.structure.contact_distance_A - 1e-6
        # C-C never below min_dist, across the seam of the periodic block too
        d_cc, _ = cKDTree(sub, boxsize=box).query(sub, k=2)
        assert d_cc[:, 1].min() >= cfg.structure.substrate.min_dist_A * (1 - 1e-6)
        # particles may touch but never interpenetrate: atoms of different particles stay >= 2 Å apart
        for k in range(s.n_particles):
            mine, others = metal[s.particle_index == k], metal[s.particle_index != k]
            d, _ = cKDTree(others, boxsize=box).query(mine)
            assert d.min() >= 2.0
        # every particle rests on the carbon: its lowest atom is at the same height
        lowest = [s.particle_positions[s.particle_index == k, 2].max() for k in range(s.n_particles)]
        assert np.ptp(lowest) < 1e-6
        # border cuts are allowed here: a particle near the edge wraps to the opposite side
        for pt in s.particles:
            x, y = pt.center_A[:2]
            saw_cut |= min(x, y) < pt.bounding_radius_A or max(x, y) > L - pt.bounding_radius_A
    assert saw_cut, "particles near the border should appear in three scenes of a 64 Å field"


def test_area_fraction_scenes_include_bare_carbon_and_count_what_was_placed():
    d = scene_dict(**{"structure.n_particles": 6, "structure.area_fraction": {"choice": [0.0, 0.15]},
                      "structure.radius_spread": 0.1})
    cfg = from_dict(d)
    counts = [build_structure(cfg, i).n_particles for i in range(6)]
    assert 0 in counts and max(counts) >= 2
    s = next(build_structure(cfg, i) for i in range(6) if build_structure(cfg, i).n_particles >= 2)
    radii = [p.radius_A for p in s.particles]
    assert np.std(np.log(radii)) < 0.3, "one size class per scene"
    assert s.n_particles <= s.n_particles_requested


def test_aggregate_scenes_pack_touching_particles_beyond_what_random_placement_reaches():
    over = {"structure.n_particles": 16, "structure.radius_A": {"uniform": [7, 8]}, "structure.shape": "sphere",
            "structure.area_fraction": {"choice": [0.42]}, "structure.particle_gap_A": 1.0}
    with pytest.raises(ConfigError, match="placement: aggregate"):  # random placement jams below this coverage
        from_dict(scene_dict(**over))
    cfg = from_dict(scene_dict(**over, **{"structure.placement": "aggregate"}))
    L, gap = cfg.field_of_view_A, cfg.structure.particle_gap_A
    for index in range(3):
        s = build_structure(cfg, index)
        assert s.placement == "aggregate" and s.record_fields()["placement"] == "aggregate"
        c = np.array([p.center_A[:2] for p in s.particles])
        r = np.array([p.bounding_radius_A for p in s.particles])
        d = c[:, None] - c[None]
        d -= L * np.round(d / L)  # periodic: border cuts are allowed here
        clearance = np.hypot(d[..., 0], d[..., 1]) - r[:, None] - r[None]
        np.fill_diagonal(clearance, np.inf)
        assert clearance.min() >= gap - 1e-6  # never closer than the gap
        # every particle but the first was drawn in contact with one placed before it (a rare fallback aside)
        touching = np.isclose(clearance.min(1), gap, atol=1e-6)
        assert touching.sum() >= s.n_particles - 1 and s.n_particles >= 6
        covered = np.pi * np.sum(r**2) / L**2
        assert covered > 0.4  # outlines cover more of the field than random placement is allowed to ask for


def test_scene_that_cannot_fit_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="n_particles"):
        from_dict(scene_dict(**{"structure.n_particles": 30}))
    with pytest.raises(ConfigError, match="radius_A"):
        from_dict(scene_dict(**{"structure.radius_A": {"uniform": [5, 30]}}))
    with pytest.raises(ConfigError, match="area_fraction"):
        from_dict(scene_dict(**{"structure.area_fraction": {"uniform": [0.1, 0.45]}}))
    with pytest.raises(ConfigError, match="shape"):
        from_dict(scene_dict(**{"structure.material": "CdSe", "structure.defects": {"type": "none"}}))


def test_records_carry_instance_masks_and_per_particle_columns():
    from generators.run import simulate_structure

    cfg = from_dict(scene_dict(**{"conditions_per_structure": 1}))
    images, masks, labels, metas, s = simulate_structure(cfg, 1)
    m, lab, mask = metas[0], labels[0], masks[0]
    n = s.n_particles
    assert m["n_particles"] == n and len(m["particle_material"]) == n and len(m["particle_center_px"]) == n
    assert set(np.unique(lab)) <= set(range(n + 1))
    assert np.array_equal(lab > 0, mask > 0), "the instance mask partitions the binary mask"
    assert m["particle_area_px"] == [int((lab == k + 1).sum()) for k in range(n)]
    # what the record holds of its structure comes from the Structure object, not a hand-kept key list
    from generators.records import METADATA_NAMES
    from generators.structures import Particle, particle_columns

    own = s.record_fields()
    assert set(own) <= set(METADATA_NAMES) and {k: m[k] for k in own} == own
    assert {c for c, _, _ in particle_columns()} <= set(own)
    hidden = [f.name for f in fields(Particle) if f.metadata.get("column") is False]
    assert hidden and not {f"particle_{h}" for h in hidden} & set(own)  # said so explicitly, and kept out
    L, p = cfg.field_of_view_A, cfg.imaging.pixel_size_A
    for k, ((cx, cy), cut, r) in enumerate(zip(m["particle_center_px"], m["particle_cut_by_border"],
                                               m["particle_bounding_radius_A"])):
        ys, xs = np.nonzero(lab == k + 1)
        if not len(xs):
            continue
        # label k sits on particle k: its pixels lie within the particle's outline (periodic distance)
        dx = (xs - cx + L / p / 2) % (L / p) - L / p / 2
        dy = (ys - cy + L / p / 2) % (L / p) - L / p / 2
        assert np.hypot(dx, dy).max() <= r / p + 3
        touches = xs.min() == 0 or ys.min() == 0 or xs.max() == mask.shape[1] - 1 or ys.max() == mask.shape[0] - 1
        if touches:
            assert cut, "a label touching the border belongs to a particle recorded as cut"


def test_detector_mtf_and_noise_follow_their_formulas():
    from generators.detector import Detector

    def nps(img):  # radially averaged noise power, normalised at low frequency
        f = np.abs(np.fft.fft2(img - img.mean())) ** 2
        fy, fx = np.meshgrid(np.fft.fftfreq(img.shape[0]), np.fft.fftfreq(img.shape[1]), indexing="ij")
        fr = np.hypot(fx, fy)
        return fr, f

    rng = np.random.default_rng(0)
    flat = np.ones((256, 256))
    scint = Detector("scintillator", gain_counts_per_e=4.0, read_noise_counts=0.0, dqe0=0.8, mtf_c=0.05, mtf_f0=0.1,
                     counting_sigma_px=0.0)
    imgs = [scint.record(flat, 100.0, 1.0, rng) for _ in range(4)]
    # gain: counts = gain x electrons on average; DQE(0) = k / (k + 1): variance/mean^2 of large-area sums
    assert np.mean(imgs) == pytest.approx(400.0, rel=0.01)
    fr, power = nps(imgs[0])
    power = np.mean([nps(i)[1] for i in imgs], axis=0)
    for f in (0.1, 0.2, 0.3, 0.4):
        band = np.abs(fr - f) < 0.01
        low = np.abs(fr - 0.03) < 0.01
        measured = power[band].mean() / power[low].mean()
        expected = (scint.mtf(f) / scint.mtf(0.03)) ** 2  # the scintillator blurs shot noise: NPS ~ MTF^2
        assert measured == pytest.approx(expected, rel=0.25), f
    # white noise power per electron: gain^2 (1 + 1/k) at zero frequency -> DQE(0)
    k = 0.8 / 0.2
    white = power[np.abs(fr - 0.03) < 0.01].mean() / scint.mtf(0.03) ** 2 / flat.size
    assert 100 * 16 * (1 + 1 / k) == pytest.approx(white, rel=0.1)

    counting = Detector("counting", gain_counts_per_e=1.0, read_noise_counts=0.0, dqe0=0.9, mtf_c=0, mtf_f0=1,
                        counting_sigma_px=0.5)
    # counting: white noise, but a sinusoid's contrast falls as MTF(f) = exp(-2 pi^2 sigma^2 f^2)
    x = np.arange(256)
    for f in (0.125, 0.25):
        wave = 1 + 0.5 * np.cos(2 * np.pi * f * x)[None, :] * np.ones((256, 1))
        img = counting.record(wave, 1e6, 1.0, rng)
        amp = np.abs(np.fft.fft(img.mean(0)))[int(f * 256)] / 128 / img.mean()
        assert amp / 0.5 == pytest.approx(float(counting.mtf(f)), rel=0.03)
    fr, power = nps(counting.record(flat, 100.0, 1.0, rng))
    assert power[np.abs(fr - 0.4) < 0.02].mean() / power[np.abs(fr - 0.05) < 0.02].mean() == pytest.approx(1, rel=0.2)
    # read noise alone at zero dose
    noisy = Detector("scintillator", 1.0, 3.0, 0.8, 0.05, 0.1, 0.0).record(np.zeros((128, 128)), 0.0, 1.0, rng)
    assert noisy.std() == pytest.approx(3.0, rel=0.05)


def test_label_margin_widens_the_mask_by_the_seed_study_amount():
    from generators.masks import mask_from_coverage

    yy, xx = np.mgrid[:200, :200]
    disk = ((xx - 100.0) ** 2 + (yy - 100.0) ** 2 <= 40.0**2).astype(np.float32)
    plain = mask_from_coverage(disk, 0.0)
    wide = mask_from_coverage(disk, 0.0, blur_sigma_px=4.0, blur_threshold=0.1)
    r_plain, r_wide = np.sqrt(plain.sum() / np.pi), np.sqrt(wide.sum() / np.pi)
    # Gaussian blur kept above 0.1 moves a straight edge out by 1.28 sigma (a disk of radius 10 sigma: a bit less)
    assert r_wide - r_plain == pytest.approx(1.28 * 4.0, abs=0.6)
    assert (wide >= plain).all()
