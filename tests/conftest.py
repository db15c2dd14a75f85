"""Shared fixtures: tiny configs and one small dataset built once per session (in-process, no network)."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from generators.config import from_dict, set_dotted  # noqa: E402  (after the offline switches above)


def tiny_dict(**over):
    """128² px at 0.25 Å/px (32 Å field), small particles on thin carbon: about 1 s per structure."""
    d = {
        "name": "tiny", "seed": 11, "n_structures": 8, "conditions_per_structure": 2, "records_per_shard": 5,
        "splits": {"train": 0.5, "validation": 0.25, "test": 0.25},
        "structure": {"radius_A": {"uniform": [8, 11]},
                      "defects": {"type": {"choice": ["none", "twin", "mixed"]}, "n_defects": {"integers": [2, 2]}},
                      "substrate": {"thickness_A": {"uniform": [10, 16]}, "bank_size": 2}},
        "imaging": {"image_size_px": 128, "pixel_size_A": 0.25, "dose_e_per_A2": {"uniform": [300, 800]}},
    }
    return with_fields(d, **over)


def with_fields(d: dict, **over) -> dict:
    """Set dotted fields ("structure.radius_A") of a config dict in place; returns it."""
    return set_dotted(d, over)


def process_group_gone(pgid: int, timeout: float = 15) -> bool:
    """True once no process of the group is left (polled until `timeout` seconds)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def tiny_cfg():
    return from_dict(tiny_dict())


@pytest.fixture(scope="session")
def built(tmp_path_factory, tiny_cfg):
    from generators.run import generate

    out = tmp_path_factory.mktemp("ds") / "tem_tiny"
    generate(tiny_cfg, out, workers=0, progress=False, log=lambda *a: None)
    return out
