"""`pgd_recon_layerwise`: one decomposed layer at a time under adversarial masks, mean over layers
(docs/method.md, 'Adversarial (PGD) reconstruction').

Each layer's sources reach only its own pass, so one ascent on the mean over layers is each
layer's own ascent (the sign ignores the 1/L)."""

from collections.abc import Mapping

from torch import Tensor

from spd.losses.adversarial_sources import PGDParams, adversarial_masks
from spd.losses.inputs import LossInputs
from spd.losses.term import LossTerm, Masks, register_loss_term
from spd.losses.terms.recon_layerwise import layerwise_recon_loss
from spd.models.module_mask import ModuleMask


def _divergence(inputs: LossInputs, masks: Mapping[str, ModuleMask]) -> Tensor:
    return layerwise_recon_loss(
        inputs.model, inputs.batch, inputs.target_out, masks, inputs.output_loss_type
    )


def _masks(inputs: LossInputs, params: PGDParams) -> dict[str, ModuleMask]:
    return adversarial_masks(inputs, params, _divergence)


def _compute(inputs: LossInputs, params: PGDParams, masks: Masks) -> Tensor:
    return _divergence(inputs, masks)


TERM = register_loss_term(
    LossTerm("pgd_recon_layerwise", PGDParams, _compute, masks=_masks, row_mean=True)
)
