"""`stochastic_recon`: the output with every decomposed layer stochastically masked."""

from torch import Tensor

from spd.losses.inputs import LossInputs
from spd.losses.term import (
    LossTerm,
    Masks,
    SampledParams,
    draw_stochastic_masks,
    register_loss_term,
)
from spd.losses.terms.recon import recon_loss


def _compute(inputs: LossInputs, params: SampledParams, masks: Masks) -> Tensor:
    return recon_loss(inputs.model, inputs.batch, inputs.target_out, masks, inputs.output_loss_type)


TERM = register_loss_term(
    LossTerm(
        "stochastic_recon", SampledParams, _compute, masks=draw_stochastic_masks, row_mean=True
    )
)
