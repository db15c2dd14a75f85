"""Materials: a crystal is a pymatgen Structure (built in, from space group + lattice + basis, or read from a crystal
file), built into a czone generator by one builder that places atoms correctly for any lattice; the lattice decides
which planar defects (fcc twins and stacking faults, wurtzite stacking faults) and faceted shapes it takes, and
one-element fcc crystals also take multiply twinned icosahedra and decahedra.

Adding a built-in material = one `Material` entry in `BUILT_IN` with its `Crystal`.

Over 400 lines: the built-in crystals are data, and the one builder with its defect and facet rules reads best
beside the crystals it builds.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np

from .errors import TemsynthError


class MaterialError(TemsynthError, ValueError):
    """A crystal that cannot be built; the message names what is wrong and the fix."""


# ---------------------------------------------------------------- the crystal
@dataclass(frozen=True)
class Crystal:
    """Space group + lattice parameters + asymmetric basis: everything needed to rebuild the structure."""
    spacegroup: int | str
    abc: tuple[float, float, float]
    angles_deg: tuple[float, float, float]
    sites: tuple[tuple[str, tuple[float, float, float]], ...]  # (element, fractional coordinates)

    def structure(self):
        return _structure(self)


@functools.lru_cache(maxsize=None)
def _structure(crystal: Crystal):
    """The full unit cell (the space-group expansion takes pymatgen ~1 s the first time: done once per process)."""
    from pymatgen.core import Element, Lattice, Structure
    from pymatgen.symmetry.groups import SpaceGroup

    for element, _ in crystal.sites:
        if not Element.is_valid_symbol(element):
            raise MaterialError(f"unknown element {element!r}: give a chemical symbol such as Au, Ti or O")
    a, b, c = crystal.abc
    alpha, beta, gamma = crystal.angles_deg
    text = f"a={a:g} b={b:g} c={c:g} Å, angles {alpha:g}/{beta:g}/{gamma:g}°"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lattice = Lattice.from_parameters(a, b, c, alpha, beta, gamma)
    if not (np.all(np.isfinite(lattice.matrix)) and lattice.volume > 1e-3 * a * b * c):
        raise MaterialError(f"lattice {text} makes no cell (its volume is zero or undefined): each angle must be "
                            "less than the sum of the other two and their sum below 360°")
    try:
        spg = _space_group(crystal.spacegroup)
        with mock.patch.object(SpaceGroup, "from_int_number", lambda number: spg):
            structure = Structure.from_spacegroup(spg.int_number, lattice, [e for e, _ in crystal.sites],
                                                  [list(f) for _, f in crystal.sites])
    except ValueError as err:
        raise MaterialError(f"space group {crystal.spacegroup} cannot be built on the lattice {text} "
                            f"({' '.join(str(err).split())}): give lattice parameters of that crystal system "
                            "or another space group") from None
    if len(structure) > 1:
        d = structure.distance_matrix + np.diag(np.full(len(structure), np.inf))
        if d.min() < 0.5:
            raise MaterialError(f"after the space group's operations two atoms of the basis lie {d.min():.2f} Å "
                                f"apart on the lattice {text}: check the fractional coordinates (a site on a "
                                "special position is given once)")
    return structure


@functools.lru_cache(maxsize=None)
def _space_group(sg: int | str):
    """pymatgen's SpaceGroup, built once per process: its constructor closes the group under multiplication with
    allclose comparisons (2.4 s for Fm-3m) and, called by number, builds it anew each time."""
    from pymatgen.symmetry.groups import SpaceGroup

    try:
        try:
            return SpaceGroup.from_int_number(int(sg))
        except ValueError:
            if isinstance(sg, int) or str(sg).strip().lstrip("-").isdigit():
                raise
            return SpaceGroup(str(sg))
    except Exception as err:
        raise MaterialError(f"unknown space group {sg!r} ({err}): give its number (1-230) or Hermann-Mauguin "
                            "symbol, e.g. 225 or Fm-3m") from None


def crystal_from_structure(structure, spacegroup: int | str = 1) -> Crystal:
    """A `Crystal` that rebuilds `structure` exactly (all sites as a P1 basis unless told otherwise)."""
    lat = structure.lattice
    return Crystal(spacegroup=spacegroup, abc=tuple(float(x) for x in lat.abc),
                   angles_deg=tuple(float(x) for x in lat.angles),
                   sites=tuple((site.specie.symbol, tuple(float(x) for x in site.frac_coords)) for site in structure))


# ---------------------------------------------------------------- the one builder
# czone 2022.9.20 documents lattice vectors as rows of its bases but multiplies fractional coordinates as columns
# (Generator.supply_atoms: sbases @ n), so it builds the crystal of the transposed lattice matrix. That is the same
# crystal only when the matrix is symmetric. Any lattice can be made so by a rotation: with the left polar
# decomposition L = P U (P = sqrt(L L^T) symmetric positive definite, U a rotation when det L > 0), the rows of
# L U^T = P are the lattice vectors each rotated by U. P has the same metric L L^T, hence the same crystal.
SYMMETRIC_TOLERANCE_A = 1e-9


def symmetric_cell(structure):
    """`structure` rotated so that its lattice matrix is symmetric (unchanged when it already is, to within
    SYMMETRIC_TOLERANCE_A: czone's transposition then moves no atom measurably, and the built-in fcc metals keep
    the atom positions they always had, bit for bit)."""
    from pymatgen.core import Lattice, Structure
    from scipy.linalg import polar

    L = np.asarray(structure.lattice.matrix, float)
    if np.abs(L - L.T).max() <= SYMMETRIC_TOLERANCE_A:
        return structure
    frac = np.asarray(structure.frac_coords, float)
    if np.linalg.det(L) < 0:
        # A left-handed cell: -L with -frac places every atom where it was and is right-handed, so U is a rotation.
        L, frac = -L, np.mod(-frac, 1.0)
    _, P = polar(L, side="left")
    P = (P + P.T) / 2  # exactly symmetric, not to within rounding
    return Structure(Lattice(P), structure.species, frac)


def czone_generator(structure):
    """A czone Generator that places every atom where `structure` has it, for any lattice."""
    from czone.generator import Generator

    try:
        return Generator(structure=symmetric_cell(structure))
    except (AssertionError, ValueError, TypeError) as err:
        raise MaterialError(f"czone cannot build a generator for this lattice ({err}): check the lattice "
                            "parameters") from None


@functools.lru_cache(maxsize=None)
def _template(crystal: Crystal):
    return czone_generator(crystal.structure())


# ---------------------------------------------------------------- lattices that define defects and shapes
def _no_defect(generator, volume, n, defects_cfg):
    return volume, {"n_twins": 0, "n_stacking_faults": 0}


def _fcc_prefab(kind: str):
    """czone's fcc prefabs; `kind` fixes the mix, the realised mix is read back from czone."""

    def build(generator, volume, n, defects_cfg):
        from czone.prefab import fccMixedTwinSF, fccStackingFault, fccTwin

        if kind == "twin":
            prefab, n = fccTwin(generator=generator, volume=volume, N=1), 1
        elif kind == "multiple_twins":
            prefab = fccTwin(generator=generator, volume=volume, N=max(n, 2))
        elif kind == "stacking_fault":
            prefab = fccStackingFault(generator=generator, volume=volume, N=max(n, 1))
        else:
            prefab = fccMixedTwinSF(generator=generator, volume=volume, N=n, ratio=defects_cfg.stacking_fault_ratio)
        prefab.min_sep = defects_cfg.min_separation_planes
        obj, types = prefab.build_object(return_defect_types=True)
        return obj, _count_fcc_defects(obj, prefab.N)

    return build


def _count_fcc_defects(multivolume, n: int) -> dict:
    """czone keeps no list of its transforms; read them back from the grains' lattices instead: a twin is a
    reflection (the basis flips handedness), a stacking fault a translation (same basis, shifted origin)."""
    twins = faults = 0
    vols = getattr(multivolume, "volumes", [])
    for prev, vol in zip(vols[:-1], vols[1:]):
        handedness = [np.sign(np.linalg.det(v.generator.voxel.bases)) for v in (prev, vol)]
        flipped = handedness[0] != handedness[1]
        twins += bool(flipped)
        faults += not flipped
    return {"n_twins": twins, "n_stacking_faults": faults}


def _wurtzite_sf(generator, volume, n, defects_cfg):
    from czone.prefab import wurtziteStackingFault

    prefab = wurtziteStackingFault(generator=generator, volume=volume, N=max(n, 1),
                                   min_sep=max(defects_cfg.min_separation_planes, 2))
    obj = prefab.build_object()
    return obj, {"n_twins": 0, "n_stacking_faults": prefab.N}


# fcc Wulff shapes (relative surface energies): {111} lowest for the noble metals; the mix sets the facets.
FCC_WULFF = {
    "octahedron": {(1, 1, 1): 1.0},
    "cuboctahedron": {(1, 0, 0): 1.0, (1, 1, 1): 1.15},
    "truncated_octahedron": {(1, 1, 1): 1.0, (1, 0, 0): 1.1, (1, 1, 0): 1.15},
}

# ---------------------------------------------------------------- multiply twinned particles
# Below a few nanometres fcc metal particles are mostly multiply twinned, not single crystals: icosahedra (20
# tetrahedra, 30 twin boundaries) and decahedra (5 tetrahedra about a five-fold axis, 5 twin boundaries), their
# strain relieved by the surface energy they save (Marks & Peng, J. Phys.: Condens. Matter 28, 053001 (2016)).
# ase.cluster builds both shell by shell from the fcc lattice constant; the size steps are whole shells, so the
# atom count nearest the sphere's is taken. Their twins are intrinsic: no planar defects are added to them.
MTP_TWINS = {"icosahedron": 30, "decahedron": 5}


def _mtp_step(shape: str, p: int) -> list[tuple]:
    """The (size arguments) of the icosahedra / Marks decahedra ase builds at one step of growth p: the icosahedron
    of p shells; decahedra (ase's p, q, r: {100} facets p atoms across and q along the five-fold axis, re-entrant
    notches r deep) with q within one of p and r a quarter to a half of p, about as tall as wide and, between
    them, close enough in atom count to match a sphere's to ~15 %."""
    if shape == "icosahedron":
        return [(p,)]
    rs = sorted({max(1, round(p / 4)), max(1, round(p / 3)), max(1, round(p / 2))})
    return [(p, q, r) for q in (p - 1, p, p + 1) for r in rs]


def _mtp_steps_near(shape: str, n_atoms: float) -> range:
    """The steps whose sizes bracket n_atoms: doubling, then bisection, on each step's first size (counts grow as
    p^3, so no size much beyond n_atoms is built)."""
    first = lambda p: _mtp_unit(shape, _mtp_step(shape, p)[0])[0]
    lo, hi = 2, 4
    while first(hi) < n_atoms:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if first(mid) < n_atoms else (lo, mid)
    return range(max(2, lo - 1), hi + 2)


def _mtp_atoms(shape: str, element: str, size: tuple, lattice_constant_A: float):
    """ase's icosahedron or Marks decahedron of one size (ase.Atoms)."""
    from ase.cluster import Decahedron, Icosahedron

    build = Icosahedron if shape == "icosahedron" else Decahedron
    return build(element, *size, latticeconstant=lattice_constant_A)


@functools.lru_cache(maxsize=None)
def _mtp_unit(shape: str, size: tuple) -> tuple[int, float]:
    """Atom count and farthest atom from the centre, in nearest-neighbour distances, of one built size."""
    atoms = _mtp_atoms(shape, "Au", size, 2**0.5)
    return len(atoms), float(np.linalg.norm(atoms.positions - atoms.positions.mean(axis=0), axis=1).max())


def smallest_multiply_twinned_radius_A(material: "Material", shape: str) -> float:
    """The least radius_A whose reach holds the smallest icosahedron (13 atoms) or decahedron ase builds."""
    from .config_sections import SHAPE_REACH

    least = min(_mtp_unit(shape, size)[1] for p in (2, 3) for size in _mtp_step(shape, p))
    return least * material.nearest_neighbour_A / SHAPE_REACH[shape]


def build_multiply_twinned(material: "Material", shape: str, radius_A: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Atoms (centred at the origin, five-fold axis along z for a decahedron), atomic numbers and the intrinsic
    twin count of an icosahedron or Marks decahedron: of the sizes that stay within SHAPE_REACH of `radius_A`
    (what the config check and the placement count on), the one whose atom count is nearest a sphere's."""
    from .config_sections import SHAPE_REACH

    if shape not in material.multiply_twinned_shapes:
        raise MaterialError(f"shape {shape!r} is built for one-element fcc crystals; {material.name} takes "
                            f"{list(material.shapes)}")
    least = smallest_multiply_twinned_radius_A(material, shape)
    if radius_A < least:
        raise MaterialError(f"a {shape} of {material.name} needs a radius_A of at least {least:.1f} Å, "
                            f"got {radius_A:.2f}")
    element, a = material.elements[0], float(material.crystal.abc[0])
    target = 4 / 3 * math.pi * radius_A**3 * material.atoms_per_A3
    limit = SHAPE_REACH[shape] * radius_A / material.nearest_neighbour_A
    fits = [(abs(math.log(n / target)), size) for p in _mtp_steps_near(shape, target)
            for size in _mtp_step(shape, p) for n, reach in [_mtp_unit(shape, size)] if reach <= limit]
    size = min(fits)[1]
    atoms = _mtp_atoms(shape, element, size, a)
    pos = atoms.positions - atoms.positions.mean(axis=0)
    return pos, atoms.numbers.astype(int), {"n_twins": MTP_TWINS[shape], "n_stacking_faults": 0}


FCC_DEFECTS = {"none": _no_defect, "twin": _fcc_prefab("twin"), "multiple_twins": _fcc_prefab("multiple_twins"),
               "stacking_fault": _fcc_prefab("stacking_fault"), "mixed": _fcc_prefab("mixed")}
# What each lattice defines; any other lattice takes `none` and spheres only.
PROTOTYPES: dict[str, tuple[dict[str, Callable], dict[str, dict]]] = {
    "fcc": (FCC_DEFECTS, FCC_WULFF),
    "wurtzite": ({"none": _no_defect, "stacking_fault": _wurtzite_sf}, {}),
}
# Shapes built atom by atom rather than cut from one crystal, per lattice.
MULTIPLY_TWINNED = {"fcc": tuple(MTP_TWINS)}


@functools.lru_cache(maxsize=None)
def _analysis(crystal: Crystal) -> tuple[str | None, str, int]:
    """(prototype, space-group symbol, number) of a crystal: what decides its defects and shapes.

    czone's fcc prefabs cut {111} planes of a cubic cell and its wurtzite prefab (0002) planes with c along the
    third lattice vector: a structure is called fcc or wurtzite only in those settings."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    s = crystal.structure()
    try:
        sga = SpacegroupAnalyzer(s, symprec=0.01)
        number, symbol = sga.get_space_group_number(), sga.get_space_group_symbol()
    except Exception:  # spglib finds no symmetry: treat as P1
        number, symbol = 1, "P1"
    n_el = len(s.composition.elements)
    a, b, c = s.lattice.abc
    angles = s.lattice.angles
    if number == 225 and n_el == 1 and len(s) == 4 and np.allclose(angles, 90) and np.allclose([b, c], a):
        return "fcc", symbol, number
    if number == 186 and n_el == 2 and len(s) == 4 and np.allclose(angles, (90, 90, 120)):
        return "wurtzite", symbol, number
    return None, symbol, number


# ---------------------------------------------------------------- materials
@dataclass(frozen=True)
class Material:
    name: str
    crystal: Crystal
    description: str = ""
    source: str = "built-in"  # built-in, config, or the crystal file it was read from
    # Restrictions a config may set: None takes everything the lattice defines.
    allowed_defects: tuple[str, ...] | None = None
    allowed_shapes: tuple[str, ...] | None = None
    # The lattice's prototype (fcc, wurtzite, other), declared by a built-in so that checking a config needs no
    # crystal built; "auto": found by symmetry analysis (a config's own crystals; a test checks the declarations).
    kind: str = "auto"

    @property
    def prototype(self) -> str | None:
        if self.kind != "auto":
            return None if self.kind == "other" else self.kind
        return _analysis(self.crystal)[0]

    @property
    def spacegroup_symbol(self) -> str:
        return _analysis(self.crystal)[1]

    @property
    def defect_builders(self) -> dict[str, Callable]:
        builders = PROTOTYPES.get(self.prototype, ({"none": _no_defect}, {}))[0]
        keep = self.allowed_defects
        return {k: v for k, v in builders.items() if keep is None or k == "none" or k in keep}

    @property
    def defect_types(self) -> tuple[str, ...]:
        return tuple(self.defect_builders)

    @property
    def wulff_shapes(self) -> dict[str, dict]:
        shapes = PROTOTYPES.get(self.prototype, ({}, {}))[1]
        return {k: v for k, v in shapes.items() if self.allowed_shapes is None or k in self.allowed_shapes}

    @property
    def multiply_twinned_shapes(self) -> tuple[str, ...]:
        shapes = MULTIPLY_TWINNED.get(self.prototype, ()) if len(self.elements) == 1 else ()
        return tuple(k for k in shapes if self.allowed_shapes is None or k in self.allowed_shapes)

    @property
    def shapes(self) -> tuple[str, ...]:
        """Every shape a particle of this crystal can take."""
        return ("sphere", *self.wulff_shapes, *self.multiply_twinned_shapes)

    @property
    def atoms_per_A3(self) -> float:
        """Number density: turns an equivalent radius into an atom count."""
        s = self.crystal.structure()
        return len(s) / s.volume

    @property
    def nearest_neighbour_A(self) -> float:
        return _nearest_neighbour(self.crystal)

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(sorted({e for e, _ in self.crystal.sites}))

    def lattice_text(self) -> str:
        s = self.crystal.structure()
        (a, b, c), (al, be, ga) = s.lattice.abc, s.lattice.angles
        return (f"{self.spacegroup_symbol} a={a:.4f} b={b:.4f} c={c:.4f} Å  α={al:.2f} β={be:.2f} γ={ga:.2f}°  "
                f"{len(s)} atoms/cell {s.composition.reduced_formula}")

    def generator(self):
        """A fresh czone generator (the template is built once per process and crystal)."""
        return copy.deepcopy(_template(self.crystal))


@functools.lru_cache(maxsize=None)
def _nearest_neighbour(crystal: Crystal) -> float:
    s = crystal.structure()
    return float(min(min(n.nn_distance for n in s.get_neighbors(site, 6.0)) for site in s))


def _cubic(sg: int, a: float, *sites) -> Crystal:
    return Crystal(sg, (a, a, a), (90.0, 90.0, 90.0), tuple(sites))


def _hexagonal(sg: int, a: float, c: float, *sites) -> Crystal:
    return Crystal(sg, (a, a, c), (90.0, 90.0, 120.0), tuple(sites))


def _tetragonal(sg: int, a: float, c: float, *sites) -> Crystal:
    return Crystal(sg, (a, a, c), (90.0, 90.0, 90.0), tuple(sites))


def _fcc(symbol: str, a: float, full: str) -> Material:
    return Material(symbol, _cubic(225, a, (symbol, (0.0, 0.0, 0.0))), f"fcc {full}, a = {a} Å", kind="fcc")


def _wurtzite(name: str, cation: str, anion: str, a: float, c: float, u: float = 0.375) -> Material:
    # P6_3mc with the ideal u = 3/8: the anion 3/8 of c above the cation along [0001].
    return Material(name, _hexagonal(186, a, c, (cation, (1 / 3, 2 / 3, 0.0)), (anion, (1 / 3, 2 / 3, u))),
                    f"wurtzite {name}, a = {a} Å, c = {c} Å", kind="wurtzite")


def _spinel(name: str, metal: str, a: float, u: float) -> Material:
    # Fd-3m in pymatgen's setting, origin choice 1 (diamond's 8a at 0, 0, 0): tetrahedral 8a, octahedral 16d at
    # (5/8, 5/8, 5/8), oxygen 32e at (u, u, u), u = 1/8 + the origin-choice-2 value.
    return Material(name, _cubic(227, a, (metal, (0.0, 0.0, 0.0)), (metal, (0.625, 0.625, 0.625)),
                                 ("O", (u, u, u))), f"spinel {name}, a = {a} Å, u = {u}", kind="other")


# Lattice constants: room temperature handbook values (../shared/README.md "Physics reference").
BUILT_IN: dict[str, Material] = {m.name: m for m in [
    _fcc("Au", 4.07825, "gold"),
    _fcc("Ag", 4.086, "silver"),
    _fcc("Pt", 3.924, "platinum"),
    _fcc("Pd", 3.891, "palladium"),
    _fcc("Cu", 3.615, "copper"),
    Material("Fe", _cubic(229, 2.8665, ("Fe", (0.0, 0.0, 0.0))), "bcc iron, a = 2.8665 Å", kind="other"),
    Material("Si", _cubic(227, 5.431, ("Si", (0.0, 0.0, 0.0))), "diamond-cubic silicon, a = 5.431 Å", kind="other"),
    Material("C", _cubic(227, 3.567, ("C", (0.0, 0.0, 0.0))), "diamond, a = 3.567 Å", kind="other"),
    _wurtzite("CdSe", "Cd", "Se", 4.30, 7.01),
    _wurtzite("ZnS", "Zn", "S", 3.823, 6.261),
    Material("CeO2", _cubic(225, 5.411, ("Ce", (0.0, 0.0, 0.0)), ("O", (0.25, 0.25, 0.25))),
             "fluorite CeO2, a = 5.411 Å", kind="other"),
    _spinel("Fe3O4", "Fe", 8.396, 0.3799),
    _spinel("Co3O4", "Co", 8.084, 0.3882),
    Material("TiO2_rutile", _tetragonal(136, 4.594, 2.959, ("Ti", (0.0, 0.0, 0.0)), ("O", (0.3048, 0.3048, 0.0))),
             "rutile TiO2, a = 4.594 Å, c = 2.959 Å, u = 0.3048", kind="other"),
    Material("TiO2_anatase", _tetragonal(141, 3.785, 9.514, ("Ti", (0.0, 0.0, 0.0)), ("O", (0.0, 0.0, 0.2081))),
             "anatase TiO2, a = 3.785 Å, c = 9.514 Å, z(O) = 0.2081", kind="other"),
]}
# Kept under its old name: the built-in registry.
MATERIALS = BUILT_IN


# ---------------------------------------------------------------- crystal files
def read_crystal_file(path: Path) -> tuple[Crystal, str]:
    """The crystal in a CIF (or any file pymatgen reads) in its conventional standard cell, and the file's sha256.

    The conventional cell is what zone axes are indexed in, and the setting czone's defect prefabs expect."""
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MaterialError(f"crystal file {path} cannot be read ({err.strerror}): check the path (relative "
                            "paths are taken from the config file's folder)") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_file(str(path))
    except Exception as err:  # pymatgen raises many types for malformed files
        raise MaterialError(f"crystal file {path} holds no crystal pymatgen can read "
                            f"({' '.join(str(err).split())[:160] or type(err).__name__}): give a CIF with its "
                            "cell (_cell_length_*, _cell_angle_*) and atom sites") from None
    if not structure.is_ordered:
        raise MaterialError(f"crystal file {path} has partially occupied sites; czone places whole atoms: give an "
                            "ordered structure (one element per site, occupancy 1)")
    try:
        structure = SpacegroupAnalyzer(structure, symprec=0.01).get_conventional_standard_structure()
    except Exception:  # no symmetry found: keep the file's own cell
        pass
    return crystal_from_structure(structure), hashlib.sha256(data).hexdigest()


def check_crystal(crystal: Crystal) -> None:
    """Build the structure and its czone generator once, so that a crystal that cannot be built is refused at
    config validation (a MaterialError naming the problem), before anything is written."""
    structure = crystal.structure()
    if len(structure) > 5000:
        raise MaterialError(f"a unit cell of {len(structure)} atoms is more than a nanoparticle builder needs: "
                            "give the conventional cell of the crystal")
    _template(crystal)
    _analysis(crystal)


def pair_min_distances(positions: np.ndarray, numbers: np.ndarray) -> dict[tuple[int, int], float]:
    """Shortest distance between atoms of each pair of atomic numbers (Z1 <= Z2) in a finite cluster."""
    from scipy.spatial import cKDTree

    out = {}
    zs = sorted(set(int(z) for z in numbers))
    for i, z1 in enumerate(zs):
        a = positions[numbers == z1]
        tree = cKDTree(a)
        for z2 in zs[i:]:
            b = positions[numbers == z2]
            d, _ = tree.query(b, k=2 if z1 == z2 else 1)
            d = d[:, 1] if z1 == z2 else d
            d = d[np.isfinite(d)]
            if len(d):
                out[(z1, z2)] = float(d.min())
    return out


def structure_min_distances(structure, cutoff_A: float = 6.0) -> dict[tuple[int, int], float]:
    """pymatgen's own shortest distance for each pair of atomic numbers of a periodic structure."""
    out: dict[tuple[int, int], float] = {}
    for site in structure:
        for n in structure.get_neighbors(site, cutoff_A):
            key = tuple(sorted((site.specie.Z, n.specie.Z)))
            out[key] = min(out.get(key, math.inf), float(n.nn_distance))
    return out
