"""Per-structure cost of the exit waves against an FFT-bound baseline, and the cost of one extra imaging condition.

Every ratio is measured in one run on this machine (shared machines are noisy: compare ratios, not seconds):
- multislice ratio = time(particle + substrate exit waves, potentials included) / time(2 FFTs per slice, same
  grid, same number of slices, pyFFTW MEASURE plans, one thread), for the CPU multislice (`multislice.py`) and,
  on the same structures, for abTEM's own (`--no-abtem` skips it: on the paper grid it takes ~20 s a structure);
- amortised = the same with the carbon's slices built once per bank block and run (written to a shared folder, as
  `generate` does, where the run's workers take turns: one builds a block, the others wait and map it) spread
  over the run's structures, the steady ratio excluding it;
- agreement with abTEM: correlation and largest difference of the noise-free image intensity (vacuum = 1);
- condition ratio = time(one more imaging condition) / time(the exit waves).

    python benchmarks/bench_simulation.py [--preset demo] [--structures 3]

With --backends abtem,prismatic: seconds per structure of each backend (both exit waves, potentials included) on
the same structures of each preset's grid, Kirkland potentials for both, one thread each (one structure per core
is how `generate` runs them; `--threads` changes Prismatic's):

    python benchmarks/bench_simulation.py --backends abtem,prismatic --presets demo,paper --structures 2
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def fft_bound(gpts: int, n_slices: int, repeat: int = 3) -> float:
    import pyfftw

    a = pyfftw.empty_aligned((gpts, gpts), dtype="complex64")
    a[:] = np.exp(1j * np.random.default_rng(0).random((gpts, gpts))).astype(np.complex64)
    fwd = pyfftw.builders.fft2(a, threads=1, planner_effort="FFTW_MEASURE")
    inv = pyfftw.builders.ifft2(a, threads=1, planner_effort="FFTW_MEASURE")
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n_slices):
            inv(fwd(a))
        best = min(best, time.perf_counter() - t)
    return best


def fft_bound_gpu(gpts: int, n_slices: int, repeat: int = 3) -> float:
    """The same bound on the GPU: CuPy's cuFFT, 2 FFTs per slice, complex64, synchronised."""
    import cupy as cp

    a = cp.exp(1j * cp.random.default_rng(0).random((gpts, gpts), dtype=cp.float32)).astype(cp.complex64)
    cp.fft.ifft2(cp.fft.fft2(a))  # plan cache
    cp.cuda.Device().synchronize()
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n_slices):
            a = cp.fft.ifft2(cp.fft.fft2(a))
        cp.cuda.Device().synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    from generators.config import load_preset
    from generators.imaging import grid_for, sample_conditions
    from generators.run import _context
    from generators.structures import build_structure
    from generators.substrate import bank_block, block_key

    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--structures", type=int, default=3)
    ap.add_argument("--no-abtem", action="store_true", help="skip abTEM's own multislice (the before figure)")
    ap.add_argument("--compare", type=int, default=2,
                    help="on a GPU: structures also run on the CPU multislice (agreement, speed-up)")
    ap.add_argument("--backends", help="compare backends, e.g. abtem,prismatic (seconds per structure)")
    ap.add_argument("--presets", default="demo,paper", help="with --backends: the presets whose grids are used")
    ap.add_argument("--threads", type=int, default=1, help="with --backends: Prismatic's threads")
    args = ap.parse_args()
    if args.backends:
        return compare_backends(args.backends.split(","), args.presets.split(","), args.structures, args.threads)
    cfg = load_preset(args.preset)
    dz = cfg.simulation.slice_thickness_A
    sim, former, _ = _context(cfg, grid_for(cfg, 0))
    s0 = build_structure(cfg, 0)
    sim.exit_waves(s0, cfg.seed)  # warm-up: numba JIT, FFTW wisdom and plans
    bank = cfg.structure.substrate.bank_size
    structures = [build_structure(cfg, i) for i in range(1, args.structures + 1)]
    block_s = 0.0
    if sim.device == "cpu":
        if not args.no_abtem:
            sim._exit_waves_abtem(s0, np.random.default_rng(0))
        scratch = tempfile.TemporaryDirectory(prefix="bench-carbon-")  # removed at exit (8 GB on the paper grid)
        sim.use_folders(None, Path(scratch.name))  # file-backed, as in a run
        engine, carbon = sim._cpu_engine(s0.cell_xy_A)
        used = sorted({s.substrate.bank_index for s in structures})
        carbon.keep = len(used)
        t = time.perf_counter()
        for b in used:  # each worker builds every block's carbon slices once in a run: time the ones used here
            block = bank_block(cfg, b, None)
            carbon.block(block_key(cfg, b), block, int(block[:, 2].max() // dz) + 1)
        block_s = (time.perf_counter() - t) / len(used)
    else:  # on a GPU exit_waves is abTEM's own multislice on CuPy: compare it with the CPU multislice instead
        args.no_abtem = True
        cpu_cfg = cfg.model_copy(update={"simulation": cfg.simulation.model_copy(update={"device": "cpu"})})
        cpu_sim = _context(cpu_cfg, grid_for(cpu_cfg, 0))[0]
        scratch = tempfile.TemporaryDirectory(prefix="bench-carbon-")
        cpu_sim.use_folders(None, Path(scratch.name))
        cpu_sim.exit_waves(s0, cfg.seed)
    rows = []
    for s in structures:
        i = s.structure_index
        t = time.perf_counter()
        waves = sim.exit_waves(s, cfg.seed)
        t_ms = time.perf_counter() - t
        n_slices = int(round((s.particle_height_A + s.substrate_height_A) / dz))
        bound = fft_bound if sim.device == "cpu" else fft_bound_gpu
        t_fft = bound(cfg.multislice_gpts, n_slices * cfg.simulation.n_frozen_phonons)
        conds = sample_conditions(cfg, i, [(cfg.imaging.field_px / 2,) * 2], [1.0])
        mine = former.intensity(waves.full, conds[:1])
        row = {"structure": s.structure_id, "atoms": s.n_atoms, "slices": n_slices, "multislice_s": t_ms,
               "fft_bound_s": t_fft, "multislice_over_fft": t_ms / t_fft}
        if not args.no_abtem:
            t = time.perf_counter()
            p, f = sim._exit_waves_abtem(s, np.random.default_rng(cfg.seed))
            row["abtem_over_fft"] = (time.perf_counter() - t) / t_fft
            theirs = former.intensity(np.ascontiguousarray(np.stack(f).swapaxes(-1, -2)), conds[:1])
            row["intensity_corr_vs_abtem"] = float(np.corrcoef(mine.ravel(), theirs.ravel())[0, 1])
            row["intensity_max_diff_vs_abtem"] = float(np.abs(mine - theirs).max())
        if sim.device == "gpu" and len(rows) < args.compare:  # the same physics as the CPU path, and its cost
            t = time.perf_counter()
            cpu_waves = cpu_sim.exit_waves(s, cfg.seed)
            row["cpu_multislice_s"] = time.perf_counter() - t
            theirs = former.intensity(cpu_waves.full, conds[:1])
            row["intensity_corr_vs_cpu"] = float(np.corrcoef(mine.ravel(), theirs.ravel())[0, 1])
            row["intensity_max_diff_vs_cpu"] = float(np.abs(mine - theirs).max())
            row["mask_wave_max_diff_vs_cpu"] = float(np.abs(waves.particle - cpu_waves.particle).max())
        reps = []
        for k in (1, 4):
            t = time.perf_counter()
            former.intensity(waves.full, (conds * 4)[:k])
            reps.append(time.perf_counter() - t)
        row["condition_s"] = (reps[1] - reps[0]) / 3
        row["condition_over_multislice"] = row["condition_s"] / t_ms
        rows.append(row)
    for r in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    med = lambda k: float(np.median([r[k] for r in rows]))
    # A run's cost is the sum over its structures, so its ratio is total time over total bound (small particles,
    # many of whose slices carry atoms, cost more per slice than large carbon-heavy ones).
    total = lambda k: float(np.sum([r[k] for r in rows]))
    steady = total("multislice_s") / total("fft_bound_s")
    amortised = steady + bank * block_s / cfg.n_structures / (total("fft_bound_s") / len(rows))
    print(f"{sim.device}, grid {cfg.multislice_gpts}²: multislice / FFT bound = {steady:.2f}x steady "
          f"(per structure {min(r['multislice_over_fft'] for r in rows):.2f}-"
          f"{max(r['multislice_over_fft'] for r in rows):.2f}x), "
          + (f"{amortised:.2f}x amortised over a run's {cfg.n_structures} structures "
             f"({bank} carbon blocks, {block_s:.2f} s each)" if sim.device == "cpu" else
             "abTEM rebuilds the carbon's potential per structure: nothing to amortise")
          + (f"; abTEM's own multislice {med('abtem_over_fft'):.2f}x; intensity vs abTEM: correlation "
             f"{min(r['intensity_corr_vs_abtem'] for r in rows):.9f}, largest difference "
             f"{max(r['intensity_max_diff_vs_abtem'] for r in rows):.2e}" if not args.no_abtem else "")
          + f"; extra imaging condition = {100 * med('condition_over_multislice'):.1f} % of the exit-wave time "
          f"(median of {len(rows)})")
    if sim.device == "gpu":
        import cupy as cp

        compared = [r for r in rows if "cpu_multislice_s" in r]
        print(f"gpu: {total('multislice_s') / len(rows):.3f} s per structure (both exit waves, potentials included), "
              f"{total('multislice_s') / len(rows) / cfg.conditions_per_structure:.4f} s per image of exit waves; "
              f"GPU memory pool peak {cp.get_default_memory_pool().total_bytes() / 2**30:.2f} GiB"
              + (f"; against the CPU multislice (1 thread) on {len(compared)} structures: "
                 f"{sum(r['cpu_multislice_s'] for r in compared) / sum(r['multislice_s'] for r in compared):.1f}x "
                 f"faster, intensity correlation {min(r['intensity_corr_vs_cpu'] for r in compared):.9f}, largest "
                 f"difference {max(r['intensity_max_diff_vs_cpu'] for r in compared):.2e}, mask wave "
                 f"{max(r['mask_wave_max_diff_vs_cpu'] for r in compared):.2e}" if compared else ""))


def compare_backends(backends: list[str], presets: list[str], n_structures: int, threads: int) -> None:
    from generators.config import load_preset
    from generators.simulate import AbtemSimulator
    from generators.simulate_prismatic import PrismaticSimulator
    from generators.structures import build_structure

    for preset in presets:
        cfg = load_preset(preset)
        cfg = cfg.model_copy(update={"simulation": cfg.simulation.model_copy(update={"parametrization": "kirkland"})})
        sims = {"abtem": lambda: AbtemSimulator(cfg.simulation, cfg.multislice_gpts),
                "prismatic": lambda: PrismaticSimulator(cfg.simulation, cfg.sim_gpts, threads=threads)}
        sims = {b: sims[b]() for b in backends}
        structures = [build_structure(cfg, i) for i in range(n_structures + 1)]
        for b, sim in sims.items():  # warm-up: JIT, FFTW plans (Prismatic starts a fresh process per structure)
            if b != "prismatic":
                sim.exit_waves(structures[0], cfg.seed)
        times = {b: [] for b in sims}
        for s in structures[1:]:
            for b, sim in sims.items():
                t = time.perf_counter()
                sim.exit_waves(s, cfg.seed)
                times[b].append(time.perf_counter() - t)
            slices = int(round((s.particle_height_A + s.substrate_height_A) / cfg.simulation.slice_thickness_A))
            print(json.dumps({"preset": preset, "structure": s.structure_id, "atoms": s.n_atoms, "slices": slices,
                              **{f"{b}_s": round(times[b][-1], 2) for b in sims}}))
        summary = ", ".join(f"{b} {np.mean(t):.2f} s/structure" for b, t in times.items())
        print(f"{preset} grid {cfg.sim_gpts}² ({cfg.simulation.sampling_A} Å): {summary} "
              f"(mean of {n_structures}; Prismatic threads {threads})")


if __name__ == "__main__":
    main()
