"""The record schema, defined once: column names (units in the names), Arrow types, `datasets` features.

Writers, the dataset card, the query layer and the tests all read it from here. Every shard carries each column's
unit and description in its Arrow field metadata (`field_metadata`), so `pq.read_schema` explains a column
without the card.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .preview import preview_png
from .structures import Particle, particle_columns
from .units import unit_of


@dataclass(frozen=True)
class Column:
    name: str
    arrow: pa.DataType
    description: str

    @property
    def unit(self) -> str:
        return unit_of(self.name)

    def field(self) -> pa.Field:
        """The Arrow field, its unit and description in the field metadata (bytes keys, as Parquet keeps them)."""
        return pa.field(self.name, self.arrow, metadata=field_metadata(self.unit, self.description))


def field_metadata(unit: str, description: str) -> dict[bytes, bytes]:
    return {b"unit": unit.encode(), b"description": description.encode()}


def fixed_list(t, n):
    return pa.list_(t, n)


def _arrow_of(annotation) -> pa.DataType:
    if annotation is str:
        return pa.string()
    if annotation is float:
        return pa.float64()
    if annotation is int:
        return pa.int32()
    if annotation is bool:
        return pa.bool_()
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and args and all(a is args[0] for a in args):
        return fixed_list(_arrow_of(args[0]), len(args))
    raise TypeError(f"no Arrow type for {annotation!r}")


def _particle_columns() -> tuple[Column, ...]:
    """One list column per `Particle` field marked as a column (generators/structures.py), plus the per-record
    (crop-dependent) ones: the typed object, not a hand-kept key list, decides what reaches the records."""
    hints = typing.get_type_hints(Particle)
    out = [Column(name, pa.list_(_arrow_of(hints[attr])), f"per particle: {doc}")
           for name, attr, doc in particle_columns()]
    out += [
        Column("particle_center_px", pa.list_(fixed_list(pa.float64(), 2)),
               "per particle: (x, y) centre in image pixel indices"),
        Column("particle_cut_by_border", pa.list_(pa.bool_()), "per particle: its outline crosses the image border"),
        Column("particle_area_px", pa.list_(pa.int32()), "per particle: pixels of its label in instance_mask"),
    ]
    return tuple(out)


METADATA_COLUMNS: tuple[Column, ...] = (
    Column("record_id", pa.string(), "unique id: {structure_id}-c{condition_index:03d}"),
    Column("structure_id", pa.string(), "id of the simulated structure; structures/{structure_id}.extxyz"),
    Column("structure_index", pa.int32(), "index of the structure in the generation run"),
    Column("condition_index", pa.int32(), "index of the imaging condition for this structure"),
    Column("split", pa.string(), "train / validation / test, assigned per structure"),
    Column("n_particles", pa.int32(), "particles in the scene (0: bare carbon)"),
    Column("n_particles_requested", pa.int32(), "particles drawn; more than n_particles when some found no room"),
    Column("placement", pa.string(), "how the particles were laid out: random, or aggregate (touching clusters)"),
    *_particle_columns(),
    Column("substrate_kind", pa.string(), "support film: amorphous (carbon, silicon nitride, ...) or graphene"),
    Column("substrate_composition", pa.string(), "support film's chemical formula, e.g. C, Si3N4, SiO2"),
    Column("substrate_thickness_A", pa.float64(), "support film thickness (graphene: layers x 3.35 Å)"),
    Column("substrate_bank_index", pa.int32(), "which periodic support block the substrate was cut from"),
    Column("n_atoms", pa.int32(), "atoms in the specimen (particles + substrate)"),
    Column("energy_keV", pa.float64(), "beam energy, keV (the structure's: one energy of a choice per structure)"),
    Column("sim_sampling_A", pa.float64(), "multislice real-space sampling"),
    Column("slice_thickness_A", pa.float64(), "multislice slice thickness"),
    Column("n_frozen_phonons", pa.int32(), "frozen-phonon configurations averaged"),
    Column("pixel_size_A", pa.float64(), "pixel size of the stored image"),
    Column("detector_pixel_size_A", pa.float64(), "the camera's pixel size (resampled to pixel_size_A when different)"),
    Column("image_size_px", pa.int32(), "image side length"),
    Column("crop_offset_px", fixed_list(pa.int32(), 2), "(x, y) of the image corner in the simulated field"),
    Column("defocus_nm", pa.float64(), "C10; negative = underfocus"),
    Column("cs_mm", pa.float64(), "spherical aberration C30"),
    Column("astigmatism_nm", pa.float64(), "two-fold astigmatism |C12|"),
    Column("astigmatism_angle_deg", pa.float64(), "two-fold astigmatism angle phi12"),
    Column("focal_spread_nm", pa.float64(), "1/e^(1/2) focal spread (temporal incoherence)"),
    Column("cc_mm", pa.float64(), "chromatic aberration Cc the focal spread was computed from (null: given)"),
    Column("energy_spread_eV", pa.float64(), "beam energy spread, FWHM, in the computed focal spread (null: given)"),
    Column("high_tension_ppm", pa.float64(), "RMS relative high-tension instability in it (null: given)"),
    Column("lens_current_ppm", pa.float64(), "RMS relative objective-lens current instability in it (null: given)"),
    Column("image_spread_A", pa.float64(), "image spread: Gaussian blur of the intensity before the camera, σ in Å"),
    Column("output_blur_A", pa.float64(), "Gaussian blur of the recorded image (signal and noise), σ in Å"),
    Column("dose_e_per_A2", pa.float64(), "electron dose"),
    Column("detector_type", pa.string(), "camera model: ideal, scintillator, counting"),
    Column("detector_gain_counts_per_e", pa.float64(), "counts per electron (scintillator) or per detected electron"),
    Column("detector_read_noise_counts", pa.float64(), "Gaussian read noise, counts RMS"),
    Column("detector_dqe0", pa.float64(), "DQE at zero frequency"),
    Column("detector_mtf_c", pa.float64(), "scintillator MTF plateau c"),
    Column("detector_mtf_f0", pa.float64(), "scintillator MTF half-width f0, cycles per detector pixel"),
    Column("detector_counting_sigma_px", pa.float64(), "counting detector localisation error, detector pixels"),
    Column("output_bits", pa.int32(), "grey levels 2^bits the counts were cast to, per image (0: counts kept)"),
    Column("median_filter_px", pa.int32(), "median filter applied after that cast (0: none)"),
    Column("mask_phase_threshold_rad", pa.float64(), "|phase| threshold of the particle-only exit wave"),
    Column("mask_closing_radius_A", pa.float64(), "closing radius that bridges inter-column gaps"),
    Column("mask_blur_sigma_A", pa.float64(), "label margin: Gaussian blur of the mask kept above 0.1 (0: none)"),
    Column("mask_area_px", pa.int32(), "pixels in the mask"),
    Column("seed", pa.int64(), "root seed of the run; every stage's seed derives from it and the ids"),
    Column("simulator", pa.string(), "multislice backend"),
    Column("simulator_version", pa.string(), "backend version"),
    Column("generator_version", pa.string(), "temsynth version"),
    Column("czone_version", pa.string(), "czone version"),
    Column("config_sha256", pa.string(), "sha256 of the canonical generation config"),
)

METADATA_NAMES = tuple(c.name for c in METADATA_COLUMNS)
# Pixel columns and their types; `instance_mask` (0 = background, k = particle k, 1-based) only in simulated records.
ARRAY_TYPES = {"image": pa.float32(), "mask": pa.uint8(), "instance_mask": pa.uint8()}
ARRAY_COLUMNS = tuple(ARRAY_TYPES)
ARRAY_DESCRIPTIONS = {
    "image": ("counts", "the micrograph, rows of pixels: electron counts (simulated; grey levels where "
                        "output_bits > 0) or the recorded intensity"),
    "mask": ("", "rows of pixels: 1 where a particle is, 0 elsewhere"),
    "instance_mask": ("", "rows of pixels: 0 background, k particle k (1-based, the order of the particle_ lists)"),
    "preview": ("", "an 8-bit PNG of the image with the mask's outline, as the Hugging Face Image feature"),
}
# `preview` (simulated records): an 8-bit PNG of the image with the mask's outline (generators/preview.py), stored
# as the Hugging Face `Image` feature's struct so the dataset viewer shows it. Pixels, not metadata.
PREVIEW_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
PIXEL_COLUMNS = (*ARRAY_COLUMNS, "preview")


def _arrays(columns) -> tuple[str, ...]:
    return ARRAY_COLUMNS if columns is METADATA_COLUMNS else ("image", "mask")


def arrow_schema(columns: tuple[Column, ...] = METADATA_COLUMNS) -> pa.Schema:
    """Parquet schema: images as nested lists (datasets casts them to Array2D from the card's features).

    `columns`: the metadata of simulated records by default; experimental imports pass their own."""
    preview = [pa.field("preview", PREVIEW_TYPE, metadata=field_metadata(*ARRAY_DESCRIPTIONS["preview"]))] \
        if columns is METADATA_COLUMNS else []
    return pa.schema([pa.field(a, pa.list_(pa.list_(ARRAY_TYPES[a])), metadata=field_metadata(*ARRAY_DESCRIPTIONS[a]))
                      for a in _arrays(columns)] + preview + [c.field() for c in columns])


def hf_features(image_size_px: int, columns: tuple[Column, ...] = METADATA_COLUMNS):
    from datasets import Array2D, Features, Image

    feats = Features.from_arrow_schema(pa.schema([pa.field(c.name, c.arrow) for c in columns]))
    out = {a: Array2D((image_size_px, image_size_px), ARRAY_TYPES[a].to_pandas_dtype().__name__)
           for a in _arrays(columns)}
    if columns is METADATA_COLUMNS:
        out["preview"] = Image()
    out.update(feats)
    return Features(out)


def nested_list_array(stack: np.ndarray) -> pa.Array:
    """(n, h, w) array -> Arrow list<list<T>> without a Python loop over pixels."""
    n, h, w = stack.shape
    flat = pa.array(np.ascontiguousarray(stack).reshape(-1))
    rows = pa.ListArray.from_arrays(pa.array(np.arange(0, n * h * w + 1, w, dtype=np.int32)), flat)
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * h + 1, h, dtype=np.int32)), rows)


def to_table(images: np.ndarray, masks: np.ndarray, metadata: list[dict], image_size_px: int,
             instance_masks: np.ndarray | None = None) -> pa.Table:
    schema = arrow_schema()
    names = set(METADATA_NAMES)
    for m in metadata:
        if set(m) != names:
            raise ValueError(f"record {m.get('record_id')}: keys outside the schema {sorted(set(m) - names)}, "
                             f"missing {sorted(names - set(m))}; declare a column or drop the key")
    if instance_masks is None:
        instance_masks = masks
    cols = {"image": nested_list_array(images.astype(np.float32)), "mask": nested_list_array(masks.astype(np.uint8)),
            "instance_mask": nested_list_array(instance_masks.astype(np.uint8)),
            "preview": pa.array([{"bytes": preview_png(i, m), "path": None} for i, m in zip(images, masks)],
                                type=PREVIEW_TYPE)}
    for c in METADATA_COLUMNS:
        cols[c.name] = pa.array([m[c.name] for m in metadata], type=c.arrow)
    return pa.table(cols, schema=schema)

