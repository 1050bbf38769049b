"""`pgd_recon`: the output with every decomposed layer under adversarial masks (fresh sources,
signed gradient ascent), against the target's (docs/method.md, 'Adversarial (PGD)
reconstruction')."""

from collections.abc import Mapping

from torch import Tensor

from spd.losses.adversarial_sources import PGDParams, adversarial_masks
from spd.losses.inputs import LossInputs
from spd.losses.term import LossTerm, Masks, register_loss_term
from spd.losses.terms.recon import recon_loss
from spd.models.module_mask import ModuleMask


def _divergence(inputs: LossInputs, masks: Mapping[str, ModuleMask]) -> Tensor:
    return recon_loss(inputs.model, inputs.batch, inputs.target_out, masks, inputs.output_loss_type)


def _masks(inputs: LossInputs, params: PGDParams) -> dict[str, ModuleMask]:
    return adversarial_masks(inputs, params, _divergence)


def _compute(inputs: LossInputs, params: PGDParams, masks: Masks) -> Tensor:
    return _divergence(inputs, masks)


TERM = register_loss_term(LossTerm("pgd_recon", PGDParams, _compute, masks=_masks, row_mean=True))
