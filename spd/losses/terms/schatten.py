"""`schatten`: the CI-weighted squared norms of the subcomponents (optional)."""

from collections.abc import Mapping

import torch
from pydantic import Field, PositiveFloat
from torch import Tensor

from spd.config.schema import StrictModel
from spd.losses.inputs import LossInputs
from spd.losses.row_selection import RowSelection
from spd.losses.term import LossTerm, Masks, register_loss_term
from spd.losses.terms.importance_minimality import IMPORTANCE_EPS, example_mean
from spd.models.component_model import ComponentModel


class SchattenParams(StrictModel):
    """Parameters of `schatten`."""

    pnorm: PositiveFloat | None = Field(
        default=None,
        description=(
            "Exponent p of the CI values; null: importance_minimality's p at each step (its "
            "schedule, as before terms had parameter blocks)"
        ),
    )


def schatten_loss(
    model: ComponentModel,
    ci_upper: Mapping[str, Tensor],
    pnorm: float,
    rows: RowSelection | None = None,
) -> Tensor:
    """Σ_l mean over examples of Σ_c g_upper^p (‖V_c‖² + ‖U_c‖²)."""
    terms = []
    for name, g in ci_upper.items():
        comp = model.components[name]
        sizes = comp.V.pow(2).sum(0) + comp.U.pow(2).sum(1)
        terms.append(example_mean(((g + IMPORTANCE_EPS) ** pnorm * sizes).sum(-1), rows))
    return torch.stack(terms).sum()


def _compute(inputs: LossInputs, params: SchattenParams, masks: Masks) -> Tensor:
    pnorm = inputs.pnorm if params.pnorm is None else params.pnorm
    return schatten_loss(inputs.model, inputs.ci_upper, pnorm, inputs.rows)


TERM = register_loss_term(LossTerm("schatten", SchattenParams, _compute))
