"""Exit waves: plane-wave multislice through the particle, then on through the substrate.

Two waves per frozen-phonon configuration: `particle` (after the particle's slices alone: the mask's wave) and
`full` (the same wave continued through the carbon: the image's wave). Continuing the particle wave is the same
multislice as one pass through both, so the pair costs one multislice, not two.

Backends: `abtem` (below) and `prismatic` (`simulate_prismatic.py`: Prismatic 2.x HRTEM, built by `make prismatic`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .config import STAGE_PHONONS, SimulationConfig, rng_for
from .simulate_prismatic import PrismaticSimulator, SimulationError  # noqa: F401  (re-exported)
from .structures import Structure


class SimulatorUnavailable(RuntimeError):
    pass


@dataclass
class ExitWaves:
    particle: np.ndarray  # (configs, ny, nx) complex64, vacuum = 1
    full: np.ndarray  # (configs, ny, nx) complex64
    sampling_A: float
    energy_keV: float


class Simulator(Protocol):
    name: str
    version: str

    def exit_waves(self, structure: Structure, root_seed: int) -> ExitWaves: ...


def wavelength_A(energy_keV: float) -> float:
    """Relativistic electron wavelength."""
    from ase import units

    e = energy_keV * 1e3
    m0c2 = units._me * units._c**2 / units._e  # eV
    hc = units._hplanck * units._c / units._e * 1e10  # eV Å
    return hc / np.sqrt(e * (2 * m0c2 + e))


class AbtemSimulator:
    name = "abtem"

    def __init__(self, cfg: SimulationConfig, gpts: int, thermal_sigma_A: float = 0.0):
        import abtem

        self.cfg = cfg
        self.gpts = gpts
        self.thermal_sigma_A = thermal_sigma_A
        self.version = abtem.__version__
        self.device = self._pick_device(cfg.device)

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

    @contextlib.contextmanager
    def _abtem_config(self):
        import abtem

        # Eager, single-threaded inside our own workers: parallelism is one structure per Dask worker.
        # abTEM's FFTW_MEASURE plans stay: FFTW_ESTIMATE (deterministic plans) made the multislice 3x slower and
        # numpy's FFT 2x. The price: plans measured in another process may differ in the last bits, which moves
        # some Poisson draws (0.5 % of pixels between two builds of the demo); one process is bit-reproducible.
        with abtem.config.set({"device": self.device, "precision": "float32", "dask.lazy": False,
                               "diagnostics.progress_bar": False, "fftw.threads": 1}):
            yield

    def _potential(self, positions, numbers, cell_xy, height):
        import abtem
        import ase

        atoms = ase.Atoms(numbers=numbers, positions=positions, cell=[cell_xy, cell_xy, height], pbc=True)
        return abtem.Potential(atoms, gpts=(self.gpts, self.gpts), slice_thickness=self.cfg.slice_thickness_A,
                               parametrization=self.cfg.parametrization, projection="infinite").build()

    def exit_waves(self, structure: Structure, root_seed: int) -> ExitWaves:
        import abtem

        s = structure
        rng = rng_for(root_seed, STAGE_PHONONS, s.structure_index)
        particle, full = [], []
        with self._abtem_config():
            substrate = None
            if s.substrate_height_A > 0 and len(s.substrate_numbers):
                substrate = self._potential(s.substrate_positions, s.substrate_numbers, s.cell_xy_A, s.substrate_height_A)
            for _ in range(self.cfg.n_frozen_phonons):
                plane = abtem.PlaneWave(energy=self.cfg.energy_keV * 1e3, gpts=(self.gpts, self.gpts),
                                        extent=(s.cell_xy_A, s.cell_xy_A))
                if len(s.particle_numbers):
                    pos = s.particle_positions
                    if self.thermal_sigma_A > 0:
                        pos = pos + rng.normal(0.0, self.thermal_sigma_A, size=pos.shape)
                    pot = self._potential(pos, s.particle_numbers, s.cell_xy_A, s.particle_height_A)
                    wave = plane.multislice(pot)
                    particle.append(_to_numpy(wave.array))
                else:  # an empty field: the particle-only wave is the incident plane wave
                    wave = plane.build()
                    particle.append(np.ones((self.gpts, self.gpts), np.complex64))
                if substrate is not None:
                    wave = wave.multislice(substrate)
                full.append(_to_numpy(wave.array))
        # abTEM indexes arrays [x, y]; records are images [row = y, column = x].
        stack = lambda a: np.ascontiguousarray(np.stack(a).swapaxes(-1, -2).astype(np.complex64))
        return ExitWaves(particle=stack(particle), full=stack(full),
                         sampling_A=s.cell_xy_A / self.gpts, energy_keV=self.cfg.energy_keV)


def _to_numpy(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def make_simulator(cfg: SimulationConfig, gpts: int, thermal_sigma_A: float = 0.0) -> Simulator:
    """The configured backend; an unusable one (e.g. `prismatic` without its build) raises SimulatorUnavailable here,
    before any work."""
    backends = {"abtem": AbtemSimulator, "prismatic": PrismaticSimulator}
    return backends[cfg.backend](cfg, gpts, thermal_sigma_A)
