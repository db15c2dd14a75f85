"""The files the package ships beside its code: card templates, the real benchmark set (and, in their own
packages, the presets and example configs). Read through `importlib.resources`, so an installed wheel finds them
exactly as a source checkout does; nothing here looks next to the repository.

Nearly a leaf: it imports only the error base (`generators.errors`), so `generators/` and `training/` both use it.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from generators.errors import TemsynthError


def package_dir(package: str, *parts: str) -> Path:
    """A folder shipped as package data, as a filesystem path (jinja2, huggingface_hub and numpy want paths)."""
    res = files(package).joinpath(*parts)
    # An unpacked install (pip, editable, source tree) gives a real path; a zipped one would not.
    if not isinstance(res, Path) or not res.is_dir():
        raise TemsynthError(f"{package}/{'/'.join(parts)} is missing from this installation of temsynth; "
                            "reinstall it unpacked (pip install temsynth)")
    return res


def cards_dir() -> Path:
    """Templates of the dataset, model and study-report cards."""
    return package_dir("temsynth", "cards")


def real_set_dir() -> Path:
    """The bundled real micrographs with hand-drawn masks (MIT; see its README and LICENCE): 16 fields, index.csv."""
    return package_dir("temsynth", "data", "real", "hrtem_generalization")
