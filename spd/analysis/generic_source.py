"""What an analysis pass reads for a `generic`-task run: the task's own data source.

The batches are those of the run's data source (`task_config.data_source`, seeded apart from
training). A batch's CI has shape (batch, C) or (batch, positions…, C); positions are flattened
into one sequence axis. What a position's "token" is depends on the input:
- integer inputs of shape (batch, seq) are token ids: the vocabulary is `t<id>` up to the
  target's input embedding size (or the largest id seen in the first batch);
- float inputs of shape (batch, d) or (batch, seq, d) are feature vectors: the token is the
  strongest input feature `f<i>` of the position, `(none)` when all are zero (as for the toys);
- any other input is one token `(input)` per position.
"""

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from spd.analysis.pass_loop import Batch, CIFunction
from spd.config.schema import Config
from spd.experiments.tasks import InputSource
from spd.models.component_model import ComponentModel


def _flat_ci(ci: Tensor, batch: int) -> Tensor:
    return ci.reshape(batch, -1, ci.shape[-1])


def _tokenizer(model: ComponentModel, first: Tensor, seq: int) -> tuple[list[str], Any]:
    """The vocabulary and a function from an input batch to its (batch, seq) token ids."""
    if not first.is_floating_point() and first.ndim == 2 and first.shape[1] == seq:
        get = getattr(model.target, "get_input_embeddings", None)
        embedding = get() if callable(get) else None
        size = getattr(getattr(embedding, "original", embedding), "num_embeddings", None)
        n = size if isinstance(size, int) else int(first.max()) + 1
        return [f"t{i}" for i in range(n)], lambda x: x.clamp(0, n - 1)
    if (
        first.is_floating_point()
        and first.ndim in (2, 3)
        and first[0].numel() // first.shape[-1] == seq
    ):
        d = first.shape[-1]

        def strongest(x: Tensor) -> Tensor:
            rows = x.reshape(x.shape[0], seq, d)
            ids = rows.abs().argmax(dim=-1)
            ids[(rows == 0).all(dim=-1)] = d
            return ids

        return [f"f{i}" for i in range(d)] + ["(none)"], strongest
    return ["(input)"], lambda x: torch.zeros(x.shape[0], seq, dtype=torch.long, device=x.device)


def generic_source(
    source: InputSource,
    model: ComponentModel,
    config: Config,
    split: str,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> tuple[list[str], Iterator[Batch], CIFunction, dict[str, Any]]:
    """(vocabulary, batches, CI function, meta) of a run whose task reads inputs of its own."""
    model.to(device)
    stream = source.batches(config, split, batch_size, seed + (1 if split == "eval" else 0), device)

    def ci_of(inputs: Tensor) -> dict[str, Tensor]:
        _, pre_acts = model.forward_with_pre_acts(inputs)
        ci, _ = model.causal_importances(pre_acts, config.sigmoid_type)
        return {name: _flat_ci(v, inputs.shape[0]) for name, v in ci.items()}

    first = next(stream)
    with torch.no_grad():
        seq = next(iter(ci_of(first).values())).shape[1]
    vocab, tokens_of = _tokenizer(model, first, seq)

    def batches() -> Iterator[Batch]:
        yield tokens_of(first), first
        for x in stream:
            yield tokens_of(x), x

    return vocab, batches(), ci_of, {"task": config.task_config.task_name}
