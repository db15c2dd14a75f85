"""Material registry: how to build a crystal of each material with czone, and which planar defects it takes.

Adding a material = one `Material` entry: a czone generator factory and a defect builder per defect type.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Material:
    name: str
    make_generator: Callable[[], object]
    # defect type -> builder(generator, volume, n_defects, cfg) -> (czone volume, realised defect counts)
    defect_builders: dict[str, Callable] = field(default_factory=dict)
    nearest_neighbour_A: float = 0.0
    description: str = ""
    # Faceted shapes: name -> relative surface energies {(h, k, l): gamma} for czone's Wulff construction.
    wulff_shapes: dict[str, dict] = field(default_factory=dict)
    atoms_per_A3: float = 0.0  # number density, turns an equivalent radius into an atom count

    @property
    def defect_types(self) -> tuple[str, ...]:
        return tuple(self.defect_builders)

    def generator(self):
        """A fresh czone generator; the space-group expansion (about 1 s in pymatgen) is done once per process."""
        return copy.deepcopy(_template(self.name))


@functools.lru_cache(maxsize=None)
def _template(name: str):
    return MATERIALS[name].make_generator()


def _fcc_generator(Z: int, a_A: float):
    def make():
        from czone.generator import Generator

        return Generator.from_spacegroup(Z=[Z], coords=np.array([[0.0, 0.0, 0.0]]), cellDims=a_A * np.ones(3),
                                         cellAngs=[90, 90, 90], sgn=225)

    return make


def _cdse_generator():
    from czone.generator import Generator
    from pymatgen.core import Lattice, Structure

    # czone 2022.9.20 documents lattice vectors as rows but multiplies fractional coordinates as columns, which
    # is only right for a symmetric lattice matrix. Rotating the hexagonal cell by -15° about c makes
    # a1 = a(cos -15°, sin -15°) and a2 = a(cos 105°, sin 105°) a symmetric pair, so czone places atoms correctly.
    a, c, t = 4.30, 7.01, np.radians(-15)
    matrix = [[a * np.cos(t), a * np.sin(t), 0], [a * np.cos(t + 2 * np.pi / 3), a * np.sin(t + 2 * np.pi / 3), 0],
              [0, 0, c]]
    # Wurtzite P6_3mc; u = 0.375 puts Se a quarter of c above Cd along [0001].
    structure = Structure.from_spacegroup(186, Lattice(matrix), ["Cd", "Se"], [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, 0.375]])
    return Generator(structure=structure)


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
        flipped = np.sign(np.linalg.det(prev.generator.voxel.bases)) != np.sign(np.linalg.det(vol.generator.voxel.bases))
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


def _fcc_metal(name: str, Z: int, a_A: float, full_name: str) -> Material:
    return Material(
        name=name,
        make_generator=_fcc_generator(Z, a_A),
        defect_builders={
            "none": _no_defect,
            "twin": _fcc_prefab("twin"),
            "multiple_twins": _fcc_prefab("multiple_twins"),
            "stacking_fault": _fcc_prefab("stacking_fault"),
            "mixed": _fcc_prefab("mixed"),
        },
        nearest_neighbour_A=a_A / np.sqrt(2),
        description=f"fcc {full_name}, a = {a_A} Å (Fm-3m)",
        wulff_shapes=FCC_WULFF,
        atoms_per_A3=4 / a_A**3,
    )


MATERIALS: dict[str, Material] = {
    "Au": _fcc_metal("Au", 79, 4.07825, "gold"),
    "Ag": _fcc_metal("Ag", 47, 4.086, "silver"),
    "Pt": _fcc_metal("Pt", 78, 3.924, "platinum"),
    "CdSe": Material(
        name="CdSe",
        make_generator=_cdse_generator,
        defect_builders={"none": _no_defect, "stacking_fault": _wurtzite_sf},
        nearest_neighbour_A=2.63,
        description="wurtzite CdSe, a = 4.30 Å, c = 7.01 Å (P6_3mc)",
        atoms_per_A3=4 / (np.sqrt(3) / 2 * 4.30**2 * 7.01),
    ),
}
