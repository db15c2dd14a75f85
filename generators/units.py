"""Units are in the names: a field or column named `defocus_nm` is in nanometres. The one table of name suffixes,
read by the record schema (each shard column's Arrow field metadata) and the configuration reference."""
from __future__ import annotations

# Name suffix -> unit, longest first.
UNITS = [("_e_per_A2", "e⁻/Å²"), ("_atoms_per_A3", "atoms/Å³"), ("_g_per_cm3", "g/cm³"), ("_counts_per_e", "counts/e⁻"),
         ("_counts", "counts"), ("_keV", "keV"), ("_eV", "eV"), ("_ppm", "ppm"), ("_mrad", "mrad"), ("_rad", "rad"),
         ("_deg", "°"), ("_mm", "mm"), ("_nm", "nm"), ("_px", "px"), ("_A", "Å")]


def unit_of(name: str) -> str:
    """The unit a name's suffix gives; "" for a count, an id, a flag or text."""
    return next((unit for suffix, unit in UNITS if name.endswith(suffix)), "")
