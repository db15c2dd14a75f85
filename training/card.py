"""The model card: README.md of a model folder, rendered from temsynth/cards/model_card.md."""
from __future__ import annotations

from pathlib import Path

import yaml

from generators.files import atomic_path
from generators.files import versions as all_versions
from generators.writers import CARDS_DIR

TRAINING_PACKAGES = ("torch", "accelerate", "transformers", "safetensors")


def versions() -> dict:
    return all_versions(*TRAINING_PACKAGES)


def write_model_card(model_dir: Path, config: dict, summary: dict, rows: list[dict]) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    tc = config["training_config"]
    card_data = ModelCardData(
        library_name="pytorch", license="cc-by-4.0", pipeline_tag="image-segmentation",
        tags=["electron-microscopy", "hrtem", "nanoparticles", "segmentation", config["model"]["architecture"]],
        model_name=config["name"])
    card = ModelCard.from_template(
        card_data, template_path=str(CARDS_DIR / "model_card.md"), config=config, tc=tc, summary=summary,
        training_yaml=yaml.safe_dump(tc, sort_keys=False), versions=versions(),
        phases=sorted({r["phase"] for r in rows}, key=["train", "finetune"].index))
    with atomic_path(model_dir / "README.md") as tmp:
        tmp.write_text(str(card))
