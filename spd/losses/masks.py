"""The stochastic masks of the method (docs/method.md, 'Masks and forward passes', and 'Delta
component, sampling and routing')."""

from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from spd.config.schema import Sampling


def stochastic_masks(
    ci: Mapping[str, Float[Tensor, "... C"]], sampling: Sampling = "continuous"
) -> dict[str, Float[Tensor, "... C"]]:
    """m = g + (1 − g) ⊙ r, drawn per example (and position) and subcomponent: r ~ U(0, 1)
    (`continuous`), or r ∈ {0, 1} with probability 1/2 each (`binomial`, so m is g or 1)."""
    # `rand`, not `rand_like`: the draws then fill the masks in row-major order whatever the CI's
    # memory layout, so a seed gives the same masks on every code path.
    masks: dict[str, Tensor] = {}
    for name, g in ci.items():
        r = torch.rand(g.shape, dtype=g.dtype, device=g.device)
        if sampling == "continuous":
            masks[name] = torch.addcmul(g, 1 - g, r)
        else:
            # A select, so that m is exactly 1 where r = 1, with the gradient of g + (1 − g) r.
            masks[name] = torch.where(r < 0.5, g, torch.ones_like(g))
    return masks


def delta_masks(
    ci: Mapping[str, Float[Tensor, "... C"]], sampling: Sampling
) -> dict[str, Float[Tensor, "..."]]:
    """The delta component's masks m_Δ, one per example (and position) of each module: r itself
    (the delta component is a subcomponent whose CI is always 0), U(0, 1) or {0, 1}."""
    masks: dict[str, Tensor] = {}
    for name, g in ci.items():
        r = torch.rand(g.shape[:-1], dtype=g.dtype, device=g.device)
        masks[name] = r if sampling == "continuous" else (r < 0.5).to(g.dtype)
    return masks
