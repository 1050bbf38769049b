"""Token batches for pretraining: a text corpus through the tokenizer, or token ids as stored.

Text goes through `spd.data.lm_data.lm_batches` (seeded document order, EOS after each
document, packed into full sequences, every `world_size`-th document per rank). A pretokenised
column (lists of token ids) is read in the same seeded order and packed as it is.
"""

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, cast

import torch
from jaxtyping import Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from spd.data.lm_data import lm_batches, load_text_split, shuffled_texts
from spd.errors import SPDUserError, one_line
from spd.experiments.lm.pretrain.config import PretrainDataConfig


def pack_token_lists(rows: Iterable[list[int]], seq_len: int) -> Iterator[list[int]]:
    """Concatenate token-id lists and cut them into `seq_len` pieces (the tail waits for more)."""
    buffer: list[int] = []
    for ids in rows:
        buffer.extend(int(i) for i in ids)
        n_full = len(buffer) // seq_len
        for k in range(n_full):
            yield buffer[k * seq_len : (k + 1) * seq_len]
        del buffer[: n_full * seq_len]


def token_batches(
    data: PretrainDataConfig,
    tokenizer: PreTrainedTokenizerBase,
    split: str,
    batch_size: int,
    seed: int,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[Int[Tensor, "batch seq"]]:
    """Endless (batch_size, max_seq_len) int64 batches of one split, reproducible from `seed`;
    `shard` = (rank, world size) keeps this rank's documents."""
    if not data.pretokenized:
        return lm_batches(data, tokenizer, split, batch_size, seed, shard=shard)
    index, count = shard
    # `shuffled_texts` yields whatever the column holds: here, lists of token ids.
    rows = cast(
        Iterator[list[int]],
        shuffled_texts(
            load_text_split(data, split), data.text_column, seed, data.shuffle_buffer_size
        ),
    )
    sequences = pack_token_lists(islice(rows, index, None, count), data.max_seq_len)
    return (
        torch.tensor(batch, dtype=torch.int64)
        for batch in iter(lambda: list(islice(sequences, batch_size)), [])
    )


def _usable(value: Any, data: PretrainDataConfig, vocab_size: int, where: str) -> bool:
    """Whether one document holds tokens; raises for a value of the wrong kind."""
    if not data.pretokenized:
        if not isinstance(value, str):
            raise SPDUserError(
                f"data.text_column '{data.text_column}' of {where} holds "
                f"{type(value).__name__}, not text; set data.pretokenized: true for token ids"
            )
        return bool(value.strip())
    if not isinstance(value, list) or not all(isinstance(i, int) for i in value):
        raise SPDUserError(
            f"data.text_column '{data.text_column}' of {where} does not hold lists of token ids; "
            "set data.pretokenized: false for text"
        )
    ids = cast(list[int], value)
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise SPDUserError(
            f"{where} holds token id {bad[0]}, outside the model's vocabulary of {vocab_size}; "
            "raise model.vocab_size or use the tokenizer the data was made with"
        )
    return bool(ids)


def check_split(data: PretrainDataConfig, split: str, vocab_size: int) -> None:
    """The split can be read, has the column and holds at least one non-empty document."""
    where = f"data split '{split}' of {data.dataset_name}"
    try:
        rows = load_text_split(data, split)
        for row in rows:
            if _usable(cast(dict[str, Any], row)[data.text_column], data, vocab_size, where):
                return
    except SPDUserError:
        raise
    except Exception as err:  # datasets raises many kinds for missing or damaged files
        text = str(err).strip()
        reason = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
        raise SPDUserError(one_line(f"{where} cannot be read ({reason}); fix data")) from None
    raise SPDUserError(f"{where} is empty (no document holds any text); give a corpus")
