"""Random streams: every stage's generator derives from the root seed and the record's ids, so any record's
randomness is rebuilt from the root seed alone."""
from __future__ import annotations

import numpy as np

STAGE_STRUCTURE, STAGE_PHONONS, STAGE_CONDITIONS, STAGE_NOISE, STAGE_SUBSTRATE, STAGE_SPLITS, STAGE_DETECTOR, \
    STAGE_BEAM = range(8)


def rng_for(root_seed: int, stage: int, *ids: int) -> np.random.Generator:
    """Independent stream per (stage, ids): any record's randomness is rebuilt from the root seed alone."""
    return np.random.default_rng(np.random.SeedSequence(root_seed, spawn_key=(stage, *ids)))


def seed_for(root_seed: int, stage: int, *ids: int) -> int:
    return int(np.random.SeedSequence(root_seed, spawn_key=(stage, *ids)).generate_state(1, np.uint32)[0])
