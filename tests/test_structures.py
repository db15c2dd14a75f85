"""Structures: lattice geometry, planar defects, substrate density, placement, determinism."""
import numpy as np
import pytest
from scipy.spatial import cKDTree

from generators.config import Defects, from_dict
from generators.structures import build_particle, build_structure
from tests.conftest import tiny_dict

A_AU = 4.07825


def nn_distances(pos):
    d, _ = cKDTree(pos).query(pos, k=2)
    return d[:, 1]


def on_fcc_lattice(pos, a=A_AU, tol=0.05):
    """True where a crystal-frame position is an fcc lattice point (a/2 (i, j, k), i + j + k even)."""
    q = pos / (a / 2)
    r = np.round(q)
    return (np.abs(q - r).max(axis=1) < tol) & (r.sum(axis=1) % 2 == 0)


def test_au_nearest_neighbour_distance():
    pos, numbers, counts = build_particle("Au", 12.0, "none", 0, Defects(), seed=1)
    assert set(numbers) == {79}
    assert np.median(nn_distances(pos)) == pytest.approx(A_AU / np.sqrt(2), rel=0.02)
    assert np.linalg.norm(pos, axis=1).max() <= 12.0 + 1e-6
    # atoms fill the sphere at fcc density (4 atoms per a^3)
    assert len(pos) == pytest.approx(4 / A_AU**3 * 4 / 3 * np.pi * 12.0**3, rel=0.1)
    assert on_fcc_lattice(pos).all() and counts == {"n_twins": 0, "n_stacking_faults": 0}


def test_twin_is_the_mirrored_lattice():
    pos, _, counts = build_particle("Au", 15.0, "twin", 1, Defects(), seed=3)
    assert counts == {"n_twins": 1, "n_stacking_faults": 0}
    parent = on_fcc_lattice(pos)
    assert 0.1 < parent.mean() < 0.9, "a twin leaves part of the particle off the parent lattice"
    off = pos[~parent]
    best = 0.0
    for n in np.array([[1, 1, 1], [-1, 1, 1], [1, -1, 1], [1, 1, -1]]) / np.sqrt(3):
        d111 = A_AU / np.sqrt(3)
        for k in range(-10, 11):  # twin planes are (111) lattice planes of the parent
            dist = off @ n - k * d111
            mirrored = off - 2 * dist[:, None] * n
            best = max(best, on_fcc_lattice(mirrored).mean())
    assert best > 0.99, "atoms off the parent lattice must be its mirror image across one {111} plane"


def test_stacking_fault_breaks_the_lattice_without_mirroring():
    pos, _, counts = build_particle("Au", 15.0, "stacking_fault", 1, Defects(), seed=0)
    assert counts == {"n_twins": 0, "n_stacking_faults": 1}
    # the fault plane may fall near the particle's edge: some atoms stay on the parent lattice, some leave it
    assert 0.005 < on_fcc_lattice(pos).mean() < 0.995
    assert np.median(nn_distances(pos)) == pytest.approx(A_AU / np.sqrt(2), rel=0.02)


def test_cdse_wurtzite_bond_length():
    for defect in ("none", "stacking_fault"):
        pos, numbers, _ = build_particle("CdSe", 12.0, defect, 1, Defects(), seed=2)
        assert set(numbers) == {48, 34}
        cd, se = pos[numbers == 48], pos[numbers == 34]
        d, _ = cKDTree(se).query(cd, k=4)
        assert np.median(d[:, :4]) == pytest.approx(2.63, rel=0.02), "tetrahedral Cd-Se bonds"
        d_cd, _ = cKDTree(cd).query(cd, k=2)
        assert np.median(d_cd[:, 1]) == pytest.approx(4.30, rel=0.02), "Cd-Cd = a"


def test_cdse_refuses_twins_with_a_clear_error():
    from generators.config import ConfigError

    with pytest.raises(ConfigError, match="not available for material CdSe"):
        from_dict(tiny_dict(**{"structure.material": "CdSe"}))


def test_structure_placement_substrate_and_determinism(tiny_cfg, tmp_path):
    s = build_structure(tiny_cfg, 3)
    L = tiny_cfg.field_of_view_A
    (pt,) = s.particles
    m = tiny_cfg.structure.edge_margin_A
    xy = s.particle_positions[:, :2]
    assert xy.min() >= m - 1e-6 and xy.max() <= L - m + 1e-6, "particle fully inside the field of view"
    assert np.allclose(np.linalg.norm(s.particle_positions - np.array(pt.center_A), axis=1).max(), pt.radius_A,
                       atol=1.5)
    # carbon: density and minimum distance (periodic in x, y, the block's seam included), and the thickness
    sub = s.substrate_positions
    t = s.substrate.thickness_A
    assert sub[:, 2].max() < t and sub[:, 2].min() >= 0
    assert len(sub) / (L * L * t) == pytest.approx(0.1103, rel=0.05)
    tree = cKDTree(np.c_[sub[:, :2] % L, sub[:, 2]], boxsize=[L, L, 1e6])
    nn = tree.query(np.c_[sub[:, :2] % L, sub[:, 2]], k=2)[0][:, 1]
    assert nn.min() >= 1.4 * (1 - 1e-6), "no C-C pair under min_dist, across the periodic seam too"
    # the particle rests on the carbon: its lowest atom contact_distance_A above the highest carbon atom
    gap = (s.particle_height_A - s.particle_positions[:, 2].max()) + sub[:, 2].min()
    assert gap == pytest.approx(tiny_cfg.structure.contact_distance_A, abs=1e-6)
    # same seed, same structure
    s2 = build_structure(tiny_cfg, 3)
    assert np.array_equal(s.particle_positions, s2.particle_positions)
    assert np.array_equal(s.substrate_positions, s2.substrate_positions)
    assert s.particles == s2.particles
    # extended XYZ round trip with the particle flag and the simulation cell
    from ase.io import read

    s.write_extxyz(tmp_path / "s.extxyz")
    atoms = read(tmp_path / "s.extxyz")
    assert atoms.arrays["is_particle"].sum() == len(s.particle_numbers)
    assert (atoms.arrays["particle_index"][atoms.arrays["is_particle"]] == 0).all()
    assert np.allclose(atoms.cell.lengths(), [L, L, s.particle_height_A + s.substrate_height_A])


def test_zone_axis_orientation_puts_the_axis_on_the_beam():
    cfg = from_dict(tiny_dict(**{"structure.orientation": {"mode": "zone_axis", "zone_axis": [1, 1, 0]}}))
    s = build_structure(cfg, 0)
    beam = np.array(s.particles[0].beam_direction_crystal)
    assert np.allclose(np.abs(beam), np.array([1, 1, 0]) / np.sqrt(2), atol=1e-6)


def test_defect_planes_are_placed_exactly_or_refused():
    """czone's rejection sampler could loop forever on thin particles; ours always ends, uniformly valid."""
    from generators.structures import _separated_indices

    rng = np.random.default_rng(0)
    for _ in range(500):
        n, m = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        length = int(rng.integers(2 * m + (n - 1) * m + n, 30))
        x = _separated_indices(n, m, length, rng)
        assert len(x) == n and x[0] >= m and x[-1] < length - m and all(b - a >= m for a, b in zip(x, x[1:]))
    with pytest.raises(ValueError):
        _separated_indices(3, 4, 12, rng)
    # the tightest fit has exactly one arrangement, and it is found
    assert _separated_indices(3, 2, 2 * 2 + 2 * 2 + 1, rng) == [2, 4, 6]
