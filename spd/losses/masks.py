"""The stochastic masks of the method (docs/method.md, 'Masks and forward passes')."""

from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor


def stochastic_masks(ci: Mapping[str, Float[Tensor, "... C"]]) -> dict[str, Float[Tensor, "... C"]]:
    """m = g + (1 − g) ⊙ r with r ~ U(0, 1), drawn per example (and position) and subcomponent."""
    # `rand`, not `rand_like`: the draws then fill the masks in row-major order whatever the CI's
    # memory layout, so a seed gives the same masks on every code path.
    return {
        name: torch.addcmul(g, 1 - g, torch.rand(g.shape, dtype=g.dtype, device=g.device))
        for name, g in ci.items()
    }
