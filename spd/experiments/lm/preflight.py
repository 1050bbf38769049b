"""The checks of a language-model run that need no training, run before anything is launched.

`check_lm_run` is the LM task's `check`: the launcher calls it for every run of a launch or sweep,
and a decomposition script before it writes a run directory. Everything here reads only what is
on disk, cheaply: the model's config.json (and a weightless skeleton of the model on the meta
device), the tokenizer, and the first row of each split read as a stream. A hub id is not
looked at here (`sources.resolve_sources` checks that it can be fetched); these checks apply to
the local model, tokenizer and data a name resolves to. Each failure names the config key.
"""

import dataclasses
import logging
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig
from transformers.utils import logging as transformers_logging

from spd.config.schema import Config
from spd.data.lm_data import FILE_FORMAT_BUILDERS
from spd.errors import SPDUserError, one_line
from spd.experiments.lm.config import LMTaskConfig
from spd.experiments.lm.sources import find_local
from spd.experiments.lm.target_models.models import TargetLM, read_model_config
from spd.loading.targets import import_class
from spd.models.tie_check import check_decomposition

# The names transformers' model configs give the number of positions.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
GLOB_CHARACTERS = frozenset("*?[")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def check_data_files(task: LMTaskConfig, dataset_dir: Path | None) -> None:
    """Every local file named in `task_config.data_files` exists (globs and URLs are left to
    `datasets`); a relative name may be relative to the dataset directory."""
    files = task.data_files
    if files is None:
        return
    groups = files.values() if isinstance(files, dict) else [files]
    for group in groups:
        for name in [group] if isinstance(group, str) else group:
            if "://" in name or GLOB_CHARACTERS & set(name):
                continue
            places = [Path(name).expanduser()]
            if dataset_dir is not None:
                places.append(dataset_dir / name)
            if not any(p.is_file() for p in places):
                raise SPDUserError(
                    f"task_config.data_files: {name} does not exist (looked in "
                    f"{', '.join(str(p) for p in places)}); fix the path"
                )


def _open_split(task: LMTaskConfig, dataset: str, split: str) -> Any:
    """The split as a stream (a slice such as 'train[:99%]' is checked on its whole split)."""
    base = split.split("[", 1)[0]
    local = Path(dataset)
    if local.is_dir() and any((local / f).is_file() for f in ("dataset_dict.json", "state.json")):
        data = datasets.load_from_disk(str(local))
        if isinstance(data, datasets.DatasetDict):
            if base not in data:
                raise ValueError(
                    f"unknown split '{base}'; its splits are {', '.join(map(str, data))}"
                )
            data = data[base]
        return data.to_iterable_dataset()
    return datasets.load_dataset(
        dataset, task.dataset_config_name, data_files=task.data_files, split=base, streaming=True
    )


def check_splits(task: LMTaskConfig, dataset: str) -> None:
    """Each split exists, holds at least one document and has the text column."""
    for key, split in (("train_split", task.train_split), ("eval_split", task.eval_split)):
        where = f"task_config.{key} '{split}' of {dataset}"
        try:
            data = _open_split(task, dataset, split)
            first = next(iter(data), None)
        except StopIteration:  # `datasets` ends some empty streams this way, past `next`'s default
            first = None
        except Exception as err:  # datasets raises many kinds for a missing or damaged split
            raise SPDUserError(one_line(f"{where} cannot be read: {_first_line(err)}")) from None
        if first is None:
            raise SPDUserError(f"{where} is empty; give a split that holds documents")
        if task.text_column not in first:
            raise SPDUserError(
                f"task_config.text_column '{task.text_column}' is not a column of {where}; its "
                f"columns are: {', '.join(map(str, first))}"
            )
        if not isinstance(first[task.text_column], str):
            raise SPDUserError(
                f"task_config.text_column '{task.text_column}' of {where} holds "
                f"{type(first[task.text_column]).__name__}, not text"
            )


def _model_config(model_dir: Path) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(str(model_dir))
    except Exception as err:  # a missing or damaged config.json
        raise SPDUserError(
            one_line(
                f"pretrained_model_name_hf {model_dir} is not a complete model directory "
                f"(its config.json cannot be read: {_first_line(err)})"
            )
        ) from None


def check_positions(
    task: LMTaskConfig, model_config: PretrainedConfig, skeleton: nn.Module | None, model: str
) -> None:
    """`max_seq_len` fits in the model's learned position embedding, if it has one.

    Rotary or ALiBi positions (Llama and most recent models) have no hard limit, so only a model
    with an embedding table of exactly its configured number of positions is held to it.
    """
    if skeleton is None:
        return
    tables = {m.num_embeddings for m in skeleton.modules() if isinstance(m, nn.Embedding)}
    for key in POSITION_KEYS:
        positions = getattr(model_config, key, None)
        if isinstance(positions, int) and positions in tables and task.max_seq_len > positions:
            raise SPDUserError(
                f"task_config.max_seq_len {task.max_seq_len} is beyond the {positions} positions "
                f"of {model} ({key}); set max_seq_len to at most {positions}"
            )


def check_tokenizer(tokenizer_dir: Path, vocab_size: int | None) -> None:
    """The tokenizer directory loads, and its vocabulary fits in the model's embedding."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as err:  # transformers raises many kinds for missing tokenizer files
        raise SPDUserError(
            one_line(
                f"task_config.tokenizer_name {tokenizer_dir} is not a complete tokenizer "
                f"directory ({_first_line(err)}); it needs tokenizer.json (or the vocabulary "
                "files) and tokenizer_config.json"
            )
        ) from None
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise SPDUserError(
            f"task_config.tokenizer_name {tokenizer_dir} has {len(tokenizer)} tokens but the "
            f"model's vocabulary has {vocab_size}; use the model's own tokenizer"
        )


def check_output_attr(config: Config, model_class: type) -> None:
    """`pretrained_model_output_attr` is a field of what the model's forward returns (when its
    return type says: transformers' models annotate it with a `ModelOutput` dataclass)."""
    attr = config.pretrained_model_output_attr
    forward = getattr(model_class, "forward", None)
    if attr is None or forward is None:
        return
    try:
        returned = typing.get_type_hints(forward).get("return")
    except Exception:  # an annotation that does not resolve says nothing about the output
        return
    outputs = [t for t in (returned, *typing.get_args(returned)) if dataclasses.is_dataclass(t)]
    if not outputs:
        return
    fields = [f.name for f in dataclasses.fields(outputs[0])]
    if attr not in fields:
        raise SPDUserError(
            f"pretrained_model_output_attr '{attr}' is not an output of "
            f"{config.pretrained_model_class}; its outputs are: {', '.join(fields)}"
        )


def _skeleton(model_class: type, model_config: PretrainedConfig) -> nn.Module | None:
    """The model's modules without weights (on the meta device), or None if it cannot be built."""
    from_config = getattr(model_class, "_from_config", None)
    if from_config is None:
        return None
    try:
        with torch.device("meta"):
            model = from_config(model_config)
    except Exception:  # a class that cannot be built this way is checked by the run itself
        return None
    return model if isinstance(model, nn.Module) else None


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence datasets' and transformers' own warnings: a failed check is spd's one line."""
    levels = (datasets.logging.get_verbosity(), transformers_logging.get_verbosity())
    # CRITICAL: datasets logs a file it cannot parse at ERROR level before raising.
    datasets.logging.set_verbosity(logging.CRITICAL)
    transformers_logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


def check_target_lm(config: Config, model_dir: Path, tokenizer_dir: Path | None) -> None:
    """The checks for one of our own target models (spd/experiments/lm/target_models): its
    config.json, context length, vocabulary, output and the decomposed modules."""
    task = config.task_config
    assert isinstance(task, LMTaskConfig)
    model_config = read_model_config(model_dir)
    if task.max_seq_len > model_config.max_seq_len:
        raise SPDUserError(
            f"task_config.max_seq_len {task.max_seq_len} is beyond the {model_config.max_seq_len}"
            f"-token context of {model_dir} (its max_seq_len); set max_seq_len to at most "
            f"{model_config.max_seq_len}"
        )
    if tokenizer_dir is not None:
        check_tokenizer(tokenizer_dir, model_config.vocab_size)
    if config.pretrained_model_output_attr is not None:
        raise SPDUserError(
            f"{config.pretrained_model_class} returns its logits as a tensor; set "
            f"pretrained_model_output_attr: null (got '{config.pretrained_model_output_attr}')"
        )
    with torch.device("meta"):
        skeleton = TargetLM.build(model_config)
    check_decomposition(skeleton, config)


def check_lm_run(config: Config) -> None:
    """Every cheap check of an LM run's local model, tokenizer and data (module docstring)."""
    if isinstance(config.task_config, LMTaskConfig):
        with _quiet_libraries():
            _check_lm_sources(config)


def _check_lm_sources(config: Config) -> None:
    task = config.task_config
    assert isinstance(task, LMTaskConfig)
    dataset_dir = find_local(task.dataset_name, config.out_dir)
    check_data_files(task, dataset_dir)
    if dataset_dir is not None or task.dataset_name in FILE_FORMAT_BUILDERS:
        check_splits(task, str(dataset_dir or task.dataset_name))
    model_dir = (
        find_local(config.pretrained_model_name_hf, config.out_dir)
        if config.pretrained_model_name_hf is not None
        else None
    )
    model_class = import_class(config.pretrained_model_class)
    if model_dir is not None and issubclass(model_class, TargetLM):
        check_target_lm(config, model_dir, find_local(task.tokenizer_name, config.out_dir))
        return
    model_config = _model_config(model_dir) if model_dir is not None else None
    skeleton = _skeleton(model_class, model_config) if model_config is not None else None
    if model_config is not None:
        check_positions(task, model_config, skeleton, str(model_dir))
    tokenizer_dir = find_local(task.tokenizer_name, config.out_dir)
    if tokenizer_dir is not None:
        vocab = getattr(model_config, "vocab_size", None)
        check_tokenizer(tokenizer_dir, vocab if isinstance(vocab, int) else None)
    check_output_attr(config, model_class)
    if skeleton is not None:
        check_decomposition(skeleton, config)
