"""Experimental micrographs: `readers` (formats, units, masks), `tiles` (resampling and tiling) and `importer`
(labelled micrographs -> a dataset folder laid out like a generated one, with its card and manifest).

The names below are the package's public surface; import them from here.
"""
from .importer import (
                       COLUMNS,
                       Source,
                       arrow_schema,
                       assign_splits,
                       given_pixel_sizes,
                       hf_features,
                       import_folder,
                       pair_files,
                       pixel_size_of,
                       plan_source,
                       read_pixel_sizes,
                       source_table,
                       write_card,
)
from .readers import (
                       EXTENSIONS,
                       MASK_SUFFIX,
                       MIN_SIDE_PX,
                       READER_PACKAGES,
                       SPLITS,
                       Micrograph,
                       MicrographError,
                       check_min_side,
                       load_micrograph,
                       parse_mask_values,
                       read_mask,
                       read_micrograph,
                       unit_to_A,
)
from .tiles import Tile, resample, resample_mask, resampled_shape, tile, tile_count, tile_starts

__all__ = ["COLUMNS", "EXTENSIONS", "MASK_SUFFIX", "MIN_SIDE_PX", "READER_PACKAGES", "SPLITS", "Micrograph",
           "MicrographError", "Source", "Tile", "arrow_schema", "assign_splits", "check_min_side",
           "given_pixel_sizes", "hf_features", "import_folder", "load_micrograph", "pair_files", "parse_mask_values",
           "pixel_size_of",
           "plan_source", "read_mask", "read_micrograph", "read_pixel_sizes", "resample", "resample_mask",
           "resampled_shape", "source_table", "tile", "tile_count", "tile_starts", "unit_to_A", "write_card"]
