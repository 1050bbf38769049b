"""Adversarial (PGD) reconstruction metrics (docs/method.md, 'Adversarial (PGD) reconstruction').

`pgd_recon`, `pgd_recon_subset` and `pgd_recon_layerwise` run the training terms' attack on each
eval batch on its own (fresh sources, signed ascent) and report D at the final sources, averaged
over the batches. `pgd_recon_multibatch` is the robustness figure researchers quote: one source
vector per module shared by every position of `n_batches` eval batches, each ascent step's
gradient summed over those batches, then D averaged over them; by default 20 steps of 0.1 from
random sources.

The sources (and routes) are drawn on a forked random state, so selecting a metric does not
change the training draws. Under data parallelism shared sources start from rank 0's draw and
their gradients are averaged over ranks, as in training.
"""

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, PositiveFloat, PositiveInt, ValidationError
from torch import Tensor

from spd.config.evaluators import register_metric
from spd.eval.context import EvalBatch, EvalContext
from spd.losses.adversarial_sources import (
    SourceInit,
    Sources,
    SourceScope,
    init_sources,
    signed_ascent,
    source_gradients,
    source_masks,
)
from spd.losses.routing import RouterParams, draw_routes
from spd.losses.terms.recon import recon_loss
from spd.losses.terms.recon_layerwise import layerwise_recon_loss
from spd.models.module_mask import ModuleMask


def _router_block(block: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        RouterParams.model_validate(dict(block))
    except ValidationError as err:
        raise ValueError(err.errors()[0]["msg"].removeprefix("Value error, ")) from None
    return block


# A `router:` block as the subset loss terms take it, checked when the config loads.
RouterBlock = Annotated[Mapping[str, Any], AfterValidator(_router_block)]
# D of one eval batch at the given masks.
Divergence = Callable[[EvalBatch, Mapping[str, ModuleMask]], Tensor]


def _divergence(ctx: EvalContext, layerwise: bool) -> Divergence:
    loss = layerwise_recon_loss if layerwise else recon_loss
    return lambda b, masks: loss(
        ctx.model, b.inputs, b.target_out, masks, ctx.config.output_loss_type
    )


def _routes(router: RouterParams, batches: Sequence[EvalBatch]) -> list[dict[str, Tensor] | None]:
    return [draw_routes(router, b.ci) for b in batches]


def _attack(
    batches: Sequence[EvalBatch],
    sources: Sources,
    router: RouterParams,
    divergence: Divergence,
    n_steps: int,
    step_size: float,
    shared: bool,
) -> float:
    """D averaged over `batches` at the sources after `n_steps` signed ascent steps, each on the
    sum over `batches` of D (sources shared by the batches, or one batch's own)."""
    routes = _routes(router, batches)

    def gradient(s: Sources) -> Sources:
        total: Sources = {}
        # One backward pass per batch, summed: the memory of one batch at a time.
        for b, r in zip(batches, routes, strict=True):
            grads = source_gradients(
                lambda live, b=b, r=r: divergence(b, source_masks(b.ci, live, r)), s
            )
            total = {n: total[n] + g if n in total else g for n, g in grads.items()}
        return total

    final = signed_ascent(gradient, sources, n_steps, step_size, shared)
    with torch.no_grad():
        values = [
            divergence(b, source_masks(b.ci, final, r))
            for b, r in zip(batches, routes, strict=True)
        ]
    return float(torch.stack(values).mean())


def _forked(ctx: EvalContext) -> AbstractContextManager[None]:
    device = ctx.inputs[0].device
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _per_batch(
    ctx: EvalContext,
    n_steps: int,
    step_size: float,
    init: SourceInit,
    scope: SourceScope,
    router: RouterParams,
    layerwise: bool,
) -> float:
    """Each eval batch attacked on its own; D averaged over the batches."""
    divergence = _divergence(ctx, layerwise)
    use_delta = ctx.config.use_delta_component
    values: list[float] = []
    with _forked(ctx):
        for b in ctx.batches:
            sources = init_sources(b.ci, init, scope, use_delta)
            shared = scope == "shared_across_batch"
            values.append(_attack([b], sources, router, divergence, n_steps, step_size, shared))
    return sum(values) / len(values)


@register_metric("pgd_recon")
def pgd_recon(
    ctx: EvalContext,
    n_steps: PositiveInt = 20,
    step_size: PositiveFloat = 0.1,
    init: SourceInit = "random",
    scope: SourceScope = "unique_per_datapoint",
) -> dict[str, float]:
    """D under adversarial masks on every decomposed layer, each eval batch attacked on its own."""
    value = _per_batch(ctx, n_steps, step_size, init, scope, RouterParams(type="all"), False)
    return {"pgd_recon": value}


@register_metric("pgd_recon_subset")
def pgd_recon_subset(
    ctx: EvalContext,
    n_steps: PositiveInt = 20,
    step_size: PositiveFloat = 0.1,
    init: SourceInit = "random",
    scope: SourceScope = "unique_per_datapoint",
    router: RouterBlock | None = None,
) -> dict[str, float]:
    """`pgd_recon` with a router's routes (drawn per batch, held over the ascent); `router` as
    the loss term's `router:` block (None: uniform_k_subset)."""
    routes = RouterParams.model_validate(dict(router or {}))
    value = _per_batch(ctx, n_steps, step_size, init, scope, routes, False)
    return {"pgd_recon_subset": value}


@register_metric("pgd_recon_layerwise")
def pgd_recon_layerwise(
    ctx: EvalContext,
    n_steps: PositiveInt = 20,
    step_size: PositiveFloat = 0.1,
    init: SourceInit = "random",
    scope: SourceScope = "unique_per_datapoint",
) -> dict[str, float]:
    """One layer at a time under adversarial masks, mean over layers; each batch on its own."""
    value = _per_batch(ctx, n_steps, step_size, init, scope, RouterParams(type="all"), True)
    return {"pgd_recon_layerwise": value}


@register_metric("pgd_recon_multibatch")
def pgd_recon_multibatch(
    ctx: EvalContext,
    n_batches: PositiveInt | None = None,
    n_steps: PositiveInt = 20,
    step_size: PositiveFloat = 0.1,
    init: SourceInit = "random",
    router: RouterBlock | None = None,
) -> dict[str, float]:
    """D averaged over the first `n_batches` eval batches (None: every one, `n_eval_steps`) under
    one adversarial source vector per module shared by all their positions, each ascent step's
    gradient summed over those batches. `router`: a `router:` block (None: every module)."""
    batches = ctx.batches if n_batches is None else ctx.batches[:n_batches]
    # The config refuses an n_batches above n_eval_steps (spd.config.schema).
    assert n_batches is None or n_batches <= len(ctx.batches)
    routes = RouterParams.model_validate(dict(router or {"type": "all"}))
    with _forked(ctx):
        sources = init_sources(
            batches[0].ci, init, "shared_across_batch", ctx.config.use_delta_component
        )
        value = _attack(batches, sources, routes, _divergence(ctx, False), n_steps, step_size, True)
    return {"pgd_recon_multibatch": value}
