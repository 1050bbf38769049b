"""One micro-batch's training loss, from the target pass to the weighted sum of the terms."""

from dataclasses import dataclass

from torch import Tensor

from spd.config.schema import Config
from spd.losses.inputs import loss_inputs
from spd.losses.precision import forward_autocast
from spd.losses.row_selection import RowSelection
from spd.losses.total import configured_terms, total_loss
from spd.models.component_model import ComponentModel
from spd.models.low_rank_stream import shared_products


@dataclass
class BatchLoss:
    """One (micro-)batch's training loss and what the step's bookkeeping needs from it."""

    total: Tensor
    terms: dict[str, Tensor]  # each configured term, detached
    ci: dict[str, Tensor]  # mask-side CI of the rows the losses were computed on
    rows: RowSelection | None  # those rows, or None for the whole batch


def batch_loss(model: ComponentModel, batch: Tensor, config: Config, pnorm: float) -> BatchLoss:
    """`loss_inputs` (target pass, row selection, causal importances), then `total_loss` of the
    configured terms, with importance_minimality's p at `pnorm`.

    Products of fixed and trained factors that several passes share are formed once
    (`spd.models.low_rank_stream.shared_products`). `spd.train.compilation` runs the same two
    calls with `total_loss` compiled. Under `autocast_bf16` both run in bf16 autocast
    (`spd.losses.precision`).
    """
    with shared_products(), forward_autocast(config.autocast_bf16, batch.device):
        inputs = loss_inputs(model, batch, config, pnorm)
        total, terms = total_loss(inputs, configured_terms(config))
    return BatchLoss(total=total, terms=terms, ci=dict(inputs.ci), rows=inputs.rows)
