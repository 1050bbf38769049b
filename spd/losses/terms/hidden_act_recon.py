"""`hidden_act_recon`: how far the input of each decomposed module drifts from the target's
when every module runs its stochastically masked components at once.

Σ_l Σ (a^l_masked − a^l_target)² / Σ_l (elements of a^l). Modules whose input is not a float
activation (an embedding's token ids) have nothing to drift and are left out. The metric of the
same name (`spd.eval.metrics`) reports it per module too.
"""

from collections.abc import Mapping

import torch
from torch import Tensor

from spd.losses.inputs import LossInputs
from spd.losses.term import (
    LossTerm,
    Masks,
    SampledParams,
    draw_stochastic_masks,
    register_loss_term,
)
from spd.models.component_model import ComponentModel
from spd.models.module_mask import MaskLike


def hidden_act_errors(
    model: ComponentModel,
    batch: Tensor,
    target_acts: Mapping[str, Tensor],
    masks: Mapping[str, MaskLike],
) -> dict[str, tuple[Tensor, int]]:
    """Per decomposed module with a float input: (Σ squared difference between its input in the
    masked pass and in the target pass, the number of elements)."""
    _, acts = model.forward_with_components_and_inputs(batch, masks)
    errors: dict[str, tuple[Tensor, int]] = {}
    for name in model.module_names:
        target = target_acts[name]
        if not target.is_floating_point():
            continue
        diff = acts[name].float() - target.float()
        errors[name] = (diff.pow(2).sum(), diff.numel())
    return errors


def hidden_act_recon_loss(
    model: ComponentModel,
    batch: Tensor,
    target_acts: Mapping[str, Tensor],
    masks: Mapping[str, MaskLike],
) -> Tensor:
    """The squared input differences summed over modules, over the total element count."""
    errors = hidden_act_errors(model, batch, target_acts, masks).values()
    return torch.stack([sq for sq, _ in errors]).sum() / sum(n for _, n in errors)


def target_inputs(inputs: LossInputs) -> Mapping[str, Tensor]:
    """Every decomposed module's input in the target pass: the step's own, or (when the target
    passed some as a `LowRankStream`) from one more target pass, formed densely."""
    if set(inputs.model.module_names) <= set(inputs.pre_acts):
        return inputs.pre_acts
    with torch.no_grad():
        return inputs.model.forward_with_pre_acts(inputs.batch)[1]


def _compute(inputs: LossInputs, params: SampledParams, masks: Masks) -> Tensor:
    return hidden_act_recon_loss(inputs.model, inputs.batch, target_inputs(inputs), masks)


TERM = register_loss_term(
    LossTerm(
        "hidden_act_recon", SampledParams, _compute, masks=draw_stochastic_masks, row_mean=True
    )
)
