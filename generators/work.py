"""The work unit of a generation run: one structure simulated into its records (`simulate_structure`, a pure
function of the config and the structure index on one machine), and the Dask task that writes them as a part
(`process_structure`). The split of every structure and a per-process cache of simulators live here too."""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from . import __version__
from .config import STAGE_SPLITS, GenerationConfig, from_dict, rng_for
from .detector import sample_detector
from .folder import record_id, structure_id
from .imaging import (
    Grid,
    ImageFormer,
    beam_energy_keV,
    bin_mean,
    crop,
    grid_for,
    noise_rng,
    sample_conditions,
    saved_for_display,
)
from .masks import instance_labels, mask_from_coverage, phase_coverage
from .micrographs.tiles import resample
from .records import to_table
from .simulate import make_simulator, wavelength_A
from .structures import Structure, build_structure
from .writers import SPLITS, write_parquet


class SplitMap(Mapping):
    """Structure index -> split name, one byte per structure (a dict of 10 million entries takes a GiB)."""

    def __init__(self, codes: np.ndarray):
        self._codes = codes

    def __getitem__(self, index: int) -> str:
        if not 0 <= int(index) < len(self._codes):
            raise KeyError(index)
        return SPLITS[self._codes[int(index)]]

    def __iter__(self):
        return iter(range(len(self._codes)))

    def __len__(self) -> int:
        return len(self._codes)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self._codes == SPLITS.index(split))


def assign_splits(cfg: GenerationConfig) -> SplitMap:
    """Structure index -> split, from a seeded permutation: a structure never lands in two splits."""
    n = cfg.n_structures
    order = rng_for(cfg.seed, STAGE_SPLITS).permutation(n)
    n_val = int(round(cfg.splits.validation * n))
    n_test = int(round(cfg.splits.test * n))
    n_train = n - n_val - n_test
    rank_code = np.zeros(n, np.int8)
    rank_code[n_train:n_train + n_val] = SPLITS.index("validation")
    rank_code[n_train + n_val:] = SPLITS.index("test")
    codes = np.empty(n, np.int8)
    codes[order] = rank_code
    return SplitMap(codes)


_CONTEXT: dict = {}


def _context(cfg: GenerationConfig, grid: Grid, energy_keV: float):
    """Per-process simulator and image former per sampling grid and beam energy, and the split assignment per
    config."""
    key = (cfg.sha256(), grid.sim_gpts, grid.bin_factor or 1, energy_keV)
    if key not in _CONTEXT:
        if len(_CONTEXT) > 16:
            _CONTEXT.clear()
        sim = make_simulator(cfg.simulation, grid.sim_gpts, cfg.structure.thermal_sigma_A, energy_keV)
        former = ImageFormer(cfg.imaging, grid.sim_gpts, grid.sim_sampling_A, wavelength_A(energy_keV),
                             grid.bin_factor or 1)
        _CONTEXT[key] = (sim, former)
    split_key = ("splits", cfg.sha256())
    if split_key not in _CONTEXT:
        _CONTEXT[split_key] = assign_splits(cfg)
    return (*_CONTEXT[key], _CONTEXT[split_key])


class SimulatedStructure(NamedTuple):
    """One structure's records: (n, h, w) stacks of its images, masks and instance masks, one metadata dict per
    record (imaging condition), and the structure itself. A tuple too, so `images, masks, *_ = ...` holds."""
    images: np.ndarray
    masks: np.ndarray
    instance_masks: np.ndarray
    records: list[dict]
    structure: Structure


def simulate_structure(cfg: GenerationConfig, index: int, cache_dir: Path | None = None,
                       dataset_dir: Path | None = None) -> SimulatedStructure:
    """Structure -> exit waves -> images, masks, instance masks and per-record metadata (`SimulatedStructure`).
    A pure function of (cfg, index) on one machine, given the FFTW wisdom of `dataset_dir` (`fftw.py`);
    `cache_dir` shares the carbon bank and its sliced potentials between workers."""
    from importlib.metadata import version

    im = cfg.imaging
    grid = grid_for(cfg, index)
    energy = beam_energy_keV(cfg, index)
    sim, former, splits = _context(cfg, grid, energy)
    p = im.pixel_size_A
    s = build_structure(cfg, index, cache_dir)
    if hasattr(sim, "use_folders"):
        sim.use_folders(dataset_dir, cache_dir)
    former.use_folder(dataset_dir)
    waves = sim.exit_waves(s, cfg.seed)
    camera = sample_detector(im.detector, cfg.seed, index)
    # The camera's pixels are resampled onto the stored grid exactly as the importer resamples micrographs.
    resampled = grid.detector_px != im.field_px

    # Sample j of the multislice grid sits at j * sampling; stored pixel i spans [i p, (i + 1) p) - sampling / 2.
    half_sample = grid.sim_sampling_A / 2
    to_px = lambda x_A: (x_A + half_sample) / p - 0.5
    centres = [(to_px(pt.center_A[0]), to_px(pt.center_A[1])) for pt in s.particles]
    radii_px = [pt.bounding_radius_A / p for pt in s.particles]
    conditions = sample_conditions(cfg, index, centres, radii_px, energy)
    intensity = former.intensity(waves.full, conditions)
    if grid.bin_factor is None:  # camera pixels that are no whole number of samples integrate the area they cover
        intensity = np.stack([resample(a, grid.sim_sampling_A, grid.detector_pixel_size_A) for a in intensity])
    coverage = phase_coverage(waves.particle, cfg.mask.phase_threshold_rad)
    if grid.bin_factor and not resampled:
        coverage = bin_mean(coverage, grid.bin_factor)
    else:
        coverage = resample(coverage, grid.sim_sampling_A, p)
    mask_field = mask_from_coverage(coverage, cfg.mask.closing_radius_A / p, cfg.mask.blur_sigma_A / p,
                                    cfg.mask.blur_threshold)
    labels_field = instance_labels(mask_field, s.particle_positions[:, :2], s.particle_index, p, s.cell_xy_A,
                                   half_sample)

    # Every stage's objects say what they put on a record: the structure, the run's config, this structure's
    # grid and camera, and the software.
    base = {**s.record_fields(), "split": splits[index], **cfg.record_fields(), **grid.record_fields(),
            "energy_keV": energy,
            **camera.as_dict(), "simulator": sim.name, "simulator_version": sim.version,
            "generator_version": __version__, "czone_version": version("czone")}
    size = im.image_size_px
    images, masks, labels, metas = [], [], [], []
    for c, inten in zip(conditions, intensity):
        counts = camera.record(inten, c.dose_e_per_A2, grid.detector_pixel_size_A,
                               noise_rng(cfg, index, c.condition_index))
        if resampled:
            counts = resample(counts, grid.detector_pixel_size_A, p)
        if c.output_blur_A > 0:  # the whole (periodic) field, so that the crop's edges are blurred as its middle
            counts = ndimage.gaussian_filter(counts, c.output_blur_A / p, mode="wrap")
        img = saved_for_display(crop(counts, c.crop_offset_px, size), im.output_bits, im.median_filter_px)
        m = crop(mask_field, c.crop_offset_px, size)
        lab = crop(labels_field, c.crop_offset_px, size)
        ox, oy = c.crop_offset_px
        centre_px = [[x - ox, y - oy] for x, y in centres]
        images.append(img)
        masks.append(m)
        labels.append(lab)
        metas.append({**base, **c.as_dict(), "record_id": record_id(index, c.condition_index),
                      "particle_center_px": centre_px,
                      # the bounding circle crosses a pixel edge of the border
                      "particle_cut_by_border": [bool(min(x, y) - r < -0.5 or max(x, y) + r > size - 0.5)
                                                 for (x, y), r in zip(centre_px, radii_px)],
                      "particle_area_px": [int(np.count_nonzero(lab == k + 1)) for k in range(s.n_particles)],
                      "mask_area_px": int(m.sum())})
    return SimulatedStructure(np.stack(images), np.stack(masks), np.stack(labels), metas, s)


def process_structure(cfg_json: str, index: int, out_dir: str) -> dict:
    """Dask work unit: simulate one structure, write its structure file and its records part."""
    cfg = from_dict(json.loads(cfg_json))
    out = Path(out_dir)
    t0 = time.perf_counter()
    r = simulate_structure(cfg, index, out / "_work" / "substrates", out)
    r.structure.write_extxyz(out / "structures" / f"{r.structure.structure_id}.extxyz")
    write_parquet(to_table(r.images, r.masks, r.records, cfg.imaging.image_size_px, r.instance_masks),
                  _part_path(out, index))
    return {"index": index, "records": len(r.records), "seconds": time.perf_counter() - t0}


def _part_path(out: Path, index: int) -> Path:
    return out / "_work" / "parts" / f"{structure_id(index)}.parquet"
