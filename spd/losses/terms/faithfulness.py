"""`faithfulness`: the subcomponents of each decomposed matrix sum to the target matrix."""

import torch
from torch import Tensor

from spd.losses.inputs import LossInputs
from spd.losses.precision import full_precision
from spd.losses.term import LossTerm, Masks, NoParams, register_loss_term
from spd.models.component_model import ComponentModel


def faithfulness_loss(model: ComponentModel) -> Tensor:
    """Σ_l ‖W^l − U^l V^l‖²_F divided by the number of entries of all decomposed matrices."""
    squared_errors = []
    n_entries = 0
    for name, comp in model.components.items():
        diff = model.target_weight(name) - comp.weight
        squared_errors.append(diff.pow(2).sum())
        n_entries += diff.numel()
    return torch.stack(squared_errors).sum() / n_entries


def _compute(inputs: LossInputs, params: NoParams, masks: Masks) -> Tensor:
    # A parameter-space loss: float32 even under `autocast_bf16` (spd.losses.precision).
    with full_precision(inputs.batch.device):
        return faithfulness_loss(inputs.model)


TERM = register_loss_term(LossTerm("faithfulness", NoParams, _compute))
