"""What every simulator backend returns (`ExitWaves`), the error it raises when it cannot run here, and the
electron wavelength they share; a module of its own so that the backends (`simulate.py`, `simulate_prismatic.py`)
depend on it rather than on each other."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import TemsynthError


class SimulatorUnavailable(TemsynthError, RuntimeError):
    pass


@dataclass
class ExitWaves:
    particle: np.ndarray  # (configs, ny, nx) complex64, vacuum = 1
    full: np.ndarray  # (configs, ny, nx) complex64
    sampling_A: float
    energy_keV: float


def wavelength_A(energy_keV: float) -> float:
    """Relativistic electron wavelength."""
    from ase import units

    e = energy_keV * 1e3
    m0c2 = units._me * units._c**2 / units._e  # eV
    hc = units._hplanck * units._c / units._e * 1e10  # eV Å
    return hc / np.sqrt(e * (2 * m0c2 + e))


def one_energy(cfg, energy_keV: float | None) -> float:
    """A simulator's beam energy: the one asked for, else the config's single energy."""
    if energy_keV is not None:
        return float(energy_keV)
    energies = cfg.energies_keV
    if len(energies) != 1:
        raise ValueError(f"simulation.energy_keV is a choice of {list(energies)}: give the structure's energy "
                         "(imaging.beam_energy_keV)")
    return energies[0]
