"""Cost of a scene against its number of particles: seconds per structure (structure, exit waves, images, masks)
for 0, 1, 2, 4 and 8 particles of one size on the same grid, in one process, each the median of a few scenes.

    python benchmarks/bench_scenes.py [--radius-A 10] [--repeats 3]

Reported: seconds per scene and the extra cost per particle relative to one particle; "linear or better" holds
when t(n) - t(0) <= n (t(1) - t(0)) within noise, i.e. placing and simulating particles adds no cost that grows
faster than their number (the multislice and the carbon cost the same whatever the count).

    python benchmarks/bench_scenes.py --materials [--radius-A 10] [--repeats 3]

Compares instead the cost per atom of scenes of the built-in Au with scenes of crystals read from CIF files written
here by pymatgen (the same Au, and wurtzite ZnO), 4 particles each, spheres without defects, in one process:
seconds per scene over atoms per scene (whole scene: structure, exit waves, images, masks), and the structure
alone (czone's particles and the carbon cut) over particle atoms, each the median over scenes measured
interleaved. A ratio <= 1 means the file-made crystal costs no more per atom than built-in Au.

    python benchmarks/bench_scenes.py --supports [--radius-A 10] [--repeats 3]

The same for supports: built-in Au on 20 Å of amorphous carbon against 20 Å of amorphous Si3N4 and SiO2 and
bilayer graphene (whole scene per atom; structure = the particles and the support cut, per atom of the scene).

    python benchmarks/bench_scenes.py --shapes [--radius-A 10] [--repeats 3]

The same for shapes: Au spheres against cuboctahedra (czone's Wulff construction) and the multiply twinned
icosahedra and decahedra (ase.cluster), 4 particles each, no planar defects, per particle atom as --materials.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def config(n: int, radius_A: float, repeats: int):
    from generators.config import from_dict

    return from_dict({
        "name": f"scene{n}", "seed": 5, "n_structures": repeats, "conditions_per_structure": 4,
        "structure": {"n_particles": n, "radius_A": radius_A, "allow_border_cuts": True,
                      "defects": {"type": {"choice": ["none", "twin"]}},
                      "substrate": {"thickness_A": 20, "bank_size": 1}},
        "simulation": {"sampling_A": 0.2},
        "imaging": {"image_size_px": 256, "pixel_size_A": 0.4, "detector": {"type": "scintillator"}},
    })


def material_config(material: str, materials: dict, radius_A: float, repeats: int, base_dir):
    from generators.config import from_dict

    return from_dict({
        "name": f"mat_{material}", "seed": 5, "n_structures": repeats, "conditions_per_structure": 4,
        "materials": materials,
        "structure": {"n_particles": 4, "radius_A": radius_A, "allow_border_cuts": True, "material": material,
                      "substrate": {"thickness_A": 20, "bank_size": 1}},
        "simulation": {"sampling_A": 0.2},
        "imaging": {"image_size_px": 256, "pixel_size_A": 0.4, "detector": {"type": "scintillator"}},
    }, "bench", base_dir=base_dir)


def compare_materials(radius_A: float, repeats: int) -> dict:
    import tempfile

    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    from generators.run import simulate_structure

    tmp = Path(tempfile.mkdtemp(prefix="bench_materials_"))
    CifWriter(Structure.from_spacegroup(225, Lattice.cubic(4.07825), ["Au"], [[0, 0, 0]]), symprec=0.01).write_file(
        str(tmp / "au.cif"))
    CifWriter(Structure.from_spacegroup(186, Lattice.hexagonal(3.25, 5.207), ["Zn", "O"],
                                        [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]), symprec=0.01).write_file(
        str(tmp / "zno.cif"))
    materials = {"Au_file": {"cif": "au.cif"}, "ZnO_file": {"cif": "zno.cif"}}
    simulate_structure(material_config("Au", {}, radius_A, 1, tmp), 0)  # warm-up: FFT plans, carbon, imports
    names = ("Au", "Au_file", "ZnO_file")
    cfgs = {n: material_config(n, materials if n != "Au" else {}, radius_A, repeats, tmp) for n in names}
    return {"radius_A": radius_A, "repeats": repeats, **interleaved(cfgs, repeats, per="particle")}


def support_config(substrate: dict, radius_A: float, repeats: int):
    from generators.config import from_dict

    return from_dict({
        "name": "support", "seed": 5, "n_structures": repeats, "conditions_per_structure": 4,
        "structure": {"n_particles": 4, "radius_A": radius_A, "allow_border_cuts": True,
                      "substrate": {"bank_size": 1, **substrate}},
        "simulation": {"sampling_A": 0.2},
        # 102.4 Å: 41.6 x 24.0 graphene cells, strained 0.9 % to tile the field
        "imaging": {"image_size_px": 256, "pixel_size_A": 0.4, "detector": {"type": "scintillator"}},
    })


def compare_supports(radius_A: float, repeats: int) -> dict:
    from generators.run import simulate_structure

    supports = {"carbon": {"thickness_A": 20}, "Si3N4": {"thickness_A": 20, "composition": "Si3N4",
                                                         "density_g_per_cm3": 3.0, "min_dist_A": 1.6},
                "SiO2": {"thickness_A": 20, "composition": "SiO2", "density_g_per_cm3": 2.2, "min_dist_A": 1.5},
                "graphene": {"kind": "graphene", "graphene_layers": 2}}
    cfgs = {n: support_config(sub, radius_A, repeats) for n, sub in supports.items()}
    simulate_structure(cfgs["carbon"], 0)  # warm-up: FFT plans, imports
    return {"radius_A": radius_A, "repeats": repeats, **interleaved(cfgs, repeats, per="scene")}


def shape_config(shape: str, radius_A: float, repeats: int):
    from generators.config import from_dict

    return from_dict({
        "name": f"shape_{shape}", "seed": 5, "n_structures": repeats, "conditions_per_structure": 4,
        "structure": {"n_particles": 4, "radius_A": radius_A, "allow_border_cuts": True, "shape": shape,
                      "defects": {"type": "none"}, "substrate": {"thickness_A": 20, "bank_size": 1}},
        "simulation": {"sampling_A": 0.2},
        "imaging": {"image_size_px": 256, "pixel_size_A": 0.4, "detector": {"type": "scintillator"}},
    })


def compare_shapes(radius_A: float, repeats: int) -> dict:
    shapes = ("sphere", "cuboctahedron", "icosahedron", "decahedron")
    cfgs = {sh: shape_config(sh, radius_A, repeats) for sh in shapes}
    return {"radius_A": radius_A, "repeats": repeats, **interleaved(cfgs, repeats, per="particle")}


def interleaved(cfgs: dict, repeats: int, per: str) -> dict:
    """Seconds per atom of each config's scenes, measured interleaved (scene i of every config, then scene i + 1:
    drifts of a shared machine hit all alike), as ratios to the first config. `per`: the structure's time is
    divided by the particles' atoms ("particle") or by the whole scene's ("scene")."""
    from generators.run import simulate_structure
    from generators.structures import build_structure

    names = list(cfgs)
    for cfg in cfgs.values():
        simulate_structure(cfg, 0)  # each config's support block and crystal template
    scene, build, atoms, particle_atoms = ({n: [] for n in names} for _ in range(4))
    for i in range(repeats):
        for n in names:
            t0 = time.perf_counter()
            s = build_structure(cfgs[n], i)
            build[n].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            simulate_structure(cfgs[n], i)
            scene[n].append(time.perf_counter() - t0)
            atoms[n].append(s.n_atoms)
            particle_atoms[n].append(len(s.particle_numbers) if per == "particle" else s.n_atoms)
    rows = {n: {"seconds_per_scene": statistics.median(scene[n]), "atoms_per_scene": statistics.median(atoms[n]),
                "structure_seconds": statistics.median(build[n]),
                "structure_atoms": statistics.median(particle_atoms[n]),
                # medians of the per-scene ratios: one slow scene on a shared machine does not decide them
                "us_per_atom_scene": 1e6 * statistics.median(t / a for t, a in zip(scene[n], atoms[n])),
                "us_per_atom_structure": 1e6 * statistics.median(
                    t / a for t, a in zip(build[n], particle_atoms[n]))} for n in names}
    base = rows[names[0]]
    return {"rows": rows,
            f"ratio_vs_{names[0]}": {n: {"scene_per_atom": r["us_per_atom_scene"] / base["us_per_atom_scene"],
                                         "structure_per_atom": r["us_per_atom_structure"]
                                         / base["us_per_atom_structure"]}
                                     for n, r in rows.items() if n != names[0]}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--radius-A", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--counts", default="0,1,2,4,8")
    p.add_argument("--materials", action="store_true", help="cost per atom: crystals from CIF files vs built-in Au")
    p.add_argument("--supports", action="store_true", help="cost per atom: Si3N4, SiO2, graphene vs carbon")
    p.add_argument("--shapes", action="store_true", help="cost per atom: Wulff and multiply twinned vs spheres")
    args = p.parse_args(argv)
    if args.materials or args.supports or args.shapes:
        compare = compare_materials if args.materials else compare_supports if args.supports else compare_shapes
        print(json.dumps(compare(args.radius_A, args.repeats), indent=2))
        return 0
    from generators.run import simulate_structure

    counts = [int(c) for c in args.counts.split(",")]
    simulate_structure(config(1, args.radius_A, 1), 0)  # warm-up: FFT plans, carbon block, imports
    seconds, placed = {}, {}
    for n in counts:
        cfg = config(n, args.radius_A, args.repeats)
        simulate_structure(cfg, 0)  # the carbon block of this config
        times, got = [], []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            _, _, _, metas, s = simulate_structure(cfg, i)
            times.append(time.perf_counter() - t0)
            got.append(s.n_particles)
        seconds[n], placed[n] = statistics.median(times), statistics.median(got)
    t0 = seconds.get(0, 0.0)
    per = (seconds[1] - t0) if 1 in seconds else None
    out = {"radius_A": args.radius_A, "seconds_per_scene": seconds, "particles_placed": placed,
           "extra_seconds_per_particle": {n: (seconds[n] - t0) / n for n in counts if n},
           "cost_ratio_vs_linear": {n: (seconds[n] - t0) / (n * per) for n in counts if n and per}}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
