"""One micro-batch's training loss, from the target pass to the weighted sum of the terms."""

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from spd.config.schema import Config
from spd.losses.inputs import LossInputs, TermState, loss_inputs
from spd.losses.precision import forward_autocast
from spd.losses.row_selection import RowSelection
from spd.losses.term import StateContext
from spd.losses.total import ConfiguredTerm, build_term_states, configured_terms, total_loss
from spd.models.component_model import ComponentModel
from spd.models.low_rank_stream import shared_products


@dataclass
class BatchLoss:
    """One (micro-)batch's training loss and what the step's bookkeeping needs from it."""

    total: Tensor
    terms: dict[str, Tensor]  # each configured term, detached
    ci: dict[str, Tensor]  # mask-side CI of the rows the losses were computed on
    rows: RowSelection | None  # those rows, or None for the whole batch


def prepare_states(inputs: LossInputs) -> None:
    """Each stateful term's `TermState.prepare`, eagerly, before the micro-batch's loss."""
    for state in inputs.states.values():
        state.prepare(inputs)


def fresh_states(config: Config, batch: Tensor) -> dict[str, TermState]:
    """New states of `config`'s stateful terms for a one-off loss on `batch` in one process."""

    def context(c: ConfiguredTerm) -> StateContext:
        return StateContext(c.term.name, c.coeff, config.steps, batch.shape[0])

    return build_term_states(configured_terms(config), context)


def batch_loss(
    model: ComponentModel,
    batch: Tensor,
    config: Config,
    pnorm: float,
    states: Mapping[str, TermState] | None = None,
) -> BatchLoss:
    """`loss_inputs` (target pass, row selection, causal importances), then `total_loss` of the
    configured terms, with importance_minimality's p at `pnorm`. The stateful terms use `states`
    (a training run's, `spd.train.setup`); None gives them fresh ones (`fresh_states`).

    Products of fixed and trained factors that several passes share are formed once
    (`spd.models.low_rank_stream.shared_products`). `spd.train.compilation` runs the same two
    calls with `total_loss` compiled. Under `autocast_bf16` both run in bf16 autocast
    (`spd.losses.precision`).
    """
    with shared_products(), forward_autocast(config.autocast_bf16, batch.device):
        if states is None:
            states = fresh_states(config, batch)
        inputs = loss_inputs(model, batch, config, pnorm, states)
        prepare_states(inputs)
        total, terms = total_loss(inputs, configured_terms(config))
    return BatchLoss(total=total, terms=terms, ci=dict(inputs.ci), rows=inputs.rows)
