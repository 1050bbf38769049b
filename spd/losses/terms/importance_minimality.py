"""`importance_minimality`: the p-norm of the CI values, the method's sparsity pressure, with
the optional frequency term of the 2026 objective (`beta`)."""

from collections.abc import Mapping
from typing import Self

import torch
from jaxtyping import Float
from pydantic import Field, NonNegativeFloat, PositiveFloat, model_validator
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
    beta: NonNegativeFloat = Field(
        default=0.0,
        description="Weight of the frequency term (S_c/n)·log2(1 + S_c·world_size); 0: the classic term",
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


def _world_size() -> int:
    # The losses stage sits below spd.train: read the process group directly.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def position_sums(
    ci_upper: Float[Tensor, "... C"], pnorm: float, rows: RowSelection | None
) -> tuple[Float[Tensor, " C"], int]:
    """(S_c = Σ_positions (g_upper,c + ε)^p over the whole batch, the number of positions n).

    Under `rows` the inert representative row counts as often as the inert rows it stands for.
    """
    powered = (ci_upper + IMPORTANCE_EPS) ** pnorm
    if rows is None:
        return powered.flatten(0, -2).sum(0), powered[..., 0].numel()
    weights = rows.weights.view(-1, *[1] * (powered.dim() - 1))
    per_row_positions = powered[0, ..., 0].numel()
    return (powered * weights).flatten(0, -2).sum(0), rows.n_rows * per_row_positions


def frequency_importance_loss(
    ci_upper: Mapping[str, Float[Tensor, "... C"]],
    pnorm: float,
    beta: float,
    world_size: int,
    rows: RowSelection | None = None,
) -> Tensor:
    """Σ_l Σ_c [S_c/n + β · (S_c/n) · log2(1 + S_c · world_size)] (`position_sums`).

    Under data parallelism S_c is the rank's own sum; `world_size` scales it to an estimate of
    the global one inside the logarithm.
    """
    per_layer = []
    for g in ci_upper.values():
        sums, n = position_sums(g, pnorm, rows)
        freq = sums / n
        per_layer.append((freq + beta * freq * torch.log2(1 + sums * world_size)).sum())
    return torch.stack(per_layer).sum()


def _compute(inputs: LossInputs, params: ImportanceMinimalityParams, masks: Masks) -> Tensor:
    # `inputs.pnorm` is this term's p schedule at the step (spd.train.step.apply_schedules).
    if params.beta == 0:
        # The classic term, on its own (bitwise unchanged) code path.
        return importance_minimality_loss(inputs.ci_upper, inputs.pnorm, inputs.rows)
    return frequency_importance_loss(
        inputs.ci_upper, inputs.pnorm, params.beta, _world_size(), inputs.rows
    )


TERM = register_loss_term(LossTerm("importance_minimality", ImportanceMinimalityParams, _compute))


def importance_params(config: Config) -> ImportanceMinimalityParams:
    """The term's parameter block in `config` (its defaults when the term is not listed): the p
    schedule that `spd.train.step.apply_schedules` evaluates every step."""
    params = config.loss_params(TERM.name)
    assert isinstance(params, ImportanceMinimalityParams)
    return params
