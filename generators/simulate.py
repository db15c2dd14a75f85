"""Exit waves: plane-wave multislice through the particle, then on through the substrate.

Two waves per frozen-phonon configuration: `particle` (after the particle's slices alone: the mask's wave) and
`full` (the same wave continued through the carbon: the image's wave). Continuing the particle wave is the same
multislice as one pass through both, so the pair costs one multislice, not two.

Backends: `abtem` (below) and `prismatic` (`simulate_prismatic.py`: Prismatic 2.x HRTEM, built by `make prismatic`).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

import numpy as np

from .config import STAGE_PHONONS, SimulationConfig, rng_for
from .multislice import CarbonSlices, Multislice, carbon_exit_wave, transposed
from .simulate_prismatic import PrismaticSimulator, SimulationError  # noqa: F401  (re-exported)
from .structures import Structure
from .waves import ExitWaves, SimulatorUnavailable, one_energy, wavelength_A  # noqa: F401  (re-exported)


class Simulator(Protocol):
    name: str
    version: str

    def exit_waves(self, structure: Structure, root_seed: int) -> ExitWaves: ...


class AbtemSimulator:
    name = "abtem"

    def __init__(self, cfg: SimulationConfig, gpts: int, thermal_sigma_A: float = 0.0, energy_keV: float | None = None):
        import abtem

        self.cfg = cfg
        self.energy_keV = one_energy(cfg, energy_keV)
        self.gpts = gpts
        self.thermal_sigma_A = thermal_sigma_A
        self.version = abtem.__version__
        self.device = self._pick_device(cfg.device)
        self._folders: tuple[Path | None, Path | None] = (None, None)
        self._engine = None

    @staticmethod
    def _pick_device(device: str) -> str:
        if device == "cpu":
            return "cpu"
        try:
            import cupy

            ok = cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:
            ok = False
        if device == "gpu" and not ok:
            raise SimulatorUnavailable("simulation.device: gpu asked for, but CuPy with a CUDA device is not "
                                       "available; install cupy-cuda12x on a GPU machine or use device: auto/cpu")
        return "gpu" if ok else "cpu"

    def use_folders(self, wisdom_dir: Path | None, carbon_dir: Path | None) -> None:
        """Where this run's FFTW wisdom lives (the dataset folder) and where the carbon's sliced transmission
        functions are shared between workers (its work folder); both optional."""
        if (wisdom_dir, carbon_dir) != self._folders:
            self._folders = (wisdom_dir, carbon_dir)
            self._engine = None

    def _cpu_engine(self, cell_xy_A: float):
        if self._engine is None or self._engine[0].extent != cell_xy_A:
            wisdom_dir, carbon_dir = self._folders
            engine = Multislice(self.gpts, cell_xy_A, self.energy_keV, self.cfg.slice_thickness_A,
                                self.cfg.parametrization, wisdom_dir)
            self._engine = (engine, CarbonSlices(engine, carbon_dir))
        return self._engine

    @contextlib.contextmanager
    def _abtem_config(self):
        import abtem

        # Eager, single-threaded inside our own workers: parallelism is one structure per Dask worker.
        with abtem.config.set({"device": self.device, "precision": "float32", "dask.lazy": False,
                               "diagnostics.progress_bar": False, "fftw.threads": 1}):
            yield

    def _potential(self, positions, numbers, cell_xy, height):
        import abtem
        import ase

        atoms = ase.Atoms(numbers=numbers, positions=positions, cell=[cell_xy, cell_xy, height], pbc=True)
        return abtem.Potential(atoms, gpts=(self.gpts, self.gpts), slice_thickness=self.cfg.slice_thickness_A,
                               parametrization=self.cfg.parametrization, projection="infinite").build()

    def _particle_positions(self, s: Structure, rng) -> np.ndarray:
        pos = s.particle_positions
        if self.thermal_sigma_A > 0:
            pos = pos + rng.normal(0.0, self.thermal_sigma_A, size=pos.shape)
        return pos

    def exit_waves(self, structure: Structure, root_seed: int) -> ExitWaves:
        """Both waves per frozen-phonon configuration. On the CPU through `multislice.py` (deterministic FFTW
        plans, carbon slices reused per bank block); on a GPU through abTEM on CuPy (the same physics)."""
        s = structure
        rng = rng_for(root_seed, STAGE_PHONONS, s.structure_index)
        if self.device == "cpu" and s.substrate_block is not None:
            particle, full = self._exit_waves_cpu(s, rng)
        else:
            particle, full = self._exit_waves_abtem(s, rng)
        # Both paths index arrays [x, y]; records are images [row = y, column = x].
        stack = lambda a: np.stack([transposed(np.asarray(w, np.complex64)) for w in a])
        return ExitWaves(particle=stack(particle), full=stack(full),
                         sampling_A=s.cell_xy_A / self.gpts, energy_keV=self.energy_keV)

    def _exit_waves_cpu(self, s: Structure, rng):
        engine, carbon = self._cpu_engine(s.cell_xy_A)
        n_particle = int(round(s.particle_height_A / self.cfg.slice_thickness_A))
        particle, full = [], []
        for _ in range(self.cfg.n_frozen_phonons):
            engine.start_plane_wave()
            if len(s.particle_numbers):
                engine.propagate_atoms(self._particle_positions(s, rng), s.particle_numbers, n_particle)
            particle.append(engine.wave.copy())
            carbon_exit_wave(engine, carbon, s)
            full.append(engine.wave.copy())
        return particle, full

    def _exit_waves_abtem(self, s: Structure, rng):
        import abtem

        particle, full = [], []
        with self._abtem_config():
            substrate = None
            if s.substrate_height_A > 0 and len(s.substrate_numbers):
                substrate = self._potential(s.substrate_positions, s.substrate_numbers, s.cell_xy_A,
                                            s.substrate_height_A)
            for _ in range(self.cfg.n_frozen_phonons):
                plane = abtem.PlaneWave(energy=self.energy_keV * 1e3, gpts=(self.gpts, self.gpts),
                                        extent=(s.cell_xy_A, s.cell_xy_A))
                if len(s.particle_numbers):
                    pot = self._potential(self._particle_positions(s, rng), s.particle_numbers, s.cell_xy_A,
                                          s.particle_height_A)
                    wave = plane.multislice(pot)
                    particle.append(_to_numpy(wave.array))
                else:  # an empty field: the particle-only wave is the incident plane wave
                    wave = plane.build()
                    particle.append(np.ones((self.gpts, self.gpts), np.complex64))
                if substrate is not None:
                    wave = wave.multislice(substrate)
                full.append(_to_numpy(wave.array))
        return particle, full


def _to_numpy(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def make_simulator(cfg: SimulationConfig, gpts: int, thermal_sigma_A: float = 0.0,
                   energy_keV: float | None = None) -> Simulator:
    """The configured backend at one beam energy (the config's, or with a choice of energies the structure's,
    `imaging.beam_energy_keV`); an unusable one (e.g. `prismatic` without its build) raises SimulatorUnavailable
    here, before any work."""
    backends = {"abtem": AbtemSimulator, "prismatic": PrismaticSimulator}
    return backends[cfg.backend](cfg, gpts, thermal_sigma_A, energy_keV=energy_keV)
