"""`persistent_pgd_recon`: the output with every decomposed layer masked by persistent adversarial
sources (`spd.losses.persistent_pgd`), against the target's; the sources ascend it step by step."""

from collections.abc import Mapping

from torch import Tensor

from spd.losses.inputs import LossInputs
from spd.losses.persistent_pgd import PersistentPGDParams, PersistentSources, persistent_sources
from spd.losses.term import LossTerm, Masks, StateContext, register_loss_term
from spd.losses.terms.recon import recon_loss
from spd.models.module_mask import ModuleMask

NAME = "persistent_pgd_recon"


def _loss(inputs: LossInputs, masks: Mapping[str, ModuleMask]) -> Tensor:
    return recon_loss(inputs.model, inputs.batch, inputs.target_out, masks, inputs.output_loss_type)


def _compute(inputs: LossInputs, params: PersistentPGDParams, masks: Masks) -> Tensor:
    return _loss(inputs, persistent_sources(inputs, NAME).masks(inputs))


def _state(params: PersistentPGDParams, context: StateContext) -> PersistentSources:
    return PersistentSources(params, context, _loss)


TERM = register_loss_term(
    LossTerm(NAME, PersistentPGDParams, _compute, row_mean=True, state=_state)
)
