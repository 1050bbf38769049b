"""`recon`: the output with every decomposed layer masked by its CI, against the target's."""

from collections.abc import Mapping

from torch import Tensor

from spd.config.schema import OutputLossType
from spd.losses.divergence import output_divergence
from spd.losses.inputs import LossInputs
from spd.losses.term import LossTerm, Masks, NoParams, register_loss_term
from spd.models.component_model import ComponentModel
from spd.models.module_mask import MaskLike


def recon_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    masks: Mapping[str, MaskLike],
    loss_type: OutputLossType,
) -> Tensor:
    """Divergence of the model with every layer in `masks` replaced, from the target output.

    The CI-masked terms pass the CI itself as each layer's mask: m = g, and m_Δ = 0 (no delta
    component; docs/method.md, 'Delta component, sampling and routing')."""
    return output_divergence(model.forward_with_components(batch, masks), target_out, loss_type)


def _compute(inputs: LossInputs, params: NoParams, masks: Masks) -> Tensor:
    return recon_loss(
        inputs.model, inputs.batch, inputs.target_out, inputs.ci, inputs.output_loss_type
    )


TERM = register_loss_term(LossTerm("recon", NoParams, _compute, row_mean=True))
