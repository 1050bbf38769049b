"""What a metric or figure sees at one evaluation: the model, the config and shared computations.

Shared results (target outputs, causal importances on the eval batches, CI on one-hot inputs)
are computed once per evaluation and dropped with the context, so nothing accumulates over a run.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from spd.config.schema import Config
from spd.models.component_model import ComponentModel


@dataclass
class EvalBatch:
    inputs: Tensor
    target_out: Tensor
    ci: dict[str, Tensor]
    ci_upper: dict[str, Tensor]


@dataclass
class EvalContext:
    model: ComponentModel
    config: Config
    inputs: list[Tensor]
    step: int
    _batches: list[EvalBatch] | None = field(default=None, repr=False)
    _one_hot: dict[float, dict[str, Tensor]] = field(default_factory=dict, repr=False)

    @property
    def batches(self) -> list[EvalBatch]:
        """Target outputs and causal importances for every eval batch (computed on first use)."""
        if self._batches is None:
            self._batches = []
            with torch.no_grad():
                for x in self.inputs:
                    out, pre_acts = self.model.forward_with_pre_acts(x)
                    ci, ci_upper = self.model.causal_importances(pre_acts, self.config.sigmoid_type)
                    self._batches.append(EvalBatch(x, out, ci, ci_upper))
        return self._batches

    def one_hot_ci(self, value: float = 0.75) -> dict[str, Float[Tensor, "n_features C"]]:
        """CI of each layer when the input is `value` times each one-hot feature vector (toy models)."""
        if value not in self._one_hot:
            n_features = self.inputs[0].shape[-1]
            device = self.inputs[0].device
            x = torch.eye(n_features, device=device) * value
            with torch.no_grad():
                _, pre_acts = self.model.forward_with_pre_acts(x)
                ci, _ = self.model.causal_importances(pre_acts, self.config.sigmoid_type)
            self._one_hot[value] = ci
        return self._one_hot[value]


def diagonal_permutation(ci: Float[Tensor, "n_features C"]) -> list[int]:
    """Column order that puts the largest CI on the diagonal (linear-sum assignment).

    Assigned columns come first in feature order; the rest follow by decreasing total CI.
    """
    values = ci.detach().cpu().numpy()
    rows, cols = linear_sum_assignment(-values)
    assigned = [int(c) for _, c in sorted(zip(rows, cols, strict=True))]
    rest = [int(c) for c in np.argsort(-values.sum(0)) if c not in set(assigned)]
    return assigned + rest
