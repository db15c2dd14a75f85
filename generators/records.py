"""The record schema, defined once: column names (units in the names), Arrow types, `datasets` features.

Writers, the dataset card, the query layer and the tests all read it from here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    arrow: pa.DataType
    description: str


def fixed_list(t, n):
    return pa.list_(t, n)


METADATA_COLUMNS: tuple[Column, ...] = (
    Column("record_id", pa.string(), "unique id: {structure_id}-c{condition_index:03d}"),
    Column("structure_id", pa.string(), "id of the simulated structure; structures/{structure_id}.extxyz"),
    Column("structure_index", pa.int32(), "index of the structure in the generation run"),
    Column("condition_index", pa.int32(), "index of the imaging condition for this structure"),
    Column("split", pa.string(), "train / validation / test, assigned per structure"),
    Column("material", pa.string(), "particle material"),
    Column("particle_radius_A", pa.float64(), "sphere radius"),
    Column("particle_center_px", fixed_list(pa.float64(), 2), "(x, y) particle centre in image pixel indices"),
    Column("orientation_euler_deg", fixed_list(pa.float64(), 3), "ZXZ Euler angles crystal -> lab frame (beam = +z)"),
    Column("beam_direction_crystal", fixed_list(pa.float64(), 3), "unit beam direction in the crystal's Cartesian frame"),
    Column("defect_type", pa.string(), "realised planar defects: none, twin, multiple_twins, stacking_fault, mixed"),
    Column("n_defects", pa.int32(), "number of planar defects"),
    Column("n_twins", pa.int32(), "number of twin boundaries"),
    Column("n_stacking_faults", pa.int32(), "number of stacking faults"),
    Column("substrate_thickness_A", pa.float64(), "amorphous carbon thickness"),
    Column("substrate_bank_index", pa.int32(), "which periodic carbon block the substrate was cut from"),
    Column("n_atoms", pa.int32(), "atoms in the specimen (particle + substrate)"),
    Column("n_particle_atoms", pa.int32(), "atoms in the particle"),
    Column("energy_keV", pa.float64(), "beam energy"),
    Column("sim_sampling_A", pa.float64(), "multislice real-space sampling"),
    Column("slice_thickness_A", pa.float64(), "multislice slice thickness"),
    Column("n_frozen_phonons", pa.int32(), "frozen-phonon configurations averaged"),
    Column("pixel_size_A", pa.float64(), "detector pixel size"),
    Column("image_size_px", pa.int32(), "image side length"),
    Column("crop_offset_px", fixed_list(pa.int32(), 2), "(x, y) of the image corner in the simulated field"),
    Column("defocus_nm", pa.float64(), "C10; negative = underfocus"),
    Column("cs_mm", pa.float64(), "spherical aberration C30"),
    Column("astigmatism_nm", pa.float64(), "two-fold astigmatism |C12|"),
    Column("astigmatism_angle_deg", pa.float64(), "two-fold astigmatism angle phi12"),
    Column("focal_spread_nm", pa.float64(), "1/e^(1/2) focal spread (temporal incoherence)"),
    Column("dose_e_per_A2", pa.float64(), "electron dose"),
    Column("mask_phase_threshold_rad", pa.float64(), "|phase| threshold of the particle-only exit wave"),
    Column("mask_closing_radius_A", pa.float64(), "closing radius that bridges inter-column gaps"),
    Column("mask_area_px", pa.int32(), "pixels in the mask"),
    Column("seed", pa.int64(), "root seed of the run; every stage's seed derives from it and the ids"),
    Column("czone_seed", pa.int64(), "seed handed to czone for this structure"),
    Column("simulator", pa.string(), "multislice backend"),
    Column("simulator_version", pa.string(), "backend version"),
    Column("generator_version", pa.string(), "temsynth version"),
    Column("czone_version", pa.string(), "czone version"),
    Column("config_sha256", pa.string(), "sha256 of the canonical generation config"),
)

METADATA_NAMES = tuple(c.name for c in METADATA_COLUMNS)
ARRAY_COLUMNS = ("image", "mask")


def arrow_schema(columns: tuple[Column, ...] = METADATA_COLUMNS) -> pa.Schema:
    """Parquet schema: images as nested lists (datasets casts them to Array2D from the card's features).

    `columns`: the metadata of simulated records by default; experimental imports pass their own."""
    return pa.schema([pa.field("image", pa.list_(pa.list_(pa.float32()))),
                      pa.field("mask", pa.list_(pa.list_(pa.uint8())))]
                     + [pa.field(c.name, c.arrow) for c in columns])


def hf_features(image_size_px: int, columns: tuple[Column, ...] = METADATA_COLUMNS):
    from datasets import Array2D, Features

    feats = Features.from_arrow_schema(pa.schema([pa.field(c.name, c.arrow) for c in columns]))
    out = {"image": Array2D((image_size_px, image_size_px), "float32"),
           "mask": Array2D((image_size_px, image_size_px), "uint8")}
    out.update(feats)
    return Features(out)


def nested_list_array(stack: np.ndarray) -> pa.Array:
    """(n, h, w) array -> Arrow list<list<T>> without a Python loop over pixels."""
    n, h, w = stack.shape
    flat = pa.array(np.ascontiguousarray(stack).reshape(-1))
    rows = pa.ListArray.from_arrays(pa.array(np.arange(0, n * h * w + 1, w, dtype=np.int32)), flat)
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * h + 1, h, dtype=np.int32)), rows)


def to_table(images: np.ndarray, masks: np.ndarray, metadata: list[dict], image_size_px: int) -> pa.Table:
    schema = arrow_schema()
    cols = {"image": nested_list_array(images.astype(np.float32)), "mask": nested_list_array(masks.astype(np.uint8))}
    for c in METADATA_COLUMNS:
        cols[c.name] = pa.array([m[c.name] for m in metadata], type=c.arrow)
    return pa.table(cols, schema=schema)

