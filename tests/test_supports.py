"""Support films besides amorphous carbon: graphene sheets and amorphous films of any composition (silicon
nitride, silica), their geometry, the particle's contact with them, their exit-wave phase, and the records."""
import numpy as np
import pytest
from conftest import tiny_dict, with_fields
from scipy.spatial import cKDTree

from generators.config import ConfigError, from_dict
from generators.structures import build_structure


def cfg_with(**over):
    """The tiny config on a 64 Å field (128 px at 0.5 Å): 26 x 15 whole graphene cells, strained 0.1 %."""
    return from_dict(with_fields(tiny_dict(**{"structure.n_particles": 1, "n_structures": 2,
                                              "imaging.pixel_size_A": 0.5, "simulation.sampling_A": 0.25}), **over))


def test_graphene_sheets_have_graphene_geometry():
    cfg = cfg_with(**{"structure.substrate": {"kind": "graphene", "graphene_layers": 2, "bank_size": 1}})
    s = build_structure(cfg, 0)
    pos, L = s.substrate_positions, cfg.field_of_view_A
    assert set(s.substrate_numbers) == {6}
    layers = np.unique(np.round(pos[:, 2], 3))
    assert len(layers) == 2 and np.diff(layers)[0] == pytest.approx(3.35)
    assert s.substrate.thickness_A == pytest.approx(6.7)
    for z in layers:  # in-plane: three neighbours at 1.42 Å, across the periodic seam too
        sheet = pos[np.isclose(pos[:, 2], z)][:, :2]
        d, _ = cKDTree(np.mod(sheet, L), boxsize=L).query(np.mod(sheet, L), k=4)
        assert np.allclose(d[:, 1:], 1.42, atol=0.02)
        assert len(sheet) / L**2 == pytest.approx(4 / (2.46**2 * np.sqrt(3)), rel=0.01)
    # AB (Bernal) stacking: half the second sheet's atoms sit over the first's, half over hexagon centres
    a, b = (pos[np.isclose(pos[:, 2], z)][:, :2] for z in layers)
    d, _ = cKDTree(np.mod(a, L), boxsize=L).query(np.mod(b, L))
    assert np.mean(d < 0.1) == pytest.approx(0.5, abs=0.02)


def test_amorphous_silicon_nitride_density_stoichiometry_and_spacing():
    cfg = cfg_with(**{"structure.substrate": {"composition": "Si3N4", "density_g_per_cm3": 3.0, "min_dist_A": 1.6,
                                              "thickness_A": 20.0, "bank_size": 1}})
    sub = cfg.structure.substrate
    assert sub.atoms_per_A3 == pytest.approx(0.0901, rel=0.01)
    s = build_structure(cfg, 0)
    block, numbers, L = s.substrate_block, s.substrate_block_numbers, cfg.field_of_view_A
    counts = {z: int(np.sum(numbers == z)) for z in (14, 7)}
    assert abs(counts[14] / len(numbers) - 3 / 7) < 1 / len(numbers) + 1e-9
    # number density of the block (interior, away from its open faces), within 10 % of the asked one
    inner = block[(block[:, 2] > 3) & (block[:, 2] < block[:, 2].max() - 3)]
    volume = L * L * (block[:, 2].max() - 6)
    assert len(inner) / volume == pytest.approx(sub.atoms_per_A3, rel=0.1)
    d, _ = cKDTree(np.c_[np.mod(block[:, :2], L), block[:, 2]], boxsize=[L, L, 1e4]).query(
        np.c_[np.mod(block[:, :2], L), block[:, 2]], k=2)
    assert d[:, 1].min() >= 1.6 - 1e-6
    # the cut keeps the block's elements with its atoms
    assert set(np.unique(s.substrate_numbers)) == {7, 14}
    assert s.substrate_positions[:, 2].max() < 20.0


def test_contact_follows_the_elements_and_nothing_interpenetrates():
    from ase.data import covalent_radii

    cfg = cfg_with(**{"structure.substrate": {"composition": "Si3N4", "density_g_per_cm3": 3.0, "min_dist_A": 1.6,
                                              "thickness_A": 15.0, "bank_size": 1},
                      "structure.contact_distance_A": None})
    s = build_structure(cfg, 0)
    expect = covalent_radii[79] + covalent_radii[14]  # Au on Si3N4: the largest pair
    sub = s.substrate_positions + [0, 0, s.particle_height_A]
    lowest = s.particle_positions[:, 2].max()
    assert sub[:, 2].min() - lowest == pytest.approx(expect, abs=1e-6)
    d, _ = cKDTree(sub).query(s.particle_positions)
    assert d.min() >= expect - 1e-6


def test_a_denser_film_shifts_the_phase_more():
    """The exit wave's mean phase grows with the film's mean inner potential: Si3N4 (~15 V) above carbon
    (~10 V) for the same thickness, and one graphene sheet is a small fraction of either."""
    from generators.simulate import make_simulator

    def mean_phase(**sub):
        cfg = cfg_with(**{"structure.n_particles": 0, "structure.substrate": {**sub, "bank_size": 1}})
        s = build_structure(cfg, 0)
        sim = make_simulator(cfg.simulation, cfg.sim_gpts)
        w = sim.exit_waves(s, cfg.seed).full[0]
        return float(np.angle(np.mean(w)))

    carbon = mean_phase(thickness_A=20.0)
    nitride = mean_phase(thickness_A=20.0, composition="Si3N4", density_g_per_cm3=3.0, min_dist_A=1.6)
    sheet = mean_phase(kind="graphene", graphene_layers=1)
    assert 1.2 < nitride / carbon < 2.2, (nitride, carbon)
    assert 0 < sheet < 0.3 * carbon


def test_records_carry_the_support_and_bad_compositions_are_refused(tmp_path):
    from generators.run import generate
    from generators.subsets import query_summary

    cfg = cfg_with(**{"structure.substrate": {"kind": "graphene", "graphene_layers": {"integers": [1, 2]},
                                              "bank_size": 1}, "n_structures": 2})
    out = tmp_path / "g"
    generate(cfg, out, workers=0, progress=False, log=lambda *a: None)
    summary = query_summary(out, "substrate_kind == 'graphene' and substrate_composition == 'C'")
    assert summary["records"] == 4
    with pytest.raises(ConfigError, match="composition 'Xq3N4'.*unknown element"):
        cfg_with(**{"structure.substrate.composition": "Xq3N4"})
    with pytest.raises(ConfigError, match="no whole number of graphene cells"):
        from_dict(with_fields(tiny_dict(), **{"structure.substrate.kind": "graphene"}))  # a 32 Å field: 6 %
    with pytest.raises(ConfigError, match="graphene is carbon"):
        cfg_with(**{"structure.substrate": {"kind": "graphene", "composition": "SiO2"}})
