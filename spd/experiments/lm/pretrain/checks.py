"""Everything `spd-pretrain` checks before it writes anything: each failure is one line.

Names are resolved as the `lm` task resolves them (spd/experiments/lm/sources.py): a local path
as given, relative to the repository or to the output root; otherwise a hub id, checked to be
fetchable. Then the tokenizer must load and fit the vocabulary, the sequence must fit the
model's context, the batches must split over the ranks, and each split must hold text.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from spd.config.device import resolve_device
from spd.data.lm_data import FILE_FORMAT_BUILDERS, load_tokenizer
from spd.errors import SPDUserError, one_line
from spd.experiments.lm.pretrain.config import PretrainConfig
from spd.experiments.lm.pretrain.data import check_split
from spd.experiments.lm.pretrain.run_files import PretrainRunFiles
from spd.experiments.lm.sources import PRETRAIN_DIRNAME, find_local, missing_source
from spd.loading.hf_hub import HubResource, require_hub_resources
from spd.persistence.run_dir import check_writable_directory, output_root


@dataclass(frozen=True)
class PreparedRun:
    """A checked run: its config with local names made absolute and `model.vocab_size` set,
    the tokenizer and the device."""

    config: PretrainConfig
    tokenizer: PreTrainedTokenizerBase
    device: torch.device


def resolve_names(config: PretrainConfig) -> PretrainConfig:
    """`config` with local dataset and tokenizer names made absolute; hub ids checked."""
    data = config.data
    named = {"dataset": data.dataset_name, "tokenizer": data.tokenizer_name}
    local: dict[str, str] = {}
    hub: list[HubResource] = []
    for kind, name in named.items():
        path = find_local(name, config.out_dir)
        if path is not None:
            local[kind] = str(path)
        elif (missing := missing_source(name, config.out_dir)) is not None:
            raise missing
        elif kind == "dataset" and name in FILE_FORMAT_BUILDERS:
            continue  # a file format read from data_files
        elif kind == "dataset":
            hub.append(HubResource("dataset", name, "data.dataset_name"))
        else:
            hub.append(HubResource("tokenizer", name, "data.tokenizer_name"))
    require_hub_resources(hub)
    data = data.model_copy(
        update={
            "dataset_name": local.get("dataset", data.dataset_name),
            "tokenizer_name": local.get("tokenizer", data.tokenizer_name),
        }
    )
    return config.model_copy(update={"data": data})


def _tokenizer(name: str) -> PreTrainedTokenizerBase:
    try:
        return load_tokenizer(name)
    except SPDUserError:
        raise
    except Exception as err:  # transformers raises many kinds for missing tokenizer files
        raise SPDUserError(
            one_line(
                f"data.tokenizer_name {name} is not a complete tokenizer ({type(err).__name__}: "
                f"{str(err).strip()}); it needs tokenizer.json and tokenizer_config.json"
            )
        ) from None


def check_sizes(config: PretrainConfig, n_tokens: int, world_size: int) -> PretrainConfig:
    """The vocabulary holds the tokenizer, the sequence fits the context, the batches split over
    the ranks; returns `config` with `model.vocab_size` set (null: the tokenizer's size)."""
    model = config.model
    vocab = model.vocab_size if model.vocab_size is not None else n_tokens
    if vocab < n_tokens:
        raise SPDUserError(
            f"model.vocab_size {vocab} is smaller than the tokenizer's {n_tokens} tokens; set "
            f"model.vocab_size to at least {n_tokens} (null: exactly the tokenizer's size)"
        )
    if config.data.max_seq_len > model.max_seq_len:
        raise SPDUserError(
            f"data.max_seq_len {config.data.max_seq_len} is longer than model.max_seq_len "
            f"{model.max_seq_len}; shorten the sequences or raise model.max_seq_len"
        )
    for key, size in (
        ("batch_size", config.batch_size),
        ("eval_batch_size", config.eval_batch_size),
    ):
        if size % world_size != 0:
            raise SPDUserError(
                f"{key} {size} does not split evenly over {world_size} data-parallel ranks; make "
                f"it a multiple of {world_size}"
            )
    return config.model_copy(update={"model": model.model_copy(update={"vocab_size": vocab})})


def check_run_files(files: PretrainRunFiles, resume: bool, force: bool) -> None:
    """A new run needs a directory holding no run (unless `force`: it will be replaced); a
    resumed one needs a checkpoint there."""
    check_writable_directory(files.root, "run directory")
    if force:
        return
    if resume:
        if not files.checkpoint_paths():
            raise SPDUserError(
                f"--resume {files.root}: no checkpoint there ({files.checkpoints}/step_*.pt); "
                "start the run without --resume"
            )
        return
    if files.model_dir.exists():
        raise SPDUserError(
            f"{files.model_dir} exists: this model is pretrained already; use it, or pass "
            "--force to train it again from scratch"
        )
    if files.root.exists() and any(files.root.iterdir()):
        raise SPDUserError(
            f"{files.root} holds an unfinished run; continue it with `spd-pretrain --resume "
            f"{files.root}`, or pass --force to start again"
        )


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or warnings of `datasets` while checking: a refusal is one line."""
    bars_were_off = datasets.are_progress_bars_disabled()
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def prepare_run(
    config: PretrainConfig,
    files: PretrainRunFiles,
    world_size: int,
    resume: bool = False,
    force: bool = False,
) -> PreparedRun:
    """Every check, in an order that reads the cheap things first; writes nothing."""
    device = resolve_device(config.device)
    check_run_files(files, resume, force)
    config = resolve_names(config)
    tokenizer = _tokenizer(config.data.tokenizer_name)
    config = check_sizes(config, len(tokenizer), world_size)
    vocab = config.model.vocab_size
    assert vocab is not None
    with _quiet_datasets():
        for split in (config.data.train_split, config.data.eval_split):
            check_split(config.data, split, vocab)
    return PreparedRun(config, tokenizer, device)


def run_root(config: PretrainConfig, out: Path | None) -> Path:
    """The run directory: `out`, else <output root>/pretrain/<name>."""
    return out if out is not None else output_root(config.out_dir) / PRETRAIN_DIRNAME / config.name
