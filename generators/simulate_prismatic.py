"""Prismatic 2.x plane-wave HRTEM backend: the seed study's simulator, on abTEM's grid and band limit.

Install: `make prismatic` (Debian packages + a source build of pyprismatic into the project's .venv; see README).

What a call does, per structure and frozen-phonon configuration, and why:

- Two Prismatic runs: the particle's slab alone (cell height `particle_height_A`: the mask's wave) and particle +
  substrate (particle on top, substrate below: the image's wave). Prismatic cannot continue a wave from a file,
  so the pair costs two multislice runs (abTEM's backend continues one).
- Geometry: our beam enters at z = 0 and runs along +z; Prismatic slices from the top of its cell (slice 0 holds
  z near the cell height), so atoms are written at z' = H - z. Heights are whole numbers of slices, written as
  n * dz minus 1e-4 Å so that Prismatic's ceil(H / dz) gives the same n slices as abTEM; an atom lands in slice
  floor(z / dz) in both codes (abTEM: projection 'infinite', all of an atom's potential in its slice; Prismatic:
  `potential3D = False`, its 2D projected potential).
- Grid: Prismatic computes the potential at `realspacePixelSize`, band-limits the wave to the inner half of that
  grid's frequencies (a square, its anti-aliasing) and writes the exit wave at twice the pixel size. Its pixel
  size is therefore set to sampling / 2 = cell / (2 gpts) (interpolation factor 1, so its grid is rounded to a
  multiple of 4, i.e. 2 gpts for even gpts): the output is exactly our gpts x gpts grid, no resampling.
- Prismatic refocuses its HRTEM wave to the middle of the cell (propagator exp(+i pi lambda H/2 q^2), applied
  inside its band limit); we undo that exactly in Fourier space, so the wave is the exit-surface wave.
- Band limit: Prismatic keeps the whole square of our grid (|qx|, |qy| < 1 / (2 sampling)); abTEM keeps a disc of
  2/3 of that (its anti-aliasing aperture, with its taper). Unless `band_limit='prismatic'`, the delivered wave is
  multiplied by abTEM's aperture, so both backends hand the imaging stage waves of the same band limit.
- Potentials: Prismatic has Kirkland's parametrization only (atoms snapped to its half-size pixels, projected
  potential cut at `potBound` = 3 Å); the config must say `parametrization: kirkland`, which abTEM also offers.
- Frozen phonons: temsynth draws the displacements (the same seeded draws as the abTEM backend, particle atoms
  only) and runs Prismatic once per configuration with `numFP = 1` and its own thermal effects off. Prismatic's
  `numFP` would draw them itself, from per-thread generators whose share of slices depends on thread timing and
  whose seed it re-derives from `rand()`: not reproducible, and the particle-only and full runs would see
  different atoms (the mask would not belong to the image).
- Threads: Prismatic's `numThreads` is this process's share of the machine's cores (cores / tasks running at
  once on the host when inside Dask workers; all cores in a plain process; `TEMSYNTH_SIM_THREADS` overrides).
- Isolation: each structure's runs go to one child process (`_prismatic_child.py`) in a temporary directory that
  is deleted afterwards (XYZ inputs, HDF5 outputs, Prismatic's `prismatic_gui_params.txt`, which it writes to
  $HOME). A failure raises `SimulationError` naming the structure, with the tail of Prismatic's log; nothing of
  that structure is written.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from .config import STAGE_PHONONS, SimulationConfig, rng_for
from .errors import TemsynthError
from .waves import ExitWaves, SimulatorUnavailable, one_energy, wavelength_A

INSTALL_COMMAND = "make prismatic"
BUILD_INFO = "prismatic-build.json"  # written by `make prismatic` into the venv's root (sys.prefix)
_CHILD = Path(__file__).with_name("_prismatic_child.py")
_Z_EPS_A = 1e-4


class SimulationError(TemsynthError, RuntimeError):
    """A simulator failed on one structure (the message names it)."""


def build_info() -> dict:
    """What `make prismatic` recorded (source, upstream commit); {} when it recorded nothing."""
    path = Path(sys.prefix) / BUILD_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=1)
def prismatic_status() -> tuple[bool, str, str]:
    """(usable, reason if not, version string). Usable = pyprismatic imports and has the HRTEM exit-wave output
    (Prismatic 2.x: `saveComplexOutputWave`); PyPI's STEM-only 1.1.16 does not."""
    try:
        import pyprismatic
    except Exception as err:  # ImportError, or a broken build (missing shared library)
        failed = Path(sys.prefix) / ".prismatic-failed"
        why = f" ({failed.read_text().strip()})" if failed.exists() else ""
        return False, f"pyprismatic is not importable: {type(err).__name__}: {err}{why}", ""
    fields = getattr(getattr(pyprismatic, "Metadata", None), "fields", [])
    from importlib.metadata import PackageNotFoundError, version

    try:
        py_version = version("PyPrismatic")
    except PackageNotFoundError:
        py_version = getattr(pyprismatic, "__version__", "unknown")
    if "saveComplexOutputWave" not in fields:
        return False, (f"pyprismatic {py_version} has no HRTEM exit-wave output (PyPI's 1.1.16 is STEM-only; "
                       "Prismatic 2.x built from source has it)"), py_version
    info = build_info()
    commit = info.get("commit", "unknown")
    return True, "", f"{info.get('prismatic_version', '2.0')}@{commit[:8]}"


def _unavailable(reason: str):
    return SimulatorUnavailable(f"simulation.backend: prismatic needs a Prismatic 2.x build with HRTEM; {reason}. "
                                f"Install it with `{INSTALL_COMMAND}` (or use backend: abtem).")


def thread_share() -> int:
    """This task's share of the host's cores."""
    if os.environ.get("TEMSYNTH_SIM_THREADS"):
        return max(1, int(os.environ["TEMSYNTH_SIM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        from distributed import get_worker

        worker = get_worker()
    except Exception:
        return cores
    try:  # every task slot of every worker on this host runs a structure at once
        host = worker.address.split("://")[-1].rsplit(":", 1)[0]
        infos = worker.client.scheduler_info(n_workers=-1)["workers"].values()
        slots = sum(w["nthreads"] for w in infos if w["host"] == host) or worker.state.nthreads
    except Exception:
        slots = worker.state.nthreads
    return max(1, cores // max(1, slots))


class PrismaticSimulator:
    name = "prismatic"

    def __init__(self, cfg: SimulationConfig, gpts: int, thermal_sigma_A: float = 0.0,
                 band_limit: str = "abtem", threads: int | None = None, energy_keV: float | None = None):
        ok, reason, version = prismatic_status()
        if not ok:
            raise _unavailable(reason)

        if cfg.parametrization != "kirkland":
            raise SimulatorUnavailable(
                f"simulation.parametrization: Prismatic computes Kirkland potentials only, got "
                f"'{cfg.parametrization}'; set parametrization: kirkland with backend: prismatic")
        if cfg.device == "gpu":
            raise SimulatorUnavailable("simulation.device: gpu; `make prismatic` builds Prismatic's CPU version; "
                                       "use device: auto or cpu with backend: prismatic")
        if gpts % 2:
            raise SimulatorUnavailable(
                f"simulation: the Prismatic backend needs an even number of grid points per side (its output is "
                f"half its potential grid, a multiple of 4), got {gpts}; change sampling_A or the field size")
        if band_limit not in ("abtem", "prismatic"):
            raise ValueError(f"band_limit must be 'abtem' or 'prismatic', got {band_limit!r}")
        self.cfg = cfg
        self.energy_keV = one_energy(cfg, energy_keV)
        self.gpts = gpts
        self.thermal_sigma_A = thermal_sigma_A
        self.band_limit = band_limit
        self.threads = threads
        self.version = version

    # ------------------------------------------------------------ geometry
    def _slab(self, height_A: float) -> tuple[int, float]:
        """(slices, cell height written for Prismatic) for a slab of whole slices."""
        dz = self.cfg.slice_thickness_A
        n = max(1, int(np.ceil(height_A / dz - 1e-6)))
        return n, n * dz - _Z_EPS_A

    def _write_xyz(self, path: Path, cell_xy: float, slab_heights: list[float], slabs: list[tuple]) -> float:
        """Write Prismatic's XYZ: slabs stacked from the beam's entrance; returns the cell height written."""
        dz = self.cfg.slice_thickness_A
        lines, z0 = [], 0.0
        for height, (positions, numbers) in zip(slab_heights, slabs):
            n, _ = self._slab(height)
            z = np.clip(np.asarray(positions[:, 2], float), 0.0, n * dz - 2 * _Z_EPS_A) + z0
            for (x, y), zz, num in zip(np.asarray(positions[:, :2], float), z, numbers):
                lines.append((int(num), x, y, zz))
            z0 += n * dz
        height = z0 - _Z_EPS_A
        with open(path, "w") as f:
            f.write("temsynth structure\n")
            f.write(f"{cell_xy:.8f} {cell_xy:.8f} {height:.8f}\n")
            for num, x, y, zz in lines:
                f.write(f"{num} {x:.6f} {y:.6f} {height - zz:.6f} 1 0\n")
            f.write("-1\n")
        return height

    def _metadata(self, cell_xy: float) -> dict:
        return {"algorithm": "hrtem", "saveComplexOutputWave": True, "save2DOutput": False, "save3DOutput": False,
                "save4DOutput": False, "realspacePixelSizeX": cell_xy / (2 * self.gpts),
                "realspacePixelSizeY": cell_xy / (2 * self.gpts), "interpolationFactorX": 1,
                "interpolationFactorY": 1, "sliceThickness": float(self.cfg.slice_thickness_A),
                "E0": float(self.energy_keV), "numFP": 1, "potential3D": False, "potBound": 3.0,
                "includeThermalEffects": False, "includeOccupancy": False, "numGPUs": 0, "alsoDoCPUWork": True,
                "numThreads": self._threads(), "randomSeed": 0, "transferMode": "singlexfer"}

    def _threads(self) -> int:
        if self.threads is None:  # once per process: asking the scheduler costs a round trip
            self.threads = thread_share()
        return int(self.threads)

    # ------------------------------------------------------------ the run
    def exit_waves(self, structure, root_seed: int):
        s = structure
        sid = getattr(s, "structure_id", None) or f"index {s.structure_index}"
        rng = rng_for(root_seed, STAGE_PHONONS, s.structure_index)
        n_configs = self.cfg.n_frozen_phonons
        # Without thermal displacements every configuration is the same specimen: one run serves all.
        n_runs = n_configs if self.thermal_sigma_A > 0 else 1
        has_substrate = s.substrate_height_A > 0 and len(s.substrate_numbers) > 0
        has_particle = len(s.particle_numbers) > 0
        sub = (np.asarray(s.substrate_positions, float), np.asarray(s.substrate_numbers))
        if not has_particle and not has_substrate:
            vacuum = np.ones((n_configs, self.gpts, self.gpts), np.complex64)
            return ExitWaves(particle=vacuum, full=vacuum.copy(), sampling_A=s.cell_xy_A / self.gpts,
                             energy_keV=self.energy_keV)
        with tempfile.TemporaryDirectory(prefix="temsynth-prismatic-") as tmp:
            tmp = Path(tmp)
            runs, heights = [], []
            for c in range(n_runs):
                pos = np.asarray(s.particle_positions, float)
                if self.thermal_sigma_A > 0:  # the abTEM backend's draws, in the same order
                    pos = pos + rng.normal(0.0, self.thermal_sigma_A, size=pos.shape)
                part = (pos, np.asarray(s.particle_numbers))
                kinds = []
                if has_particle:
                    kinds.append(("particle", [s.particle_height_A], [part]))
                if has_substrate:  # an empty field: a plane wave meets the carbon unchanged
                    kinds.append(("full", [s.particle_height_A, s.substrate_height_A], [part, sub]) if has_particle
                                 else ("full", [s.substrate_height_A], [sub]))
                for kind, hs, slabs in kinds:
                    stem = tmp / f"c{c:03d}-{kind}"
                    height = self._write_xyz(stem.with_suffix(".xyz"), s.cell_xy_A, hs, slabs)
                    heights.append(height)
                    runs.append({"xyz": str(stem.with_suffix(".xyz")), "out": str(stem.with_suffix(".h5")),
                                 "npy": str(stem.with_suffix(".npy")), "metadata": self._metadata(s.cell_xy_A)})
            (tmp / "job.json").write_text(json.dumps({"runs": runs}))
            self._run_child(tmp, sid)
            waves = [self._to_exit_plane(np.load(r["npy"])[0], s.cell_xy_A, h, sid) for r, h in zip(runs, heights)]
        per = len(waves) // n_runs
        vacuum = np.ones((self.gpts, self.gpts), np.complex64)
        particle = [waves[per * c] if has_particle else vacuum for c in range(n_runs)]
        full = [waves[per * c + per - 1] for c in range(n_runs)]
        if n_runs < n_configs:
            particle, full = particle * n_configs, full * n_configs
        return ExitWaves(particle=np.stack(particle).astype(np.complex64),
                         full=np.stack(full).astype(np.complex64),
                         sampling_A=s.cell_xy_A / self.gpts, energy_keV=self.energy_keV)

    def _run_child(self, tmp: Path, sid: str) -> None:
        env = {**os.environ, "HOME": str(tmp)}  # Prismatic writes prismatic_gui_params.txt to $HOME
        log = tmp / "prismatic.log"
        with open(log, "w") as out:
            proc = subprocess.run([sys.executable, str(_CHILD), str(tmp / "job.json")], cwd=tmp, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-6:]
            raise SimulationError(f"Prismatic failed on structure {sid} (exit status {proc.returncode}): "
                                  + " | ".join(tail))

    def _to_exit_plane(self, wave_xy: np.ndarray, cell_xy: float, height: float, sid: str) -> np.ndarray:
        """Prismatic's [x, y] wave, refocused to mid-cell -> [y, x] exit-surface wave, optionally at abTEM's band
        limit."""

        n = self.gpts
        if wave_xy.shape != (n, n):
            raise SimulationError(f"Prismatic returned a {wave_xy.shape} wave for structure {sid}, expected "
                                  f"({n}, {n}): its grid did not land on ours")
        wave = np.ascontiguousarray(wave_xy.T).astype(np.complex128)
        k = np.fft.fftfreq(n, cell_xy / n)
        k2 = k[:, None] ** 2 + k[None, :] ** 2
        kernel = np.exp(-1j * np.pi * wavelength_A(self.energy_keV) * (height / 2) * k2)
        if self.band_limit == "abtem":
            kernel = kernel * abtem_aperture(n, cell_xy)
        return np.fft.ifft2(np.fft.fft2(wave) * kernel).astype(np.complex64)


def abtem_aperture(n: int, cell_xy: float) -> np.ndarray:
    """abTEM's anti-aliasing aperture on an n x n grid over cell_xy (symmetric in x and y)."""
    from abtem.antialias import antialias_aperture

    return np.asarray(antialias_aperture((n, n), (cell_xy / n, cell_xy / n), np))
