"""`importance_minimality`: the p-norm of the CI values, the method's sparsity pressure."""

from collections.abc import Mapping
from typing import Self

import torch
from jaxtyping import Float
from pydantic import Field, PositiveFloat, model_validator
from torch import Tensor

from spd.config.schema import Config, Fraction, StrictModel
from spd.losses.inputs import LossInputs
from spd.losses.row_selection import RowSelection
from spd.losses.term import LossTerm, Masks, register_loss_term

IMPORTANCE_EPS = 1e-12


class ImportanceMinimalityParams(StrictModel):
    """Parameters of `importance_minimality`: p and its linear annealing (`spd.train.schedules`)."""

    pnorm: PositiveFloat = Field(
        default=1.0, description="Exponent p of the CI values (its start value when annealed)"
    )
    p_anneal_start_frac: Fraction = Field(
        default=1.0,
        description="Fraction of training at which p starts moving towards p_anneal_final_p",
    )
    p_anneal_final_p: PositiveFloat | None = Field(
        default=None, description="Value p reaches at p_anneal_end_frac; null: p stays pnorm"
    )
    p_anneal_end_frac: Fraction = Field(
        default=1.0, description="Fraction of training at which p reaches p_anneal_final_p"
    )

    @model_validator(mode="after")
    def _check_anneal(self) -> Self:
        if self.p_anneal_final_p is not None and self.p_anneal_end_frac < self.p_anneal_start_frac:
            raise ValueError("p_anneal_end_frac must not be smaller than p_anneal_start_frac")
        return self


def example_mean(per_example: Tensor, rows: RowSelection | None) -> Tensor:
    """The mean over the batch's examples: over all rows, or the full batch's under `rows`."""
    return per_example.mean() if rows is None else rows.mean(per_example)


def importance_minimality_loss(
    ci_upper: Mapping[str, Float[Tensor, "... C"]],
    pnorm: float,
    rows: RowSelection | None = None,
) -> Tensor:
    """Mean over examples (and positions) of Σ_l Σ_c (g_upper + ε)^p.

    With `rows`, `ci_upper` holds only the selected rows and the mean is the full batch's.
    """
    # p = 1 (the toy models' setting) needs no power: one pass less each way.
    per_layer = [
        example_mean(
            ((g + IMPORTANCE_EPS) if pnorm == 1 else (g + IMPORTANCE_EPS) ** pnorm).sum(-1), rows
        )
        for g in ci_upper.values()
    ]
    return torch.stack(per_layer).sum()


def _compute(inputs: LossInputs, params: ImportanceMinimalityParams, masks: Masks) -> Tensor:
    # `inputs.pnorm` is this term's p schedule at the step (spd.train.step.apply_schedules).
    return importance_minimality_loss(inputs.ci_upper, inputs.pnorm, inputs.rows)


TERM = register_loss_term(LossTerm("importance_minimality", ImportanceMinimalityParams, _compute))


def importance_params(config: Config) -> ImportanceMinimalityParams:
    """The term's parameter block in `config` (its defaults when the term is not listed): the p
    schedule that `spd.train.step.apply_schedules` evaluates every step."""
    params = config.loss_params(TERM.name)
    assert isinstance(params, ImportanceMinimalityParams)
    return params
