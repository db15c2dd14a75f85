"""Materials: the one czone builder places atoms where pymatgen has them for any lattice (every built-in crystal and
crystals from files or from space group + lattice + basis), crystals a config defines, planar defects only where
the lattice defines them, multiply twinned icosahedra and decahedra, core-shell particles, and bad crystals
refused in one line before anything is written."""
import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest
from scipy.spatial import cKDTree

from generators.config import ConfigError, Defects, from_dict
from generators.materials import (
    BUILT_IN,
    _analysis,
    czone_generator,
    pair_min_distances,
    structure_min_distances,
    symmetric_cell,
)
from generators.structures import build_core_shell, build_particle
from tests.conftest import tiny_dict, with_fields


def _particle_atoms(generator, radius_A):
    from czone.volume import Volume
    from czone.volume.algebraic import Sphere

    vol = Volume(alg_objects=[Sphere(radius=radius_A, center=np.zeros(3))], generator=generator)
    vol.populate_atoms()
    return np.asarray(vol.atoms, float), np.asarray(vol.species, int)


def _number_density(pos, radius_A, probe_A=5.0, n=400, seed=0):
    """Atoms per Å^3 averaged over many balls well inside the particle (one ball's count jitters with the lattice)."""
    rng = np.random.default_rng(seed)
    centre = pos.mean(axis=0)
    reach = radius_A - probe_A - 1.5
    pts = centre + rng.uniform(-1, 1, size=(4 * n, 3)) * reach
    pts = pts[np.linalg.norm(pts - centre, axis=1) < reach][:n]
    counts = [len(c) for c in cKDTree(pos).query_ball_point(pts, probe_A)]
    return np.mean(counts) / (4 / 3 * np.pi * probe_A**3)


def _assert_matches_pymatgen(pos, numbers, structure, radius_A):
    got, ref = pair_min_distances(pos, numbers), structure_min_distances(structure)
    assert set(got) == set(ref)
    for pair, d in ref.items():
        assert got[pair] == pytest.approx(d, abs=1e-6), f"pair {pair}: czone {got[pair]:.4f} Å, pymatgen {d:.4f} Å"
    assert _number_density(pos, radius_A) == pytest.approx(len(structure) / structure.volume, rel=0.04)


# ---------------------------------------------------------------- the builder
def test_symmetric_cell_is_the_same_crystal_rotated_with_a_symmetric_lattice_matrix():
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(3)
    for _ in range(20):
        abc, angles = rng.uniform(2.5, 9, 3), rng.uniform(65, 115, 3)
        L0 = Lattice.from_parameters(*abc, *angles).matrix
        for L in (L0, L0[[1, 0, 2]]):  # a right- and a left-handed cell
            s = Structure(Lattice(L), ["Ti", "O", "O"], [[0.1, 0.2, 0.3], [0.6, 0.45, 0.8], [0.9, 0.7, 0.05]])
            t = symmetric_cell(s)
            P = t.lattice.matrix
            assert np.array_equal(P, P.T) and np.linalg.det(P) > 0
            # P's rows are the lattice vectors each turned by one proper rotation U (a left-handed cell is first
            # written as the same lattice with all three vectors reversed)
            Lr = L if np.linalg.det(L) > 0 else -L
            U = np.linalg.solve(Lr, P).T
            assert np.allclose(U @ U.T, np.eye(3), atol=1e-9) and np.linalg.det(U) == pytest.approx(1.0)
            # and every atom sits where the rotation takes it, up to a lattice translation (no mirror image)
            shift = np.linalg.solve(P.T, (t.cart_coords - s.cart_coords @ U.T).T).T
            assert np.allclose(shift, np.round(shift), atol=1e-9)
            assert np.allclose(t.distance_matrix, s.distance_matrix, atol=1e-9)
    au = BUILT_IN["Au"].crystal.structure()
    assert symmetric_cell(au) is au, "a symmetric cell is left alone: built-in Au keeps its atoms bit for bit"


def test_czone_misplaces_atoms_of_a_non_symmetric_lattice_and_the_builder_does_not():
    from czone.generator import Generator
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.from_parameters(4.1, 5.3, 6.2, 78, 101, 113), ["Zn", "O"], [[0, 0, 0], [0.31, 0.52, 0.27]])
    ref = structure_min_distances(s)
    raw = pair_min_distances(*_particle_atoms(Generator(structure=s), 12.0))
    assert any(abs(raw[k] - ref[k]) > 0.05 for k in ref), "czone 2022.9.20 transposes the lattice matrix"
    pos, numbers = _particle_atoms(czone_generator(s), 12.0)
    _assert_matches_pymatgen(pos, numbers, s, 12.0)


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_every_built_in_crystal_matches_pymatgen_distances_and_density(name):
    mat = BUILT_IN[name]
    structure = mat.crystal.structure()
    r = 13.0 if structure.volume > 300 else 11.0  # several cells of the spinels' 8.4 Å cube
    pos, numbers, counts = build_particle(name, r, "none", 0, Defects(), seed=1)
    assert counts == {"n_twins": 0, "n_stacking_faults": 0}
    _assert_matches_pymatgen(pos, numbers, structure, r)
    assert {int(z) for z in numbers} == {el.Z for el in structure.composition.elements}
    # the composition comes out right too (within the particle's surface)
    frac = np.mean(numbers == max(numbers))
    ref = structure.composition.get_atomic_fraction(max(structure.composition.elements, key=lambda e: e.Z))
    assert frac == pytest.approx(ref, abs=0.06)
    # the declared lattice prototype (which decides defects and shapes without building the crystal) is right
    assert mat.prototype == _analysis(mat.crystal)[0]


def test_handbook_lattice_distances_of_the_new_crystals():
    """Nearest neighbours from ../shared/README.md's lattice constants, by hand: the registry holds those values."""
    want = {"Pd": 3.891 / 2**0.5, "Cu": 3.615 / 2**0.5, "Fe": 2.8665 * 3**0.5 / 2, "Si": 5.431 * 3**0.5 / 4,
            "C": 3.567 * 3**0.5 / 4, "CeO2": 5.411 * 3**0.5 / 4,
            # Ti-O: two apical, four equatorial bonds
            "TiO2_rutile": min(4.594 * 0.3048 * 2**0.5, (2 * ((0.5 - 0.3048) * 4.594)**2 + (2.959 / 2)**2)**0.5)}
    for name, d in want.items():
        assert BUILT_IN[name].nearest_neighbour_A == pytest.approx(d, rel=1e-3), name


# ---------------------------------------------------------------- a config's own crystals
def _wurtzite_zno():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(186, Lattice.hexagonal(3.25, 5.207), ["Zn", "O"],
                                     [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])


def _write_cif(structure, path, symprec=None):
    from pymatgen.io.cif import CifWriter

    CifWriter(structure, symprec=symprec).write_file(str(path))
    return path


def _cfg(tmp_path, materials, **over):
    d = tiny_dict(**{"imaging.image_size_px": 160, "structure.defects": {"type": "none"}, **over})
    d["materials"] = materials
    return from_dict(d, "test.yaml", base_dir=tmp_path)


def test_crystal_from_a_cif_file_builds_right_records_its_hash_and_rebuilds_without_the_file(tmp_path):
    from pymatgen.core import Lattice, Structure

    # a low-symmetry crystal (triclinic, two elements) and wurtzite ZnO, each written as a CIF by pymatgen
    tric = Structure(Lattice.from_parameters(4.3, 5.1, 6.0, 82, 97, 108), ["Cu", "O", "O"],
                     [[0, 0, 0], [0.3, 0.25, 0.1], [0.55, 0.7, 0.4]])
    _write_cif(tric, tmp_path / "tric.cif")
    _write_cif(_wurtzite_zno(), tmp_path / "zno.cif", symprec=0.01)
    cfg = _cfg(tmp_path, {"Tric": {"cif": "tric.cif"}, "ZnO": {"cif": "zno.cif", "defects": ["stacking_fault"]}},
               **{"structure.material": {"choice": ["Tric", "ZnO", "Au"]}})
    reg = cfg.material_registry()
    for name, path in [("Tric", "tric.cif"), ("ZnO", "zno.cif")]:
        spec = cfg.materials[name]
        assert spec.cif == path and spec.cif_sha256 == hashlib.sha256((tmp_path / path).read_bytes()).hexdigest()
        from_file = Structure.from_file(str(tmp_path / path))
        pos, numbers, _ = build_particle(reg[name], 11.0, "none", 0, Defects(), seed=4)
        _assert_matches_pymatgen(pos, numbers, reg[name].crystal.structure(), 11.0)
        # and the stored cell is the file's crystal (the conventional cell of it: same distances and density)
        for pair, d in structure_min_distances(from_file).items():
            assert pair_min_distances(pos, numbers)[pair] == pytest.approx(d, abs=0.02)
    assert reg["ZnO"].prototype == "wurtzite" and reg["ZnO"].defect_types == ("none", "stacking_fault")
    assert reg["Tric"].defect_types == ("none",) and not reg["Tric"].wulff_shapes
    # the parsed crystal is part of the config: its hash changes with the file, and a record rebuilds without it
    dumped = cfg.model_dump(mode="json")
    (tmp_path / "tric.cif").unlink()
    again = from_dict(json.loads(json.dumps(dumped)), "manifest")
    assert again.sha256() == cfg.sha256()
    a = build_particle(again.material_registry()["Tric"], 9.0, "none", 0, Defects(), seed=2)[0]
    b = build_particle(reg["Tric"], 9.0, "none", 0, Defects(), seed=2)[0]
    assert np.array_equal(a, b)
    _write_cif(tric, tmp_path / "tric.cif")
    before = _cfg(tmp_path, {"Tric": {"cif": "tric.cif"}}).sha256()
    _write_cif(tric.copy().scale_lattice(tric.volume * 1.1), tmp_path / "tric.cif")
    assert _cfg(tmp_path, {"Tric": {"cif": "tric.cif"}}).sha256() != before, "another crystal, another config hash"


def test_wurtzite_from_a_file_takes_stacking_faults_with_intact_bonds(tmp_path):
    _write_cif(_wurtzite_zno(), tmp_path / "zno.cif", symprec=0.01)
    cfg = _cfg(tmp_path, {"ZnO": {"cif": "zno.cif"}}, **{"structure.material": "ZnO",
                                                          "structure.defects": {"type": "stacking_fault"}})
    pos, numbers, counts = build_particle(cfg.material_registry()["ZnO"], 12.0, "stacking_fault", 2,
                                          cfg.structure.defects, seed=5)
    assert counts["n_stacking_faults"] >= 1
    zn, o = pos[numbers == 30], pos[numbers == 8]
    d, _ = cKDTree(o).query(zn)
    assert d.min() == pytest.approx(0.382 * 5.207, abs=0.05), "Zn-O bond length kept across the faults"
    dd, _ = cKDTree(zn).query(zn, k=2)
    assert dd[:, 1].min() > 0.95 * 3.25, "no Zn pair closer than the lattice allows"


def test_crystal_from_space_group_lattice_and_basis(tmp_path):
    # rock-salt MgO by Hermann-Mauguin symbol, and Ni by number (fcc: it takes twins and faceted shapes)
    cfg = _cfg(tmp_path, {
        "MgO": {"spacegroup": "Fm-3m", "lattice": {"a": 4.212},
                "basis": [{"element": "Mg", "frac": [0, 0, 0]}, {"element": "O", "frac": [0.5, 0.5, 0.5]}]},
        "Ni": {"spacegroup": 225, "lattice": {"a": 3.524}, "basis": [{"element": "Ni", "frac": [0, 0, 0]}]}},
        **{"structure.material": {"choice": ["MgO", "Ni"]}})
    reg = cfg.material_registry()
    assert reg["MgO"].nearest_neighbour_A == pytest.approx(4.212 / 2)
    assert reg["MgO"].defect_types == ("none",)
    assert reg["Ni"].prototype == "fcc" and "twin" in reg["Ni"].defect_types and "octahedron" in reg["Ni"].wulff_shapes
    pos, numbers, counts = build_particle(reg["Ni"], 11.0, "twin", 1, Defects(), seed=3)
    assert counts["n_twins"] == 1
    d, _ = cKDTree(pos).query(pos, k=2)
    assert np.median(d[:, 1]) == pytest.approx(3.524 / 2**0.5, rel=1e-3)
    # czone's Wulff construction works on it as on the built-in metals: {111} facets, vertices along <100>
    pos = build_particle(reg["Ni"], 11.0, "none", 0, Defects(), seed=0, shape="octahedron")[0]
    pos = pos - pos.mean(axis=0)
    n111 = np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]]) / np.sqrt(3)
    assert np.abs(pos).max() / np.abs(pos @ n111.T).max() == pytest.approx(np.sqrt(3), rel=0.08)


# ---------------------------------------------------------------- refusals
def _bad_materials(tmp_path):
    (tmp_path / "garbage.cif").write_text("data_nothing\n_cell_length_a 4.0\nloop_\n_foo_bar\n1\n")
    one = lambda el="Ti", **lat: {"spacegroup": 136, "lattice": {"a": 4.594, "c": 2.959, **lat},
                                   "basis": [{"element": el, "frac": [0, 0, 0]},
                                             {"element": "O", "frac": [0.3, 0.3, 0]}]}
    return {
        "unreadable CIF": ({"X": {"cif": "garbage.cif"}}, "garbage.cif holds no crystal"),
        "missing CIF": ({"X": {"cif": "nowhere.cif"}}, "nowhere.cif cannot be read"),
        "lattice against its space group": ({"X": {**one(), "spacegroup": 225}}, "cannot be built on the lattice"),
        "angles that make no cell": ({"X": {**one(), "spacegroup": 1, "lattice": {"a": 4, "alpha": 120, "beta": 120,
                                                                                  "gamma": 120}}}, "makes no cell"),
        "atoms on top of each other": ({"X": {**one(), "basis": [{"element": "Ti", "frac": [0, 0, 0]},
                                                                 {"element": "O", "frac": [0.01, 0, 0]}]}}, "apart"),
        "unknown element": ({"X": one(el="Tq")}, "unknown element 'Tq'"),
        "defect the lattice lacks": ({"X": {**one(), "defects": ["twin"]}}, "defects ['twin'] are not defined"),
        "facets the lattice lacks": ({"X": {**one(), "shapes": ["octahedron"]}}, "shapes ['octahedron'] are not"),
        "a built-in's name": ({"Au": one()}, "built-in material names"),
        "a file and a basis": ({"X": {**one(), "cif": "garbage.cif"}}, "either cif or spacegroup"),
    }


@pytest.mark.parametrize("case", [
    "unreadable CIF", "missing CIF", "lattice against its space group", "angles that make no cell",
    "atoms on top of each other", "unknown element", "defect the lattice lacks", "facets the lattice lacks",
    "a built-in's name", "a file and a basis"])
def test_bad_crystals_are_refused_in_one_line_and_nothing_is_written(case, tmp_path, capsys):
    import yaml

    from temsynth.cli import main

    materials, needle = _bad_materials(tmp_path)[case]
    d = tiny_dict(**{"structure.defects": {"type": "none"}, "n_structures": 1})
    d["materials"] = materials
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(d))
    out = tmp_path / "out"
    assert main(["generate", "--config", str(tmp_path / "bad.yaml"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("temsynth generate: invalid generation config"), err
    assert needle in err[1] and ("materials" in err[1]), err
    assert not out.exists()


@pytest.mark.parametrize("over, needle", [
    ({"structure.material": "TiO2_rutile", "structure.defects": {"type": "twin"}},
     "structure.defects.type ['twin'] is not available for material TiO2_rutile"),
    ({"structure.material": "Fe3O4", "structure.shape": "octahedron", "structure.radius_A": 6},
     "structure.shape ['octahedron'] is not available for material Fe3O4"),
    ({"structure.material": "Fe3O4", "structure.shape": "icosahedron", "structure.radius_A": 6},
     "structure.shape ['icosahedron'] is not available for material Fe3O4"),
    ({"structure.shape": "decahedron", "structure.defects": {"type": "none"}, "structure.radius_A": 6,
      "structure.core_shell": {"core_material": "Pt"}}, "structure.shape ['decahedron'] with structure.core_shell"),
    ({"structure.shape": "decahedron", "structure.radius_A": {"uniform": [3, 6]}},
     "structure.radius_A down to 3 Å: the smallest decahedron of Au ase builds needs 5.3 Å"),
    ({"structure.material": "Gold"}, "structure.material: unknown material(s) ['Gold']"),
    ({"structure.core_shell": {"core_material": "Unobtainium"}, "structure.defects": {"type": "none"}},
     "core_material: unknown material(s) ['Unobtainium']"),
])
def test_requests_a_material_cannot_meet_are_refused(over, needle):
    with pytest.raises(ConfigError) as err:
        from_dict(tiny_dict(**over))
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 2


def test_the_demo_configs_keep_their_hash():
    """A config without materials: or core_shell hashes as before they existed (records keep config_sha256)."""
    from generators.config import GenerationConfig

    cfg = from_dict(tiny_dict())
    data = cfg.model_dump(mode="json")
    assert data["materials"] == {} and data["structure"]["core_shell"] is None
    assert "materials" not in cfg.canonical_json() and "core_shell" not in cfg.canonical_json()
    assert GenerationConfig().sha256() == from_dict({}).sha256()


# ---------------------------------------------------------------- multiply twinned particles
def _symmetric_under(pos, rotation, tol_A=0.05):
    """Does `rotation` map every atom onto an atom?"""
    d, _ = cKDTree(pos).query(rotation.apply(pos))
    return bool(d.max() < tol_A)


@pytest.mark.parametrize("metal", ["Au", "Pt"])
def test_multiply_twinned_particles_are_five_fold_fcc_clusters_of_the_sphere_s_size(metal):
    from scipy.spatial.transform import Rotation

    mat = BUILT_IN[metal]
    nn = mat.nearest_neighbour_A
    r = 11.0
    want = 4 / 3 * np.pi * r**3 * mat.atoms_per_A3
    for shape, twins in [("icosahedron", 30), ("decahedron", 5)]:
        pos, numbers, counts = build_particle(metal, r, "twin", 2, Defects(), seed=0, shape=shape)
        assert counts == {"n_twins": twins, "n_stacking_faults": 0}, "intrinsic twins only, none added"
        assert set(numbers) == {BUILT_IN[metal].crystal.structure()[0].specie.Z}
        assert np.allclose(pos.mean(axis=0), 0, atol=1e-6)
        assert 0.75 < len(pos) / want < 1.33, (shape, len(pos), want)  # the nearest whole shell
        d, _ = cKDTree(pos).query(pos, k=2)
        # the metal's bond length, and the few per cent strain of closing five tetrahedra, no more
        assert np.median(d[:, 1]) == pytest.approx(nn, rel=0.01) and d[:, 1].min() > 0.94 * nn, shape
        if shape == "decahedron":
            axis = np.array([0.0, 0.0, 1.0])
        else:  # a vertex: the atom farthest out
            axis = pos[np.argmax(np.linalg.norm(pos, axis=1))]
            axis /= np.linalg.norm(axis)
        turn = lambda deg: Rotation.from_rotvec(np.radians(deg) * axis)
        assert _symmetric_under(pos, turn(72)) and _symmetric_under(pos, turn(144)), shape
        assert not _symmetric_under(pos, turn(90)) and not _symmetric_under(pos, turn(60)), shape


def test_multiply_twinned_reach_stays_inside_what_the_config_check_allows():
    from generators.config import SHAPE_REACH
    from generators.materials import build_multiply_twinned

    for shape in ("icosahedron", "decahedron"):
        reach = max(np.linalg.norm(build_multiply_twinned(BUILT_IN["Au"], shape, r)[0], axis=1).max() / r
                    for r in [*np.geomspace(6, 40, 30), 60.0, 80.0])
        assert 1.0 < reach <= SHAPE_REACH[shape], (shape, reach)


def test_multiply_twinned_scene_records_its_twins(tmp_path):
    from generators.structures import build_structure

    cfg = from_dict(tiny_dict(**{"structure.shape": {"choice": ["icosahedron", "decahedron"]}, "n_structures": 2,
                                 "structure.radius_A": {"uniform": [6, 9]}, "structure.n_particles": 1}))
    parts = [p for i in range(2) for p in build_structure(cfg, i).particles]
    assert parts and {p.shape for p in parts} <= {"icosahedron", "decahedron"}
    for p in parts:
        assert p.defect_type == "multiple_twins" and p.n_twins == {"icosahedron": 30, "decahedron": 5}[p.shape]
        assert p.bounding_radius_A <= 1.3 * p.radius_A


def test_decahedron_down_its_axis_images_ten_fold_111_fringes_and_is_recorded_and_masked():
    """Five {110}-viewed grains turned by 72° each: the {111} ring of the particle's image spectrum is ten-fold,
    which no single crystal gives (one grain's [110] pattern has two-fold spots: its 4-, 6- and 10-fold
    components are alike)."""
    from generators.query import select_table
    from generators.records import METADATA_COLUMNS
    from generators.run import simulate_structure

    cfg = from_dict(tiny_dict(**{
        "conditions_per_structure": 1, "imaging.image_size_px": 192, "imaging.pixel_size_A": 0.25,
        "structure.shape": "decahedron", "structure.radius_A": {"uniform": [13, 14]}, "structure.n_particles": 1,
        "structure.defects": {"type": "twin"}, "structure.orientation": {"mode": "zone_axis", "zone_axis": [0, 0, 1]},
        "imaging.defocus_nm": 0, "imaging.cs_mm": 0, "imaging.dose_e_per_A2": 5000}))
    images, masks, _, metas, _ = simulate_structure(cfg, 0)
    m = metas[0]
    assert m["particle_shape"] == ["decahedron"] and m["particle_n_twins"] == [5]
    assert m["particle_defect_type"] == ["multiple_twins"]
    r = m["particle_radius_A"][0]
    assert m["particle_area_px"][0] * 0.25**2 > 0.8 * np.pi * r**2  # the mask covers the projected particle
    img, inside = images[0].astype(float), masks[0] > 0
    power = np.abs(np.fft.fftshift(np.fft.fft2((img - img[inside].mean()) * inside)))**2
    k = np.fft.fftshift(np.fft.fftfreq(img.shape[0], 0.25))
    kx, ky = np.meshgrid(k, k)
    ring = np.abs(np.hypot(kx, ky) - 1 / 2.355) < 0.03
    theta, w = np.arctan2(ky, kx)[ring], power[ring]
    fold = {n: abs(np.sum(w * np.exp(1j * n * theta))) / w.sum() for n in (4, 6, 10)}
    assert fold[10] > 0.3 and fold[10] > 5 * max(fold[4], fold[6]), fold
    types = {c.name: c.arrow for c in METADATA_COLUMNS}
    table = pa.table({k: pa.array([m[k]], type=types[k]) for k in ("particle_shape", "particle_n_twins")})
    assert select_table(table, "any(particle_shape == 'decahedron') and any(particle_n_twins == 5)").num_rows == 1


# ---------------------------------------------------------------- core-shell particles
def test_core_shell_particle_is_a_core_crystal_inside_a_shell_crystal():
    r, rc = 12.0, 6.5
    pos, numbers, in_core = build_core_shell("Au", "Pt", r, rc, seed=3)
    centre = np.zeros(3)
    dist = np.linalg.norm(pos - centre, axis=1)
    assert set(numbers[in_core]) == {79} and set(numbers[~in_core]) == {78}
    assert dist[in_core].max() <= rc + 1e-9 and dist[~in_core].min() > rc - 1e-9
    assert dist.max() == pytest.approx(r, abs=1.5)
    # each part keeps its own lattice, and no shell atom crowds a core atom at the interface
    for z, a in [(79, 4.07825), (78, 3.924)]:
        part = pos[numbers == z]
        d, _ = cKDTree(part).query(part, k=2)
        assert np.median(d[:, 1]) == pytest.approx(a / 2**0.5, rel=1e-3)
    d, _ = cKDTree(pos[in_core]).query(pos[~in_core])
    assert d.min() >= 0.85 * 3.924 / 2**0.5 - 1e-9
    # the shell holds about its volume of Pt atoms
    n_shell = 4 / 3 * np.pi * (r**3 - rc**3) * 4 / 3.924**3
    assert (~in_core).sum() == pytest.approx(n_shell, rel=0.12)


def test_core_shell_scenes_are_recorded_per_particle_queryable_and_masked_whole():
    from generators.query import select_table
    from generators.records import METADATA_COLUMNS
    from generators.run import simulate_structure

    d = tiny_dict(**{"conditions_per_structure": 1, "imaging.image_size_px": 160, "imaging.pixel_size_A": 0.25,
                     "structure.material": "Pd", "structure.radius_A": {"uniform": [12, 14]},
                     "structure.defects": {"type": "none"},
                     "structure.core_shell": {"probability": 1.0, "core_material": "Au",
                                              "core_radius_fraction": {"uniform": [0.4, 0.5]}}})
    cfg = from_dict(d)
    images, masks, labels, metas, s = simulate_structure(cfg, 0)
    m = metas[0]
    assert m["particle_material"] == ["Pd"] and m["particle_core_material"] == ["Au"]
    rc, r = m["particle_core_radius_A"][0], m["particle_radius_A"][0]
    assert 0.4 * r <= rc <= 0.5 * r
    assert set(s.particle_numbers) == {79, 46}
    # the mask covers the whole particle, shell included: far more than the core's projected disc
    area_A2 = m["particle_area_px"][0] * cfg.imaging.pixel_size_A**2
    assert area_A2 > 0.8 * np.pi * r**2 > 3 * np.pi * rc**2
    types = {c.name: c.arrow for c in METADATA_COLUMNS}
    table = pa.table({k: pa.array([m[k]], type=types[k]) for k in ("particle_core_material", "particle_core_radius_A")})
    assert select_table(table, "any(particle_core_material == 'Au')").num_rows == 1
    assert select_table(table, "all(particle_core_radius_A == 0)").num_rows == 0
    # a config without core_shell draws no cores
    plain = simulate_structure(from_dict(with_fields(d, **{"structure.core_shell": None})), 0)[3][0]
    assert plain["particle_core_material"] == [""] and plain["particle_core_radius_A"] == [0.0]


# ---------------------------------------------------------------- listing
def test_materials_verb_lists_built_ins_and_the_configs_own(tmp_path, capsys):
    import yaml

    from temsynth.cli import main

    _write_cif(_wurtzite_zno(), tmp_path / "zno.cif", symprec=0.01)
    d = tiny_dict(**{"structure.material": "ZnO", "structure.defects": {"type": "none"}})
    d["materials"] = {"ZnO": {"cif": "zno.cif"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    assert main(["materials", "--config", str(tmp_path / "c.yaml"), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(BUILT_IN) | {"ZnO"} == set(rows)
    assert rows["Au"]["defects"] == ["none", "twin", "multiple_twins", "stacking_fault", "mixed"]
    assert {"octahedron", "icosahedron", "decahedron"} <= set(rows["Au"]["shapes"])
    assert rows["Fe3O4"]["shapes"] == ["sphere"]
    assert "icosahedron" not in rows["ZnO"]["shapes"]
    assert rows["ZnO"]["defects"] == ["none", "stacking_fault"] and "P6_3mc" in rows["ZnO"]["lattice"]
    assert rows["ZnO"]["source"].startswith("config") and rows["CdSe"]["source"] == "built-in"
    assert main(["materials"]) == 0
    text = capsys.readouterr().out
    assert "TiO2_rutile" in text and "P4_2/mnm" in text


def test_a_dataset_of_a_file_made_crystal_regenerates_bit_for_bit_without_the_file(tmp_path):
    from generators.run import generate, regenerate_records

    _write_cif(_wurtzite_zno(), tmp_path / "zno.cif", symprec=0.01)
    d = tiny_dict(**{"n_structures": 2, "conditions_per_structure": 1, "structure.material": "ZnO",
                     "structure.radius_A": {"uniform": [7, 9]}, "structure.defects": {"type": "stacking_fault"},
                     "structure.substrate": {"thickness_A": 10, "bank_size": 1}})
    d["materials"] = {"ZnO": {"cif": "zno.cif"}}
    cfg = from_dict(d, "zno.yaml", base_dir=tmp_path)
    out = tmp_path / "ds"
    generate(cfg, out, workers=0, progress=False, log=lambda *a: None)
    (tmp_path / "zno.cif").unlink()
    results = list(regenerate_records(out, None))
    assert len(results) == 2 and all(r["image_identical"] and r["mask_identical"] for r in results)
