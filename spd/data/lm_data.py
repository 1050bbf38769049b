"""Token batches for language-model decompositions, read with `datasets`.

Documents are taken in a seeded random order, tokenised with the model's tokenizer (no special
tokens added; the end-of-sequence token appended to each non-empty document when the tokenizer
has one), concatenated, and cut into sequences of exactly `max_seq_len` tokens; a document may
span two sequences and the tail of the last one is carried into the next epoch. Packing rather than
padding means every position is a real next-token prediction and no attention mask is needed.

The stream is endless: after the last document it reshuffles (epoch e uses the seed pair
(seed, e)) and goes on. The same task, split and seed give the same batches.
"""

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from itertools import islice
from pathlib import Path
from typing import Protocol, TypeVar

import datasets
import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from spd.errors import SPDUserError
from spd.loading.hf_hub import fetch_guard

TOKENIZE_CHUNK = 64  # documents per tokenizer call: large enough for the fast tokenizer's batching
LOAD_BLOCK = 1024  # documents read from a map-style dataset at a time


# `load_dataset` names of file formats, used with `data_files`; they never touch the hub.
FILE_FORMAT_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow"})

T = TypeVar("T")


class TextDataset(Protocol):
    """Where a language model's text comes from and how it is cut (the `lm` task's block has
    these fields; see its descriptions in `spd/experiments/lm/config.py`)."""

    @property
    def dataset_name(self) -> str: ...
    @property
    def dataset_config_name(self) -> str | None: ...
    @property
    def data_files(self) -> str | list[str] | dict[str, str | list[str]] | None: ...
    @property
    def text_column(self) -> str: ...
    @property
    def streaming(self) -> bool: ...
    @property
    def max_seq_len(self) -> int: ...
    @property
    def shuffle_buffer_size(self) -> int: ...


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer at a local directory or hub id (`task_config.tokenizer_name`)."""
    with fetch_guard("tokenizer", name, "task_config.tokenizer_name"):
        return AutoTokenizer.from_pretrained(name)


def _saved_with_save_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_text_split(
    task: TextDataset, split: str, cache_dir: Path | None = None
) -> datasets.Dataset | datasets.IterableDataset:
    """One split of the task's dataset: a `Dataset`, or an `IterableDataset` when streaming.

    `dataset_name` may be a hub id, a directory of data files (read with `load_dataset`), a
    directory written by `save_to_disk`, or a file format ('json', 'parquet', …) with
    `data_files`. `cache_dir` overrides the `datasets` cache (where `load_dataset` converts
    files to Arrow unless streaming).
    """
    local = Path(task.dataset_name).expanduser()
    if local.is_dir() and _saved_with_save_to_disk(local):
        data = datasets.load_from_disk(str(local))
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise SPDUserError(
                    f"split '{split}' is not in {local}; its splits are: {', '.join(map(str, data))}"
                )
            data = data[split]
        if task.streaming:
            data = data.to_iterable_dataset()
    else:
        guard: AbstractContextManager[None] = (
            nullcontext()
            if task.dataset_name in FILE_FORMAT_BUILDERS
            else fetch_guard("dataset", task.dataset_name, "task_config.dataset_name")
        )
        with guard:
            try:
                data = datasets.load_dataset(
                    task.dataset_name,
                    task.dataset_config_name,
                    data_files=task.data_files,
                    split=split,
                    streaming=task.streaming,
                    cache_dir=None if cache_dir is None else str(cache_dir),
                )
            except ValueError as err:
                # `datasets` reports an unknown split or config name as a ValueError.
                raise SPDUserError(
                    f"task_config ({task.dataset_name}, split '{split}'): {err}"
                ) from None
    columns = data.column_names
    if columns is not None and task.text_column not in columns:
        raise SPDUserError(
            f"task_config.text_column '{task.text_column}' is not a column of {task.dataset_name}; "
            f"its columns are: {', '.join(columns)}"
        )
    return data


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def shuffled_texts(
    data: datasets.Dataset | datasets.IterableDataset, text_column: str, seed: int, buffer_size: int
) -> Iterator[str]:
    """Every document's text, epoch after epoch, each epoch in its own seeded order.

    A map-style dataset is read in a full random permutation; a streaming one through the
    library's shuffle buffer of `buffer_size` documents.
    """
    if isinstance(data, datasets.Dataset):
        data = data.select_columns([text_column])
        if len(data) == 0:
            raise SPDUserError("the dataset split is empty")
    epoch = 0
    while True:
        seed_e = _epoch_seed(seed, epoch)
        n_seen = 0
        if isinstance(data, datasets.Dataset):
            order = np.random.default_rng(seed_e).permutation(len(data))
            for start in range(0, len(order), LOAD_BLOCK):
                texts = data[order[start : start + LOAD_BLOCK].tolist()][text_column]
                n_seen += len(texts)
                yield from texts
        else:
            for row in data.shuffle(seed=seed_e, buffer_size=buffer_size):
                n_seen += 1
                yield row[text_column]
        if n_seen == 0:
            raise SPDUserError("the dataset split is empty")
        epoch += 1


def pack_sequences(
    texts: Iterable[str], tokenizer: PreTrainedTokenizerBase, seq_len: int
) -> Iterator[list[int]]:
    """Tokenise `texts` and cut the concatenated tokens (EOS after each document) into `seq_len` pieces."""
    eos = tokenizer.eos_token_id
    buffer: list[int] = []
    for chunk in _chunks(texts, TOKENIZE_CHUNK):
        encoded = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        for ids in encoded:
            if not ids:
                continue  # an empty document (e.g. a blank line of a text file) adds no EOS
            buffer.extend(ids)
            if isinstance(eos, int):
                buffer.append(eos)
        n_full = len(buffer) // seq_len
        for k in range(n_full):
            yield buffer[k * seq_len : (k + 1) * seq_len]
        del buffer[: n_full * seq_len]


def lm_batches(
    task: TextDataset,
    tokenizer: PreTrainedTokenizerBase,
    split: str,
    batch_size: int,
    seed: int,
    cache_dir: Path | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[Int[Tensor, "batch seq"]]:
    """Endless (batch_size, max_seq_len) int64 token batches of one split, reproducible from `seed`.

    `shard` = (index, count) keeps every count-th document of the seeded order, from `index` on:
    data-parallel ranks share the seed and each packs its own documents, so no two ranks read the
    same text; (0, 1) keeps them all.
    """
    index, count = shard
    data = load_text_split(task, split, cache_dir)
    texts = shuffled_texts(data, task.text_column, seed, task.shuffle_buffer_size)
    texts = islice(texts, index, None, count)
    for rows in _chunks(pack_sequences(texts, tokenizer, task.max_seq_len), batch_size):
        yield torch.tensor(rows, dtype=torch.int64)
