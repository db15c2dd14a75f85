"""Fine-tune a trained model on a small experimental split, with the same per-epoch benchmarks.

    python -m training.finetune --config finetune.yaml      (or: accelerate launch -m training.finetune ...)

The config is a training config with `init_from: MODEL_DIR`. What it leaves out follows the seed study's
fine-tuning recipe: the parent's architecture and augmentations, half the parent's learning rate, 50 epochs, early
stopping after 10 epochs without a better monitor Dice. The metrics file starts with the parent's rows and numbers the
new epochs after them, so the curves continue across the two phases.
"""
from __future__ import annotations

import sys
from pathlib import Path

from generators.config import ConfigError

from .config import TrainConfig, read_with_overrides, train_config
from .models import CONFIG_FILE, ModelFolderError, read_model_config
from .train import cli

# The fine-tuning recipe of the seed study, written once: `finetune_config` and the study's fine-tuning jobs
# (training/study.py) both apply it to what their config leaves out.
DEFAULTS = {"epochs": 50, "patience": 10}
LR_FACTOR = 0.5  # of the parent's learning rate


def finetune_lr(parent_lr: float) -> float:
    return parent_lr * LR_FACTOR


def finetune_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    data = read_with_overrides(path, overrides)
    if not data.get("init_from"):
        raise ConfigError(f"invalid fine-tuning config ({path}):\n  - init_from: required: the model folder to "
                          "start from, e.g. runs/demo/model")
    if not (Path(data["init_from"]) / CONFIG_FILE).exists():
        raise ModelFolderError(f"init_from: {data['init_from']} is not a model folder (no {CONFIG_FILE})")
    parent = read_model_config(data["init_from"])
    data.setdefault("model", parent.model.model_dump(mode="json"))
    # The parent's intensity normalisation is part of what it learnt: keep it (and its augmentations) by default.
    data.setdefault("augment", parent.augment.model_dump(mode="json"))
    opt = data.setdefault("optimizer", {})
    opt.setdefault("lr", finetune_lr(parent.lr))
    for k, v in DEFAULTS.items():
        data.setdefault(k, v)
    return train_config(data, str(path))


def main(argv=None, prog: str = "training.finetune", epilog: str | None = None) -> int:
    return cli(argv, prog, prepare=finetune_config, epilog=epilog)


if __name__ == "__main__":
    sys.exit(main())
