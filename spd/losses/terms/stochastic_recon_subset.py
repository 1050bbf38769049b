"""`stochastic_recon_subset`: the output with stochastically masked components in the modules
a router picks per position (the others run their target weight), against the target's."""

from torch import Tensor

from spd.losses.inputs import LossInputs
from spd.losses.routing import RoutedParams, draw_routes, with_routes
from spd.losses.term import LossTerm, Masks, draw_stochastic_masks, register_loss_term
from spd.losses.terms.recon import recon_loss
from spd.models.module_mask import ModuleMask


def routed_stochastic_masks(inputs: LossInputs, params: RoutedParams) -> dict[str, ModuleMask]:
    """One sample: the stochastic masks (and delta masks) of every module, then the routes."""
    masks = draw_stochastic_masks(inputs, params)
    return with_routes(masks, draw_routes(params.router, inputs.ci))


def _compute(inputs: LossInputs, params: RoutedParams, masks: Masks) -> Tensor:
    return recon_loss(inputs.model, inputs.batch, inputs.target_out, masks, inputs.output_loss_type)


TERM = register_loss_term(
    LossTerm(
        "stochastic_recon_subset",
        RoutedParams,
        _compute,
        masks=routed_stochastic_masks,
        row_mean=True,
    )
)
