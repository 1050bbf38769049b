"""The weighted sum of the configured loss terms."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from spd.config.loss_registry import LOSS_TERMS
from spd.config.schema import Config, StrictModel
from spd.losses.inputs import LossInputs, TermState
from spd.losses.term import LossTerm, StateContext


@dataclass(frozen=True)
class ConfiguredTerm:
    """A term of `losses:` with its coefficient and validated parameter block."""

    term: LossTerm[Any]
    coeff: float
    params: StrictModel


def configured_terms(config: Config) -> tuple[ConfiguredTerm, ...]:
    """The computed terms of `config` (coeff not null), in the order of `LOSS_TERMS`."""
    coeffs = config.loss_coeffs
    return tuple(
        ConfiguredTerm(
            cast(LossTerm[Any], term),
            coeffs[term.name],
            cast(StrictModel, config.loss_params(term.name)),
        )
        for term in LOSS_TERMS.in_order()
        if term.name in coeffs
    )


def build_term_states(
    terms: Sequence[ConfiguredTerm], context: Callable[[ConfiguredTerm], StateContext]
) -> dict[str, TermState]:
    """A fresh state for each of `terms` that keeps one (its `LossTerm.state` factory, told about
    the run by `context`), by term name. A factory refuses settings that do not fit the run."""
    return {
        c.term.name: c.term.state(c.params, context(c)) for c in terms if c.term.state is not None
    }


def total_loss(
    inputs: LossInputs, terms: Sequence[ConfiguredTerm]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Σ coeff_i · loss_i over `terms` (`configured_terms`); also returns each term (detached).

    The terms without masks are computed first, then the sampled ones: for each sample index, each
    term that draws that many masks, in order (so one seed gives the same masks as before terms
    had their own `n_mask_samples`). With `inputs.rows` (`spd.losses.row_selection`), every tensor
    holds only the selected rows of the batch, and each term is still the full batch's.
    """
    share = 1.0 if inputs.rows is None else inputs.rows.share
    values = {
        c.term.name: c.term.compute(inputs, c.params, {}) for c in terms if c.term.masks is None
    }
    sampled = [c for c in terms if c.term.masks is not None]
    draws: dict[str, list[Tensor]] = {c.term.name: [] for c in sampled}
    for sample in range(max((c.term.n_samples(c.params) for c in sampled), default=0)):
        for c in sampled:
            if sample < c.term.n_samples(c.params):
                assert c.term.masks is not None
                masks = c.term.masks(inputs, c.params)
                draws[c.term.name].append(c.term.compute(inputs, c.params, masks))
    by_term: dict[str, Tensor] = {}
    for c in terms:
        name = c.term.name
        value = torch.stack(draws[name]).mean() if name in draws else values[name]
        by_term[name] = share * value if c.term.row_mean else value
    total = torch.stack([c.coeff * by_term[c.term.name] for c in terms]).sum()
    return total, {name: value.detach() for name, value in by_term.items()}
