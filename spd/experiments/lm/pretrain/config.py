"""The YAML config of `spd-pretrain`: which model, on which text, for how long.

name: ss_llama_simple_mlp-2L          # the run directory: <output root>/pretrain/<name>
model: {architecture: llama, d_model: 128, n_layers: 2, ...}   (target_models/config.py)
data: {dataset_name: lm_offline_example/data, text_column: story, tokenizer_name: ..., ...}
steps: 3000
batch_size: 16
...
"""

from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from spd.config.device import check_device_string
from spd.config.loading import apply_overrides, read_yaml
from spd.config.schema import LRSchedule, StrictModel
from spd.errors import SPDUserError
from spd.experiments.lm.target_models.config import TargetLMConfig


class PretrainDataConfig(StrictModel):
    """The corpus and tokenizer: the same names and rules as the `lm` task's block
    (spd/experiments/lm/config.py, spd/experiments/lm/sources.py)."""

    dataset_name: str = Field(
        description="Hub dataset id, local directory of data files or of `save_to_disk`, or a "
        "file format ('json', 'text', 'parquet', 'csv', 'arrow') read from data_files"
    )
    dataset_config_name: str | None = Field(
        default=None, description="The dataset's configuration (subset) name, if it has several"
    )
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        default=None,
        description="Data files to read (passed to datasets.load_dataset), e.g. "
        "{train: a.jsonl, test: b.jsonl}",
    )
    text_column: str = Field(
        default="text",
        description="Column of each document's text (with pretokenized: its token ids)",
    )
    pretokenized: bool = Field(
        default=False,
        description="The column holds lists of token ids already (packed as they are, no EOS added)",
    )
    train_split: str = Field(default="train", description="Split (or slice) to train on")
    eval_split: str = Field(
        default="test", description="Held-out split (or slice) for the eval loss"
    )
    max_seq_len: PositiveInt = Field(description="Tokens per training sequence")
    streaming: bool = Field(
        default=False, description="Stream the dataset instead of loading it whole"
    )
    shuffle_buffer_size: PositiveInt = Field(
        default=10_000, description="Documents held for shuffling when streaming"
    )
    tokenizer_name: str = Field(
        description="Hub id or local directory of the tokenizer (saved beside the trained model)"
    )

    @model_validator(mode="after")
    def _check_splits(self) -> Self:
        if self.train_split == self.eval_split:
            raise ValueError(
                f"train_split and eval_split are both '{self.train_split}'; evaluate on held-out "
                "data (another split, or slices such as 'train[:99%]' / 'train[99%:]')"
            )
        return self


class PretrainConfig(StrictModel):
    """One pretraining run of a target language model."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Name of the run: its directory is <output root>/pretrain/<name> (letters, "
        "digits, '.', '_', '-')",
    )
    seed: NonNegativeInt = Field(default=0, description="Seed of the initialisation and data order")
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    out_dir: str | None = Field(
        default=None, description="Output root (SPD_OUT_DIR wins; default ./spd_out)"
    )
    model: TargetLMConfig = Field(description="The architecture and its sizes")
    data: PretrainDataConfig = Field(description="Corpus, tokenizer and sequence length")
    steps: PositiveInt = Field(description="Optimiser steps")
    batch_size: PositiveInt = Field(description="Sequences per step (over all data-parallel ranks)")
    lr: PositiveFloat = Field(description="Peak learning rate of AdamW")
    lr_schedule: LRSchedule = Field(default="cosine", description="Decay after the warm-up")
    lr_warmup_pct: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Fraction of the steps spent warming up linearly"
    )
    lr_exponential_halflife: PositiveFloat | None = Field(
        default=None, description="Half-life in steps of the exponential schedule"
    )
    weight_decay: NonNegativeFloat = Field(
        default=0.1, description="AdamW weight decay of the matrices (not of norms and biases)"
    )
    adam_betas: tuple[float, float] = Field(default=(0.9, 0.95), description="AdamW's betas")
    grad_clip_norm: PositiveFloat | None = Field(
        default=1.0, description="Clip the gradient to this global norm; null: no clipping"
    )
    log_freq: PositiveInt = Field(default=50, description="Steps between train-loss lines")
    eval_freq: PositiveInt = Field(
        default=500, description="Steps between eval losses (and at the end)"
    )
    eval_batch_size: PositiveInt = Field(default=16, description="Sequences per eval batch")
    n_eval_batches: PositiveInt = Field(
        default=4, description="Eval batches: the same held-out sequences at every evaluation"
    )
    save_freq: PositiveInt | None = Field(
        default=1000, description="Steps between checkpoints; null: only on a stop signal"
    )
    keep_last_checkpoints: PositiveInt = Field(default=2, description="Checkpoints kept on disk")

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        check_device_string(device)
        return device

    @model_validator(mode="after")
    def _check_schedule(self) -> Self:
        if self.lr_schedule == "exponential" and self.lr_exponential_halflife is None:
            raise ValueError("lr_schedule 'exponential' needs lr_exponential_halflife")
        for beta in self.adam_betas:
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"adam_betas must lie in [0, 1), got {self.adam_betas}")
        return self


def _describe(error: Any, source: str) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{source}: unknown config key '{key}'"
    if error["type"] == "missing":
        return f"{source}: missing required config key '{key}'"
    return f"{source}: invalid value for '{key}': {error['msg']}"


def pretrain_config_from_dict(data: dict[str, Any], source: str) -> PretrainConfig:
    """Validate a plain dict as a `PretrainConfig`; every problem on one `SPDUserError` line."""
    try:
        return PretrainConfig.model_validate(data)
    except ValidationError as err:
        raise SPDUserError("; ".join(_describe(e, source) for e in err.errors())) from None


def load_pretrain_config(path: Path, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """Read a pretraining config from YAML, apply dotted `overrides`, validate."""
    return pretrain_config_from_dict(apply_overrides(read_yaml(path), overrides or {}), str(path))


def pretrain_config_to_yaml(config: PretrainConfig) -> str:
    """The YAML that `load_pretrain_config` reads back as `config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
