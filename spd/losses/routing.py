"""Routers: per position and module, whether the module runs its (masked) components or its
original target weight (docs/method.md, 'Delta component, sampling and routing')."""

from collections.abc import Mapping
from dataclasses import replace
from typing import Literal, Self

import torch
from jaxtyping import Bool, Float
from pydantic import Field, model_validator
from torch import Tensor

from spd.config.schema import StrictModel
from spd.losses.term import SampledParams
from spd.models.module_mask import ModuleMask

RouterType = Literal["all", "uniform_k_subset", "static_probability"]


class RouterParams(StrictModel):
    """The `router:` block of a routed loss term."""

    type: RouterType = Field(
        default="uniform_k_subset",
        description=(
            "all: every module uses its components; uniform_k_subset: per position, k uniform "
            "in 1..L, then a uniformly random k of the L decomposed modules use components; "
            "static_probability: each module uses components with probability p, independently"
        ),
    )
    p: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="static_probability only: the probability in (0, 1] of using components",
    )

    @model_validator(mode="after")
    def _check_p(self) -> Self:
        if self.type == "static_probability" and self.p is None:
            raise ValueError("router static_probability needs p in (0, 1]")
        if self.type != "static_probability" and self.p is not None:
            raise ValueError(f"router {self.type} takes no p (only static_probability does)")
        return self


def draw_routes(
    router: RouterParams, ci: Mapping[str, Float[Tensor, "... C"]]
) -> dict[str, Bool[Tensor, "..."]] | None:
    """For each module of `ci` (its L decomposed modules, in order), True at the positions that
    use components; None for `all` (no draw: every position does)."""
    if router.type == "all":
        return None
    shapes = {g.shape[:-1] for g in ci.values()}
    assert len(shapes) == 1, f"modules with different positions cannot share a router: {shapes}"
    first = next(iter(ci.values()))
    shape, device = first.shape[:-1], first.device
    names = list(ci)
    if router.type == "static_probability":
        assert router.p is not None
        return {name: torch.rand(shape, device=device) < router.p for name in names}
    n_modules = len(names)
    k = torch.randint(1, n_modules + 1, shape, device=device)
    # The ranks of iid uniforms are a uniformly random permutation: the modules ranked below k
    # are a uniformly random k-subset.
    ranks = torch.rand((*shape, n_modules), device=device).argsort(-1).argsort(-1)
    uses = ranks < k.unsqueeze(-1)
    return {name: uses[..., i] for i, name in enumerate(names)}


class RoutedParams(SampledParams):
    """Parameters of the routed (subset) reconstruction terms: mask draws and the router."""

    router: RouterParams = Field(
        default_factory=RouterParams,
        description=(
            "Which modules use their components, per position, drawn afresh for each sample: "
            "{type: uniform_k_subset | static_probability | all, p: (static_probability only)}"
        ),
    )


def with_routes(
    masks: Mapping[str, ModuleMask], routes: Mapping[str, Bool[Tensor, "..."]] | None
) -> dict[str, ModuleMask]:
    """`masks` with each module's route set (`routes` None: unchanged, every position routed)."""
    if routes is None:
        return dict(masks)
    return {name: replace(mask, route=routes[name]) for name, mask in masks.items()}
