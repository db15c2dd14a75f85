"""What a run will need before it starts: a worker's peak memory, the finished folder's disk, the carbon cache."""
from __future__ import annotations

import math

from .config_schema import GenerationConfig

# Peak memory of one worker: the interpreter with abTEM, czone and Dask loaded, plus bytes per simulation grid
# point (multislice wave and FFT buffers, transmission functions, exit waves and their stacked copies, the image
# former's frequency grids, the detector's arrays), plus per frozen phonon its two exit waves. Calibrated on
# the demo preset, one structure in process (peak RSS): 512² grid 0.60 GiB, 2048² grid 2.49 GiB.
WORKER_BASE_BYTES = 500 * 2 ** 20


BYTES_PER_GRID_POINT = 448


BYTES_PER_GRID_POINT_PER_PHONON = 32


def estimate_worker_bytes(cfg: GenerationConfig) -> int:
    """Peak memory of one worker simulating one structure (an estimate; the refusal quotes it)."""
    n2 = cfg.sim_gpts ** 2
    images = cfg.conditions_per_structure * cfg.imaging.field_px ** 2 * (4 + 4 + 1)  # intensities, images, masks
    return int(WORKER_BASE_BYTES + n2 * (BYTES_PER_GRID_POINT + BYTES_PER_GRID_POINT_PER_PHONON *
                                         cfg.simulation.n_frozen_phonons) + images)


def estimate_dataset_bytes(cfg: GenerationConfig) -> int:
    """Disk for the finished folder: float32 image + uint8 mask per record, in Parquet and in WebDataset (noisy
    counts barely compress), plus the parts kept until assembly."""
    per_record = cfg.imaging.image_size_px ** 2 * 5
    return int(cfg.n_structures * cfg.conditions_per_structure * per_record * 3 + estimate_carbon_cache_bytes(cfg))


def estimate_carbon_cache_bytes(cfg: GenerationConfig) -> int:
    """The carbon's transmission functions kept in the work folder during a run (complex64 per slice of every
    bank block, `multislice.CarbonSlices`); dropped with it when the folder is finished."""
    sub, dz = cfg.structure.substrate, cfg.simulation.slice_thickness_A
    slices = math.ceil(sub.thickness_A.support()[1] / dz)
    # one set of transmission functions per beam energy (the interaction constant scales the potential's phase)
    per_energy = sub.bank_size * slices * cfg.multislice_gpts ** 2 * 8
    return int(per_energy * len(cfg.simulation.energies_keV)) if cfg.simulation.backend == "abtem" else 0
