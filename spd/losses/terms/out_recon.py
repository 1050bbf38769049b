"""`out_recon`: the output with every layer's components unmasked, against the target's."""

from torch import Tensor

from spd.losses.inputs import LossInputs
from spd.losses.term import LossTerm, Masks, NoParams, register_loss_term
from spd.losses.terms.recon import recon_loss


def _compute(inputs: LossInputs, params: NoParams, masks: Masks) -> Tensor:
    unmasked = dict.fromkeys(inputs.model.module_names)
    return recon_loss(
        inputs.model, inputs.batch, inputs.target_out, unmasked, inputs.output_loss_type
    )


TERM = register_loss_term(LossTerm("out_recon", NoParams, _compute, row_mean=True))
