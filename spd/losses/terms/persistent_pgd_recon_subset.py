"""`persistent_pgd_recon_subset`: `persistent_pgd_recon` in the modules a router picks per
position (the others run their target weight), routes drawn afresh for every pass."""

from collections.abc import Mapping
from functools import partial

from pydantic import Field
from torch import Tensor

from spd.losses.inputs import LossInputs
from spd.losses.persistent_pgd import PersistentPGDParams, PersistentSources, persistent_sources
from spd.losses.routing import RouterParams, draw_routes, with_routes
from spd.losses.term import LossTerm, Masks, StateContext, register_loss_term
from spd.losses.terms.recon import recon_loss
from spd.models.module_mask import ModuleMask

NAME = "persistent_pgd_recon_subset"


class PersistentPGDSubsetParams(PersistentPGDParams):
    """Parameters of `persistent_pgd_recon_subset`: those of `persistent_pgd_recon` and a router."""

    router: RouterParams = Field(
        default_factory=RouterParams,
        description=(
            "Which modules use their components, per position, drawn afresh for each pass: "
            "{type: uniform_k_subset | static_probability | all, p: (static_probability only)}"
        ),
    )


def _routed_loss(
    inputs: LossInputs, masks: Mapping[str, ModuleMask], router: RouterParams
) -> Tensor:
    routed = with_routes(masks, draw_routes(router, inputs.ci))
    return recon_loss(
        inputs.model, inputs.batch, inputs.target_out, routed, inputs.output_loss_type
    )


def _compute(inputs: LossInputs, params: PersistentPGDSubsetParams, masks: Masks) -> Tensor:
    return _routed_loss(inputs, persistent_sources(inputs, NAME).masks(inputs), params.router)


def _state(params: PersistentPGDSubsetParams, context: StateContext) -> PersistentSources:
    return PersistentSources(params, context, partial(_routed_loss, router=params.router))


TERM = register_loss_term(
    LossTerm(NAME, PersistentPGDSubsetParams, _compute, row_mean=True, state=_state)
)
