"""`recon_layerwise`: the output with one CI-masked layer at a time, against the target's."""

from collections.abc import Mapping

import torch
from torch import Tensor

from spd.config.schema import OutputLossType
from spd.losses.inputs import LossInputs
from spd.losses.term import LossTerm, Masks, NoParams, register_loss_term
from spd.losses.terms.recon import recon_loss
from spd.models.component_model import ComponentModel
from spd.models.module_mask import MaskLike


def layerwise_recon_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    masks: Mapping[str, MaskLike],
    loss_type: OutputLossType,
) -> Tensor:
    """Mean over layers l of the divergence with only layer l replaced."""
    losses = [
        recon_loss(model, batch, target_out, {name: mask}, loss_type)
        for name, mask in masks.items()
    ]
    return torch.stack(losses).mean()


def _compute(inputs: LossInputs, params: NoParams, masks: Masks) -> Tensor:
    return layerwise_recon_loss(
        inputs.model, inputs.batch, inputs.target_out, inputs.ci, inputs.output_loss_type
    )


TERM = register_loss_term(LossTerm("recon_layerwise", NoParams, _compute, row_mean=True))
