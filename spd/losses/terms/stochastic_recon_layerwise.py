"""`stochastic_recon_layerwise`: the output with one stochastically masked layer at a time."""

from torch import Tensor

from spd.losses.inputs import LossInputs
from spd.losses.term import (
    LossTerm,
    Masks,
    SampledParams,
    draw_stochastic_masks,
    register_loss_term,
)
from spd.losses.terms.recon_layerwise import layerwise_recon_loss


def _compute(inputs: LossInputs, params: SampledParams, masks: Masks) -> Tensor:
    return layerwise_recon_loss(
        inputs.model, inputs.batch, inputs.target_out, masks, inputs.output_loss_type
    )


TERM = register_loss_term(
    LossTerm(
        "stochastic_recon_layerwise",
        SampledParams,
        _compute,
        masks=draw_stochastic_masks,
        row_mean=True,
    )
)
