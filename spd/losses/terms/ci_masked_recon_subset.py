"""`ci_masked_recon_subset`: the output with CI-masked components (m = g) in the modules a router
picks per position (the others run their target weight), against the target's."""

from torch import Tensor

from spd.losses.inputs import LossInputs
from spd.losses.routing import RoutedParams, draw_routes, with_routes
from spd.losses.term import LossTerm, Masks, register_loss_term
from spd.losses.terms.recon import recon_loss
from spd.models.module_mask import ModuleMask


def routed_ci_masks(inputs: LossInputs, params: RoutedParams) -> dict[str, ModuleMask]:
    """One sample: every module masked by its CI (m_Δ = 0: no delta component), then the routes."""
    masks = {name: ModuleMask(component=g) for name, g in inputs.ci.items()}
    return with_routes(masks, draw_routes(params.router, inputs.ci))


def _compute(inputs: LossInputs, params: RoutedParams, masks: Masks) -> Tensor:
    return recon_loss(inputs.model, inputs.batch, inputs.target_out, masks, inputs.output_loss_type)


TERM = register_loss_term(
    LossTerm("ci_masked_recon_subset", RoutedParams, _compute, masks=routed_ci_masks, row_mean=True)
)
