"""`pgd_recon_subset`: adversarial masks in the modules a router picks per position (the others
run their target weight), against the target's output (docs/method.md, 'Adversarial (PGD)
reconstruction')."""

from collections.abc import Mapping

from torch import Tensor

from spd.losses.adversarial_sources import PGDParams, adversarial_masks
from spd.losses.inputs import LossInputs
from spd.losses.routing import RoutedParams
from spd.losses.term import LossTerm, Masks, register_loss_term
from spd.losses.terms.recon import recon_loss
from spd.models.module_mask import ModuleMask


class RoutedPGDParams(PGDParams, RoutedParams):
    """Parameters of `pgd_recon_subset`: the PGD settings and the router."""


def _divergence(inputs: LossInputs, masks: Mapping[str, ModuleMask]) -> Tensor:
    return recon_loss(inputs.model, inputs.batch, inputs.target_out, masks, inputs.output_loss_type)


def _masks(inputs: LossInputs, params: RoutedPGDParams) -> dict[str, ModuleMask]:
    """One sample: the routes first, then the ascent with those routes held fixed."""
    return adversarial_masks(inputs, params, _divergence, params.router)


def _compute(inputs: LossInputs, params: RoutedPGDParams, masks: Masks) -> Tensor:
    return _divergence(inputs, masks)


TERM = register_loss_term(
    LossTerm("pgd_recon_subset", RoutedPGDParams, _compute, masks=_masks, row_mean=True)
)
