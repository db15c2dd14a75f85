"""Ensembles: several trainings of one model config as one model folder, their logits averaged.

    temsynth ensemble runs/realistic_instances/model runs/realistic_instances_s1/model ... --out runs/ensemble

Two trainings of one config on one dataset differ: on the realistic preset's held-out scenes, three seeds of the
instance model gave particle F1 0.83 / 0.93 / 0.92 and separated 79 / 92 / 73 % of touching pairs
(docs/particles.md). What they agree on is steadier than any one of them; the mean of their logits, both
channels, is the ensemble's output. The folder is a model folder like any other (`predict`, `measure`,
`evaluate`, `score` read it through `load_model`), holding copies of its members, so it travels
alone. It is not trained further: fine-tune a member and ensemble again.

Members must agree on what the inputs and outputs mean: the architecture and output channels (`model`), the
intensity normalisation, and the pixel size of their training data.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from generators.errors import exit_status
from generators.files import atomic_path

from .config import differing_keys
from .models import CONFIG_FILE, MODEL_FILE, ModelFolderError, read_model_config

MEMBERS_DIR = "members"


class Ensemble(nn.Module):
    """The mean of its members' logits. `depth` is the members' (tiling aligns on it, `predict._geometry`)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        depth = getattr(members[0], "depth", None)
        if depth is not None:
            self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x)
        for m in self.members[1:]:
            out = out + m(x)
        return out / len(self.members)


def _differences(first, other) -> list[str]:
    """What makes two members read or answer differently, in words; empty when they agree."""
    out = []
    keys = differing_keys(first.model.model_dump(mode="json"), other.model.model_dump(mode="json"))
    if keys:
        out.append(f"model (architecture and output channels) differs in {', '.join(keys)}")
    if other.augment.normalise != first.augment.normalise:
        out.append(f"input normalisation differs ({other.augment.normalise} against {first.augment.normalise})")
    if other.pixel_size_A != first.pixel_size_A:
        out.append(f"training pixel size differs ({other.pixel_size_A} against {first.pixel_size_A} Å)")
    return out


def _agree(configs: list, folders: list[str]) -> None:
    """One line naming the first member that differs from the first, and in what."""
    for folder, c in zip(folders[1:], configs[1:]):
        diff = _differences(configs[0], c)
        if diff:
            raise ModelFolderError(f"{folder}: its {diff[0]} from {folders[0]}'s; an ensemble averages models that "
                                   "read and answer alike: give trainings of one config")


def make_ensemble(folders: list[str], out: str) -> Path:
    """A model folder at `out` whose members are copies of `folders` (built under a temporary name, renamed when
    complete: an interrupted run leaves nothing)."""
    if len(folders) < 2:
        raise ModelFolderError("ensemble: give at least two model folders (trainings of one config, e.g. "
                               "seeds 0, 1 and 2)")
    if len({Path(f).resolve() for f in folders}) < len(folders):
        raise ModelFolderError("ensemble: a model folder is given twice; each member counts once")
    out = Path(out)
    if out.exists():
        raise ModelFolderError(f"--out {out} exists; give a new folder")
    configs = []
    for f in folders:
        config = read_model_config(f)  # one line for a folder without config.json, or with a damaged one
        if config.ensemble is not None:
            raise ModelFolderError(f"{f} is an ensemble already; give its members instead")
        if not (Path(f) / MODEL_FILE).is_file():
            raise ModelFolderError(f"{f} is not a model folder: it has no {MODEL_FILE} "
                                   "(written by training.train into OUTPUT_DIR/model)")
        configs.append(config)
    _agree(configs, folders)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        members = []
        for i, f in enumerate(folders):
            dest = tmp / MEMBERS_DIR / f"{i:02d}"
            dest.mkdir(parents=True)
            for name in os.listdir(f):  # weights, config, metrics and card: each member keeps its provenance
                if (Path(f) / name).is_file():
                    shutil.copy2(Path(f) / name, dest / name)
            members.append(f"{MEMBERS_DIR}/{i:02d}")
        head = json.loads((Path(folders[0]) / CONFIG_FILE).read_text())
        head.update({"name": f"ensemble of {len(folders)}: " + ", ".join(str(c.name) for c in configs),
                     "seed": None, "epoch": None, "phase_epoch": None, "scores": None,
                     "n_parameters": sum(c.n_parameters or 0 for c in configs),
                     "ensemble": {"members": members, "sources": [str(Path(f).resolve()) for f in folders],
                                  "seeds": [c.seed for c in configs], "combine": "mean of logits"}})
        with atomic_path(tmp / CONFIG_FILE) as t:
            t.write_text(json.dumps(head, indent=2, default=str))
        _write_card(tmp, head, configs)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _write_card(folder: Path, head: dict, configs: list) -> None:
    lines = [f"# {head['name']}", "",
             "An ensemble model folder (training/ensemble.py): the mean of its members' logits. "
             "Each member's folder, under `members/`, keeps its own weights, config, metrics and card.", "",
             "| member | from | seed | epoch | monitor Dice |", "|---|---|---|---|---|"]
    for m, src, c in zip(head["ensemble"]["members"], head["ensemble"]["sources"], configs):
        monitor = c.training_config.monitor_name if c.training_config.benchmarks else None
        dice = (c.scores or {}).get(monitor, {}).get("dice") if monitor else None
        lines.append(f"| `{m}` | `{src}` | {c.seed} | {c.epoch} | {'-' if dice is None else f'{dice:.3f}'} |")
    with atomic_path(folder / "README.md") as t:
        t.write_text("\n".join(lines) + "\n")


def main(argv=None, prog: str = "training.ensemble", epilog: str | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL", help="model folders: trainings of one config")
    p.add_argument("--out", required=True, help="new model folder for the ensemble")
    args = p.parse_args(argv)

    def run() -> int:
        out = make_ensemble(args.models, args.out)
        print(f"ensemble of {len(args.models)} models: {out}")
        return 0

    return exit_status(prog, run)
