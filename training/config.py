"""Training and fine-tuning configuration: one typed, validated schema (YAML in, errors that name the field)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from generators.config import ConfigError, Strict, format_errors, read_yaml, reject_non_finite, set_dotted


class DataSource(Strict):
    """Records of one split of a dataset folder, optionally narrowed by a metadata query."""
    path: str
    split: str = "train"
    query: str | None = None
    format: Literal["parquet", "webdataset"] = "parquet"
    n_images: int | None = Field(None, ge=1,
                                 description="keep N records, drawn with the run's seed (fine-tuning amounts)")

    @property
    def label(self) -> str:
        return f"{self.path}[{self.split}]" + (f" where {self.query}" if self.query else "")


class Benchmark(DataSource):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    split: str = "validation"
    format: Literal["parquet"] = "parquet"


class UNetConfig(Strict):
    depth: int = Field(4, ge=1, le=6, description="number of 2x downsamplings")
    base_width: int = Field(16, ge=2, le=256, description="channels of the first level; doubled at each level")
    # GroupNorm by default: with few, small batches BatchNorm's running statistics lag the weights, and a network
    # that segments well in train mode predicts nothing in eval mode for the first epochs.
    norm: Literal["batch", "group", "none"] = "group"


class SegformerConfigSpec(Strict):
    """The SegFormer (MiT) encoder sizes; passed to transformers.SegformerConfig, trained from scratch."""
    hidden_sizes: list[int] = [32, 64, 160, 256]
    depths: list[int] = [2, 2, 2, 2]
    num_attention_heads: list[int] = [1, 2, 5, 8]
    decoder_hidden_size: int = 256
    drop_path_rate: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _stages(self):
        n = len(self.hidden_sizes)
        if not 1 <= n <= 4:
            raise ValueError(f"1 to 4 encoder stages, got {n}")
        if len(self.depths) != n or len(self.num_attention_heads) != n:
            raise ValueError("hidden_sizes, depths and num_attention_heads need one entry per encoder stage")
        for h, a in zip(self.hidden_sizes, self.num_attention_heads):
            if h % a:
                raise ValueError(f"hidden size {h} is not divisible by its {a} attention heads")
        return self


class ModelConfig(Strict):
    architecture: Literal["unet", "segformer"] = "unet"
    # Instance models: a second output channel, each particle's distance to its own edge (scaled to 1 at its
    # core), learnt from the records' instance_mask; touching particles are then separated by a seeded watershed
    # (training/instances.py). Binary models (false) take connected components of the mask as particles.
    instances: bool = Field(False, description="also predict a distance-to-edge channel and separate touching "
                            "particles (needs records with instance_mask)")
    unet: UNetConfig = UNetConfig()
    segformer: SegformerConfigSpec = SegformerConfigSpec()


class OptimizerConfig(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(0.01, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    lr_decay_per_epoch: float = Field(0.8, gt=0, le=1, description="lr x this after every epoch (seed study: 0.8)")


class AugmentConfig(Strict):
    crop_px: int | None = Field(None, ge=16, description="random square crops for training; None: whole images")
    flips: bool = True
    rot90: bool = True
    # minmax / zscore per image; percentile: the 0.5-99.5 % range to [0, 1], clipped (robust to the single hot
    # pixels of Poisson noise, and what a display rendering of a micrograph does)
    normalise: Literal["minmax", "zscore", "percentile"] = "minmax"
    # Training only. Gaussian blur of a random sigma in [0, blur_sigma_px] (micrographs rendered at a coarser
    # pixel, softer optics); display: clip to random low/high percentiles (0-2 %, 98-100 %) and quantise to 8 bits,
    # as the grey levels of exported or rendered micrographs are.
    blur_sigma_px: float = Field(0.0, ge=0, le=10)
    display: bool = False


class LossConfig(Strict):
    bce_weight: float = Field(1.0, ge=0)
    dice_weight: float = Field(1.0, ge=0)
    distance_weight: float = Field(1.0, ge=0, description="instance models: weight of the distance channel's "
                                   "binary cross-entropy against its soft target")

    @model_validator(mode="after")
    def _some(self):
        if self.bce_weight == 0 and self.dice_weight == 0:
            raise ValueError("bce_weight and dice_weight are both 0: nothing to train on")
        return self


class TrainConfig(Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.\-]+$")
    output_dir: str
    seed: int = Field(0, ge=0)
    epochs: int = Field(25, ge=1, le=10_000)
    batch_size: int = Field(16, ge=1)
    data: DataSource | list[DataSource] = Field(description="one source, or several (Parquet) whose records are pooled")
    benchmarks: list[Benchmark] = Field(min_length=1)
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    augment: AugmentConfig = AugmentConfig()
    loss: LossConfig = LossConfig()
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    num_workers: int = Field(0, ge=0)
    monitor: str | None = Field(None, description="benchmark whose Dice picks the best model (default: the first)")
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without a better monitor Dice")
    init_from: str | None = Field(None, description="model folder to start from (fine-tuning)")
    keep_checkpoints: int = Field(1, ge=1, description="resumable checkpoints kept besides the best model")
    # An exponential moving average of the weights is what is scored and saved: on real micrographs, which no
    # training image resembles exactly, single-epoch weights swing by several points of Dice from one epoch to
    # the next; their average does not (README, "Simulation to real micrographs").
    ema_decay: float | None = Field(None, ge=0.5, lt=1.0, description="weight EMA per optimizer step (e.g. 0.99); "
                                    "None: score and save the raw weights")

    @field_validator("benchmarks")
    @classmethod
    def _unique(cls, v):
        names = [b.name for b in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"benchmark names must be unique; repeated: {dup}")
        return v

    @model_validator(mode="after")
    def _monitor(self):
        names = [b.name for b in self.benchmarks]
        if self.monitor is not None and self.monitor not in names:
            raise ValueError(f"monitor {self.monitor!r} is not a benchmark name; choose one of {names}")
        return self

    @field_validator("data")
    @classmethod
    def _pooled(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one data source")
            if len(v) > 1 and any(s.format != "parquet" for s in v):
                raise ValueError("several data sources are pooled in memory: use format: parquet for each")
        return v

    @property
    def data_sources(self) -> list[DataSource]:
        return self.data if isinstance(self.data, list) else [self.data]

    @property
    def monitor_name(self) -> str:
        return self.monitor or self.benchmarks[0].name

    @property
    def phase(self) -> str:
        return "finetune" if self.init_from else "train"


def train_config(data: dict, source: str = "<dict>") -> TrainConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid training config ({source}): expected a mapping at the top level")
    reject_non_finite(data, source, "training config")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source, "training config")) from None


def read_with_overrides(path: str | Path, overrides: dict | None = None) -> dict:
    """The YAML mapping with dotted `key.sub=value` overrides applied (the command line's --set)."""
    return set_dotted(read_yaml(path, "training config"), overrides or {}, "--set")


def differing_keys(old: dict, new: dict, ignore=()) -> list[str]:
    """The top-level keys whose values differ between two configs' JSON forms, but those in `ignore`; sorted.
    What a run, a study or a study's finished job compares before it reuses a folder."""
    return sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    return train_config(read_with_overrides(path, overrides), str(path))
