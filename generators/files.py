"""Files written whole or not at all, their checksums, and the versions of what wrote them: the one small module
every writer uses (shards, cards, manifests, structure files, model folders, study results).

`atomic_path` writes to a temporary sibling and renames it onto the final name only when the block finishes, so a
kill never leaves a half-written file under its final name; `temsynth generate` sweeps leftover `.*.tmp` files.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary sibling path; rename it onto `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions(*extra: str) -> dict:
    """Python, platform and the versions of the packages that shape a dataset, plus `extra` packages."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("temsynth", "abtem", "czone", "ase", "numpy", "scipy", "pyarrow", "datasets", "webdataset", "dask",
                *extra):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
