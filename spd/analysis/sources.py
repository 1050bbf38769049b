"""What an analysis pass reads for each kind of run: the vocabulary, the batches and the CI function.

The run's task says how its data is read (`Task.analysis_source`). A task of token sequences (a
language model) gives seeded token batches of its dataset, so a rerun draws the same batches; a
position's token is the input token there. A task of feature vectors (the toys) gives its sparse
feature vectors; each example is a sequence of length one whose "token" is its strongest active
feature (`f<i>`), or `(none)` when no feature is active. Those also get the CI of every one-hot
input and each subcomponent's read and write vectors. A task of other inputs (the `generic`
task) gives its data source's batches (`generic_source`).
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from spd.analysis.directions import aligned_tokens
from spd.analysis.generic_source import generic_source
from spd.analysis.pass_loop import Batch, CIFunction
from spd.config.schema import Config
from spd.data.lm_data import load_tokenizer
from spd.errors import SPDUserError
from spd.experiments.tasks import FeatureSource, InputSource, TokenSource, get_task
from spd.models.component_model import ComponentModel

# A fixed seed of its own: the pass's batches differ from the decomposition's training batches.
ANALYSIS_SEED = 2_718_281


@dataclass
class PassSource:
    """A pass's inputs: vocabulary strings, endless batches, CI per layer and per-layer extras."""

    kind: str
    vocab: list[str]
    batches: Iterator[Batch]
    ci_of: CIFunction
    extras: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _ci_function(model: ComponentModel, config: Config, sequence: bool) -> CIFunction:
    def ci_of(inputs: Tensor) -> dict[str, Float[Tensor, "batch seq C"]]:
        _, pre_acts = model.forward_with_pre_acts(inputs)
        ci, _ = model.causal_importances(pre_acts, config.sigmoid_type)
        return {name: v if sequence else v[:, None, :] for name, v in ci.items()}

    return ci_of


def lm_source(
    source: TokenSource,
    model: ComponentModel,
    config: Config,
    split: str,
    batch_size: int,
    device: torch.device,
) -> PassSource:
    """Token batches of the run's dataset (`split`: 'train' or 'eval'), vocabulary and aligned tokens."""
    source.prepare_target(model.target)
    model.to(device)
    tokenizer = load_tokenizer(source.tokenizer_name(config))
    get_embeddings = getattr(model.target, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    vocab_size = getattr(getattr(embeddings, "original", embeddings), "num_embeddings", None)
    if not isinstance(vocab_size, int):
        raise SPDUserError(
            f"{type(model.target).__name__} has no input embedding to size the vocabulary"
        )
    vocab = [str(tokenizer.decode([i])) for i in range(vocab_size)]
    tokens, described = source.batches(config, split, batch_size, ANALYSIS_SEED)

    def batches() -> Iterator[Batch]:
        for batch in tokens:
            on_device = batch.to(device)
            yield on_device, on_device

    return PassSource(
        kind="tokens",
        vocab=vocab,
        batches=batches(),
        ci_of=_ci_function(model, config, sequence=True),
        extras={name: aligned_tokens(model, name) for name in model.module_names},
        meta=dict(described),
    )


def toy_source(
    source: FeatureSource,
    model: ComponentModel,
    config: Config,
    split: str,
    batch_size: int,
    device: torch.device,
) -> PassSource:
    """The toy task's feature vectors, one-hot CI and each subcomponent's read/write vectors."""
    task_name = config.task_config.task_name
    model.to(device)
    first_layer = next(iter(model.components.values()))
    n_features = _n_features(model.target, first_layer.d_in)
    seed = ANALYSIS_SEED + (1 if split == "eval" else 0)
    stream = source.batches(config, n_features, batch_size, seed, device)
    vocab = [f"f{i}" for i in range(n_features)] + ["(none)"]

    def batches() -> Iterator[Batch]:
        for x in stream:
            strongest = x.abs().argmax(dim=-1)
            strongest[(x == 0).all(dim=-1)] = n_features
            yield strongest[:, None], x

    ci_of = _ci_function(model, config, sequence=False)
    with torch.no_grad():
        one_hot = torch.eye(n_features, device=device) * source.one_hot_value
        one_hot_ci = ci_of(one_hot)
    extras = {
        name: {
            "onehot_ci": one_hot_ci[name][:, 0, :].cpu().numpy(),
            "read_vector": comp.V.detach().T.cpu().numpy(),
            "write_vector": comp.U.detach().cpu().numpy(),
        }
        for name, comp in model.components.items()
    }
    return PassSource(
        kind="toy",
        vocab=vocab,
        batches=batches(),
        ci_of=ci_of,
        extras=extras,
        meta={"task": task_name, "one_hot_value": source.one_hot_value},
    )


def _n_features(target: nn.Module, first_d_in: int) -> int:
    config = getattr(target, "config", None)
    n = getattr(config, "n_features", None)
    return n if isinstance(n, int) else first_d_in


def pass_source(
    model: ComponentModel,
    config: Config,
    split: str,
    batch_size: int,
    device: torch.device,
) -> PassSource:
    """The source the run's task gives (`Task.analysis_source`)."""
    task = get_task(config.task_config.task_name)
    source = task.analysis_source
    if isinstance(source, TokenSource):
        return lm_source(source, model, config, split, batch_size, device)
    if isinstance(source, FeatureSource):
        return toy_source(source, model, config, split, batch_size, device)
    if isinstance(source, InputSource):
        vocab, batches, ci_of, meta = generic_source(
            source, model, config, split, batch_size, ANALYSIS_SEED, device
        )
        return PassSource(kind="inputs", vocab=vocab, batches=batches, ci_of=ci_of, meta=meta)
    raise SPDUserError(
        f"spd-analyze cannot read runs of task '{task.name}': it has no analysis_source"
    )
