"""`ModuleMask`: how one decomposed module runs in a component pass (docs/method.md, 'Delta
component, sampling and routing').

A loss term, a metric or the app hands `ComponentModel.forward_with_components` one entry per
module that runs its components: a plain mask tensor (or `None`, unmasked), or a `ModuleMask`
that also carries the delta component's mask and a route. The module then computes

    y = U (m ⊙ V a) + m_Δ · (Δ a) + bias,   Δ = W − U V,

at the positions its route sends to the components, and exactly the target layer's output
W a + bias at the others. A term that chooses its own masks (stochastic, CI, adversarial)
builds these from its own sources.
"""

from dataclasses import dataclass

from jaxtyping import Bool, Float
from torch import Tensor


@dataclass(frozen=True)
class ModuleMask:
    """One module's masks for one component pass.

    `component`: the subcomponent mask m, shape (..., C); None: unmasked (all ones).
    `delta`: the delta component's mask m_Δ, one scalar per position, shape (...); None: no delta
    component (m_Δ = 0, and Δ is not computed).
    `route`: True where the position uses the components, False where it gets the target layer's
    output, shape (...); None: every position uses the components.
    """

    component: Float[Tensor, "... C"] | None = None
    delta: Float[Tensor, "..."] | None = None
    route: Bool[Tensor, "..."] | None = None


# What `forward_with_components` accepts per module: a `ModuleMask`, or a plain component mask
# (None: unmasked), as callers before the delta component and routing passed.
MaskLike = ModuleMask | Tensor | None


def as_module_mask(mask: MaskLike) -> ModuleMask:
    """`mask` as a `ModuleMask` (a plain tensor or None is the component mask alone)."""
    return mask if isinstance(mask, ModuleMask) else ModuleMask(component=mask)
