"""`LossInputs`: what every loss term reads, and how one micro-batch becomes them."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from spd.config.schema import Config, OutputLossType, Sampling
from spd.losses.row_selection import RowSelection, check_independent_rows, select_rows
from spd.models.component_model import ComponentModel


class TermState(Protocol):
    """What a loss term keeps from step to step (e.g. persistent PGD's sources and their
    optimiser), built by its `spd.losses.term.LossTerm.state` factory (CLAUDE.md, 'Adding a loss
    term': per-term state)."""

    def prepare(self, inputs: "LossInputs") -> None:
        """Eagerly, before each micro-batch's loss (outside any compiled region): e.g. create the
        state's tensors on first use, from the shapes in `inputs`."""
        ...

    def update(self, step: int) -> None:
        """Once per optimiser step, after the step's backward passes (every micro-batch)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit-exactly (a checkpoint entry)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        ...


@dataclass(frozen=True)
class LossInputs:
    """What every loss term may read: the model, the (row-selected) batch and this step's CI.

    A term's own settings are its parameter block, not fields here; what a term needs from the
    step (a router's draw) is computed by the term from these, and what it keeps between steps
    (persistent PGD's sources) is its entry of `states` (CLAUDE.md, 'Adding a loss term').
    """

    model: ComponentModel
    batch: Tensor
    target_out: Tensor
    # The inputs of the decomposed layers that the target did not pass as a `LowRankStream`
    # (those are never formed densely in a step; `ci` covers every layer). Embeddings are never
    # streamed, so `embedding_recon` finds its token ids here.
    pre_acts: Mapping[str, Tensor]
    ci: Mapping[str, Tensor]
    ci_upper: Mapping[str, Tensor]
    output_loss_type: OutputLossType
    # importance_minimality's p at this step (its schedule, `spd.train.schedules.pnorm_at_step`).
    pnorm: float
    rows: RowSelection | None
    # The run's mask options (`Config.use_delta_component`, `Config.sampling`), which every
    # masking term honours.
    use_delta_component: bool = False
    sampling: Sampling = "continuous"
    # Each stateful term's state (`TermState`), by term name; empty when no term keeps state.
    states: Mapping[str, TermState] = field(default_factory=dict)


def loss_inputs(
    model: ComponentModel,
    batch: Tensor,
    config: Config,
    pnorm: float,
    states: Mapping[str, TermState] | None = None,
) -> LossInputs:
    """Target pass (no gradient), the CPU row selection (`spd.losses.row_selection`) and the
    causal importances of the kept rows, with the stateful terms' `states`. Call inside
    `shared_products()` with the loss."""
    with torch.no_grad():
        target_out, pre_acts, streams = model.forward_with_pre_act_streams(batch)
    rows = select_rows(model, pre_acts, streams)
    if rows is not None:
        check_independent_rows(model, batch, target_out, rows)
        batch, target_out = rows.take(batch), rows.take(target_out)
        pre_acts = {name: rows.take(a) for name, a in pre_acts.items()}
        streams = {name: s.take_rows(rows.index) for name, s in streams.items()}
    ci, ci_upper = model.causal_importances(pre_acts, config.sigmoid_type, streams=streams)
    if config.autocast_bf16:
        # The losses reduce in float32 (spd.losses.precision).
        target_out = target_out.float()
        ci = {name: g.float() for name, g in ci.items()}
        ci_upper = {name: g.float() for name, g in ci_upper.items()}
    return LossInputs(
        model,
        batch,
        target_out,
        pre_acts,
        ci,
        ci_upper,
        config.output_loss_type,
        pnorm,
        rows,
        config.use_delta_component,
        config.sampling,
        states or {},
    )
