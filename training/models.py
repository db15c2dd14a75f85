"""Segmentation networks built from config (no downloaded weights), and the model folder format.

Every network maps (B, 1, H, W) normalised intensities to (B, C, H, W) logits, for any H, W: channel 0 the
particle logits; instance models (`model.instances`) add channel 1, the logits of each particle's distance to
its own edge (scaled to 1 at its core).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from generators.errors import TemsynthError
from generators.files import atomic_path

from .config import AugmentConfig, Benchmark, DataSource, ModelConfig, OptimizerConfig, TrainConfig

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "group":
        return nn.GroupNorm(min(8, ch), ch)
    return nn.Identity()


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str):
        bias = norm == "none"
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=bias), _norm(norm, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=bias), _norm(norm, cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Ronneberger's U-Net: `depth` max-pool levels, widths base * 2**level, skip connections by concatenation."""

    def __init__(self, depth: int = 4, base_width: int = 16, norm: str = "batch", out_channels: int = 1):
        super().__init__()
        widths = [base_width * 2 ** i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList([_Block(1 if i == 0 else widths[i - 1], widths[i], norm) for i in range(depth + 1)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)])
        self.merge = nn.ModuleList([_Block(2 * widths[i], widths[i], norm) for i in range(depth)])
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** self.depth
        # Any image size: reflect-pad up to a multiple of 2**depth, crop the logits back.
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(self.depth)):
            x = self.merge[i](torch.cat([skips.pop(), self.up[i](x)], dim=1))
        return self.head(x)[..., :h, :w]


class SegFormer(nn.Module):
    """transformers' SegFormer from its config with num_channels=1; logits (1/4 resolution) upsampled to the input."""

    def __init__(self, out_channels: int = 1, **spec):
        super().__init__()
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        n = len(spec["hidden_sizes"])
        # SegformerConfig's per-stage lists default to 4 stages; a shallower encoder takes their first n entries.
        per_stage = {k: v[:n] for k, v in (("sr_ratios", [8, 4, 2, 1]), ("patch_sizes", [7, 3, 3, 3]),
                                           ("strides", [4, 2, 2, 2]), ("mlp_ratios", [4, 4, 4, 4]))}
        cfg = SegformerConfig(num_channels=1, num_labels=out_channels, num_encoder_blocks=n, **per_stage, **spec)
        self.net = SegformerForSemanticSegmentation(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(pixel_values=x).logits
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_model(cfg: ModelConfig) -> nn.Module:
    out = 2 if cfg.instances else 1  # channel 0: particle logits; 1: distance-to-edge logits (instance models)
    if cfg.architecture == "unet":
        return UNet(**cfg.unet.model_dump(), out_channels=out)
    return SegFormer(**cfg.segformer.model_dump(), out_channels=out)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: nn.Module, folder: str | Path, model_cfg: ModelConfig, info: dict) -> Path:
    """model.safetensors + config.json (architecture and whatever provenance `info` carries), written atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / MODEL_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "architecture": model_cfg.architecture})
    config = {"model": model_cfg.model_dump(mode="json"), "n_parameters": n_parameters(model), **info}
    with atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config, indent=2, default=str))
    return folder


class ModelFolderError(TemsynthError, ValueError):
    pass


class SourceRecord(BaseModel):
    """One data source (or benchmark) as a model folder records it (`data.source_json`): where, which records,
    the folder's content fingerprint and the pixel sizes a model trained on it expects. Lenient on reading: a
    record keeps what was written, and `model_dump(exclude_unset=True)` gives back exactly that."""
    model_config = ConfigDict(extra="allow")
    path: str | None = None
    split: str | None = None
    query: str | None = None
    format: str | None = None
    n_images: int | None = None
    name: str | None = None  # a benchmark's
    fingerprint: str | None = None
    pixel_sizes_A: list[float] | None = None


class TrainingRecord(TrainConfig):
    """The training config a model was trained with, as its config.json holds it: the full `TrainConfig`, read
    leniently (a record is not user input: keys a later version adds pass through; what a hand-made folder
    leaves out stays unset, and an unrecorded optimizer is None rather than the default's learning rate)."""
    model_config = ConfigDict(extra="allow")
    output_dir: str | None = None
    data: DataSource | list[DataSource] = []
    benchmarks: list[Benchmark] = []
    optimizer: OptimizerConfig | None = None


class ParentRecord(BaseModel):
    """What a fine-tuned model records of the model it started from (`train._parent_info`)."""
    model_config = ConfigDict(extra="allow")
    path: str | None = None
    name: str | None = None
    epoch: int | None = None
    seed: int | None = None
    train_data: list[SourceRecord] = []


class EnsembleRecord(BaseModel):
    """An ensemble folder's members (training/ensemble.py): folders relative to it, and where they came from."""
    model_config = ConfigDict(extra="allow")
    members: list[str]
    sources: list[str] = []
    seeds: list[int | None] = []
    combine: str = "mean of logits"


class ModelFolderConfig(BaseModel):
    """A model folder's config.json, read and typed in one place: the architecture, and what predicting,
    evaluating, fine-tuning and studies take from the run that made it. Keys a later version writes pass
    through (`model_extra`)."""
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: ModelConfig
    name: str | None = None
    n_parameters: int | None = None
    phase: str | None = None
    seed: int | None = None
    world_size: int | None = None
    mixed_precision: str | None = None
    training_config: TrainingRecord = TrainingRecord()
    train_data: list[SourceRecord] = []
    benchmarks: list[SourceRecord] = []
    init_from: ParentRecord | None = None
    epoch_offset: int | None = None
    epoch: int | None = None
    phase_epoch: int | None = None
    scores: dict[str, dict] | None = None
    ensemble: EnsembleRecord | None = None

    @property
    def augment(self) -> AugmentConfig:
        """The intensity normalisation and augmentations it was trained with (inputs must be normalised alike)."""
        return self.training_config.augment

    @property
    def lr(self) -> float | None:
        return self.training_config.optimizer.lr if self.training_config.optimizer else None

    @property
    def pixel_size_A(self) -> float | None:
        """The one pixel size of its training data, if it had one (fields are resampled to it). Each source's was
        recorded from its data folder object (`DatasetFolder.pixel_size_A`, through `data.source_json`)."""
        sizes = {px for src in self.train_data for px in src.pixel_sizes_A or []}
        return sizes.pop() if len(sizes) == 1 else None

    @property
    def first_phase_data(self) -> list[SourceRecord]:
        """The simulated data of its first training phase (a fine-tuned model's parent's)."""
        if self.init_from:
            return self.init_from.train_data
        return self.train_data


def read_model_config(folder: str | Path) -> ModelFolderConfig:
    """config.json of a model folder, typed; one-line ModelFolderError if it is missing or does not describe a
    model."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise ModelFolderError(f"{folder} is not a model folder: it has no {CONFIG_FILE} "
                               "(written by training.train into OUTPUT_DIR/model)")
    try:
        return ModelFolderConfig.model_validate(json.loads((folder / CONFIG_FILE).read_bytes()))
    except (ValueError, UnicodeDecodeError, TypeError, ValidationError) as err:
        first = " ".join(str(err).split())[:200]
        raise ModelFolderError(f"{folder}/{CONFIG_FILE} does not describe a model ({type(err).__name__}: {first}); "
                               f"{_REFETCH}") from None


_REFETCH = "copy the model folder again from its training run (OUTPUT_DIR/model)"


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelFolderConfig]:
    """One call from a model folder to a network in eval mode, and its typed config.json."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / CONFIG_FILE).is_file() and not (folder / MODEL_FILE).is_file():
        config = read_model_config(folder)
        if config.ensemble is not None:  # an ensemble's weights are its members' (training/ensemble.py)
            from .ensemble import Ensemble

            missing = [m for m in config.ensemble.members if not (folder / m / MODEL_FILE).is_file()]
            if missing:
                raise ModelFolderError(f"{folder} is an ensemble whose member {missing[0]} has no {MODEL_FILE}; "
                                       f"{_REFETCH}")
            members = [load_model(folder / m, device)[0] for m in config.ensemble.members]
            return Ensemble(members).to(device).eval(), config
    if not (folder / CONFIG_FILE).is_file() or not (folder / MODEL_FILE).is_file():
        raise ModelFolderError(f"{folder} is not a model folder: it needs {CONFIG_FILE} and {MODEL_FILE} "
                               "(written by training.train into OUTPUT_DIR/model)")
    config = read_model_config(folder)
    model = build_model(config.model)
    try:
        state = load_file(str(folder / MODEL_FILE), device=str(device))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for truncated/corrupt files
        raise ModelFolderError(f"{folder}/{MODEL_FILE} cannot be read ({' '.join(str(err).split())[:200]}): "
                               f"truncated or not a safetensors file; {_REFETCH}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:200]
        raise ModelFolderError(f"{folder}: the weights in {MODEL_FILE} do not fit the architecture in {CONFIG_FILE} "
                               f"({first}); the two files come from different models: {_REFETCH}") from None
    return model.to(device).eval(), config
