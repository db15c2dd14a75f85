"""Cost of a scene against its number of particles: seconds per structure (structure, exit waves, images, masks)
for 0, 1, 2, 4 and 8 particles of one size on the same grid, in one process, each the median of a few scenes.

    python benchmarks/bench_scenes.py [--radius-A 10] [--repeats 3]

Reported: seconds per scene and the extra cost per particle relative to one particle; "linear or better" holds
when t(n) - t(0) <= n (t(1) - t(0)) within noise, i.e. placing and simulating particles adds no cost that grows
faster than their number (the multislice and the carbon cost the same whatever the count).
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
                      "defects": {"type": {"choice": ["none", "twin"]}}, "substrate": {"thickness_A": 20, "bank_size": 1}},
        "simulation": {"sampling_A": 0.2},
        "imaging": {"image_size_px": 256, "pixel_size_A": 0.4, "detector": {"type": "scintillator"}},
    })


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--radius-A", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--counts", default="0,1,2,4,8")
    args = p.parse_args(argv)
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
