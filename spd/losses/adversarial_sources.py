"""Adversarial mask sources: m = g + (1 − g) ⊙ s with s chosen by signed gradient ascent on a
divergence (docs/method.md, 'Adversarial (PGD) reconstruction'; spd-method-2026.md, section 5).

The pieces, usable on their own (the fresh PGD terms `pgd_recon*` and their metrics use all of
them; a persistent source can reuse `source_masks`, `source_gradients` and `signed_step`):

- `init_sources`: one source tensor per module, `random` U(0, 1), `ones` or `zeroes`, of C + 1
  entries with the delta component (the last entry is m_Δ), per position
  (`unique_per_datapoint`) or one vector per module (`shared_across_batch`, broadcast from rank
  0 under data parallelism);
- `source_masks`: the `ModuleMask`s those sources give with the CI g (and a router's routes);
- `source_gradients`: ∂objective/∂s by one forward and backward pass, with no gradient into the
  model's parameters;
- `average_over_ranks`: the mean of such gradients over data-parallel ranks (shared sources);
- `signed_step`: s ← clamp(s + step_size · sign(grad), 0, 1);
- `signed_ascent`: n such steps from a gradient function (which may sum over several batches);
- `adversarial_masks`: the fresh-PGD mask source of a loss term: init, n ascent steps on the
  term's own divergence, and the final masks with s detached (no gradient through the ascent).
"""

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, cast

import torch
import torch.distributed as dist
from jaxtyping import Bool, Float
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor

from spd.losses.inputs import LossInputs
from spd.losses.routing import RouterParams, draw_routes
from spd.losses.term import SampledParams
from spd.models.module_mask import ModuleMask

SourceInit = Literal["random", "ones", "zeroes"]
SourceScope = Literal["unique_per_datapoint", "shared_across_batch"]
Sources = dict[str, Tensor]
# D at the given masks: what the ascent maximises and the loss term reports.
Objective = Callable[[Mapping[str, ModuleMask]], Tensor]
GradientFn = Callable[[Sources], Sources]
F = TypeVar("F", bound=Callable[..., Any])


class PGDParams(SampledParams):
    """Parameters of the fresh adversarial (PGD) reconstruction terms."""

    init: SourceInit = Field(
        default="random",
        description="Initial sources: random (U(0, 1)), ones, or zeroes",
    )
    step_size: PositiveFloat = Field(
        default=1.0, description="Size of each signed ascent step, s += step_size · sign(grad)"
    )
    n_steps: PositiveInt = Field(default=1, description="Signed gradient-ascent steps per sample")
    scope: SourceScope = Field(
        default="unique_per_datapoint",
        description=(
            "unique_per_datapoint: one source per position and subcomponent; "
            "shared_across_batch: one source vector per module for every position (its initial "
            "value broadcast from rank 0 and its gradient averaged over ranks)"
        ),
    )


def init_sources(
    ci: Mapping[str, Float[Tensor, "... C"]],
    init: SourceInit,
    scope: SourceScope,
    use_delta_component: bool,
) -> Sources:
    """Initial sources of each module of `ci`: shape (..., C [+ 1]) per position, or (C [+ 1],)
    shared. Random shared sources are drawn on every rank and then taken from rank 0."""
    sources: Sources = {}
    for name, g in ci.items():
        width = g.shape[-1] + (1 if use_delta_component else 0)
        shape = (width,) if scope == "shared_across_batch" else (*g.shape[:-1], width)
        if init == "random":
            s = torch.rand(shape, dtype=g.dtype, device=g.device)
        else:
            s = torch.full(shape, 1.0 if init == "ones" else 0.0, dtype=g.dtype, device=g.device)
        sources[name] = s
    if init == "random" and scope == "shared_across_batch" and _distributed():
        for s in sources.values():
            dist.broadcast(s, src=0)
    return sources


def source_masks(
    ci: Mapping[str, Float[Tensor, "... C"]],
    sources: Mapping[str, Tensor],
    routes: Mapping[str, Bool[Tensor, "..."]] | None = None,
) -> dict[str, ModuleMask]:
    """m = g + (1 − g) ⊙ s[..., :C] and, where the sources have C + 1 entries, m_Δ = s[..., C]
    (the delta component's CI is 0), per module of `ci`, with its route (None: every position)."""
    masks: dict[str, ModuleMask] = {}
    for name, g in ci.items():
        s, n_components = sources[name], g.shape[-1]
        component = torch.addcmul(g, 1 - g, s[..., :n_components])
        delta = None
        if s.shape[-1] > n_components:
            delta = s[..., n_components].expand(g.shape[:-1])
        route = None if routes is None else routes[name]
        masks[name] = ModuleMask(component=component, delta=delta, route=route)
    return masks


def source_gradients(
    objective: Callable[[Sources], Tensor], sources: Mapping[str, Tensor]
) -> Sources:
    """∂objective/∂s at `sources`: one forward and one backward pass, reaching the sources only
    (the model's parameters get no gradient). A source the objective does not reach gets 0."""
    live = {name: s.detach().requires_grad_(True) for name, s in sources.items()}
    with torch.enable_grad():
        value = objective(live)
        grads = torch.autograd.grad(value, list(live.values()), allow_unused=True)
    return {
        name: torch.zeros_like(s) if grad is None else grad
        for (name, s), grad in zip(live.items(), grads, strict=True)
    }


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_over_ranks(grads: Sources) -> Sources:
    """The mean of each gradient over data-parallel ranks (one collective; unchanged when not
    under data parallelism). Every rank must pass tensors of the same shapes."""
    if not _distributed() or not grads:
        return grads
    flat = torch.cat([g.reshape(-1) for g in grads.values()])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    averaged: Sources = {}
    offset = 0
    for name, g in grads.items():
        averaged[name] = flat[offset : offset + g.numel()].view_as(g)
        offset += g.numel()
    return averaged


def signed_step(
    sources: Mapping[str, Tensor], grads: Mapping[str, Tensor], step_size: float
) -> Sources:
    """s ← clamp(s + step_size · sign(∂D/∂s), 0, 1); a zero gradient leaves s where it is."""
    with torch.no_grad():
        return {
            name: (s + step_size * grads[name].sign()).clamp_(0.0, 1.0)
            for name, s in sources.items()
        }


def signed_ascent(
    gradient: GradientFn,
    sources: Sources,
    n_steps: int,
    step_size: float,
    shared: bool,
) -> Sources:
    """`n_steps` signed ascent steps from `sources` with the gradients `gradient` returns
    (averaged over ranks first when the sources are `shared` across the batch); detached."""
    for _ in range(n_steps):
        grads = gradient(sources)
        if shared:
            grads = average_over_ranks(grads)
        sources = signed_step(sources, grads, step_size)
    return {name: s.detach() for name, s in sources.items()}


def _eager(fn: F) -> F:
    """`fn`, run eagerly when a caller is compiled (`torch.compile` breaks its graph there)."""
    return cast(F, torch.compiler.disable(fn))


# The routes and the ascent run eagerly under `compile`: the ascent's backward passes and
# collectives have no place in the compiled graph of the training loss, which then traces only the
# final masked pass (and a draw left in the term's frame would be recompiled for each row count).
@_eager
def adversarial_masks(
    inputs: LossInputs,
    params: PGDParams,
    objective: Callable[[LossInputs, Mapping[str, ModuleMask]], Tensor],
    router: RouterParams | None = None,
) -> dict[str, ModuleMask]:
    """One sample of a fresh PGD term: the `router`'s routes (None: every position uses the
    components), drawn first and held over the ascent; sources as `params` say; `params.n_steps`
    signed ascent steps on `objective(inputs, masks)` (the term's own divergence, scaled to the
    full batch under the CPU row selection so that ranks average like gradients); then the masks
    at the final sources. Those masks carry the gradient of g (the CI functions); s is a constant.

    The ascent reads the CI detached, so it builds no graph into the CI functions; the target
    output is the step's own (`inputs.target_out`), never recomputed.
    """
    ci = {name: g.detach() for name, g in inputs.ci.items()}
    routes = None if router is None else draw_routes(router, ci)
    share = 1.0 if inputs.rows is None else inputs.rows.share
    shared = params.scope == "shared_across_batch"
    sources = init_sources(ci, params.init, params.scope, inputs.use_delta_component)

    def gradient(s: Sources) -> Sources:
        return source_gradients(
            lambda live: share * objective(inputs, source_masks(ci, live, routes)), s
        )

    final = signed_ascent(gradient, sources, params.n_steps, params.step_size, shared)
    return source_masks(inputs.ci, final, routes)
