"""Language-model metrics (docs/method.md, 'Evaluation'): KL and cross-entropy of the masked model against the target.

For each mask variant the model runs with every decomposed layer replaced by its components
under that mask, on the eval token batches. Reported per variant:
- `ce_kl/kl/<variant>`: KL(target ‖ masked model) over the vocabulary, mean over positions;
- `ce_kl/ce_diff/<variant>`: next-token cross-entropy minus the target's;
- `ce_kl/ce_unrecovered/<variant>`: (CE − CE_target) / (CE_zero − CE_target), the fraction of
  the loss gap to the all-zeros mask that the variant leaves unrecovered (0: as good as the
  target; 1: as bad as removing the decomposed layers' weights);
plus `ce_kl/ce_target`. Next-token CE: the logits at position t predict the token at t + 1.

Variants: `ci` (mask = CI), `stochastic` (g + (1 − g) r, drawn as the run's `sampling` says, with
the delta component's mask where `use_delta_component` is on), `unmasked` (all ones), `random`
(uniform r), `rounded` (CI > `rounding_threshold` → 1, else 0), `zero` (all zeros). The random
draws come from a generator seeded with the run's seed and the step, so an evaluation is
reproducible and does not disturb the training random stream; the `stochastic` variant draws
module by module (its component mask, then its delta mask).
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from spd.config.evaluators import register_metric
from spd.config.schema import Sampling
from spd.eval.context import EvalBatch, EvalContext
from spd.losses.divergence import output_divergence
from spd.models.component_model import ComponentModel
from spd.models.module_mask import ModuleMask

MASK_VARIANTS = ("ci", "stochastic", "unmasked", "random", "rounded", "zero")

MaskFn = Callable[[Tensor], Tensor | ModuleMask | None]


def next_token_ce(
    logits: Float[Tensor, "batch seq vocab"], tokens: Int[Tensor, "batch seq"]
) -> Tensor:
    """Mean cross-entropy of the logits at each position for the token at the next position."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def _stochastic_mask_fn(
    uniform: Callable[[Tensor], Tensor], sampling: Sampling, use_delta: bool
) -> MaskFn:
    """The `stochastic` variant: the law of the training masks (spd.losses.masks), drawn with
    the metric's generator."""

    def draw(g: Tensor) -> Tensor | ModuleMask:
        r = uniform(g)
        # The continuous mask keeps the expression it always had, so its values are unchanged.
        if sampling == "continuous":
            mask = g + (1 - g) * r
        else:
            mask = torch.where(r < 0.5, g, torch.ones_like(g))
        if not use_delta:
            return mask
        r_delta = uniform(g[..., 0])
        delta = r_delta if sampling == "continuous" else (r_delta < 0.5).to(g.dtype)
        return ModuleMask(component=mask, delta=delta)

    return draw


def mask_functions(
    rounding_threshold: float, generator: torch.Generator, sampling: Sampling, use_delta: bool
) -> dict[str, MaskFn]:
    """Each variant's mask of one module from its CI (the per-group metric shares them)."""

    def uniform(g: Tensor) -> Tensor:
        return torch.rand(g.shape, generator=generator, device=g.device, dtype=g.dtype)

    return {
        "ci": lambda g: g,
        "stochastic": _stochastic_mask_fn(uniform, sampling, use_delta),
        "unmasked": lambda g: None,
        "random": uniform,
        "rounded": lambda g: (g > rounding_threshold).to(g.dtype),
        "zero": torch.zeros_like,
    }


def ce_kl_scores(
    model: ComponentModel,
    batches: Sequence[EvalBatch],
    rounding_threshold: float,
    generator: torch.Generator,
    sampling: Sampling,
    use_delta: bool,
) -> dict[str, float]:
    """The metric's values (see the module docstring) over `batches`, each weighted equally."""
    mask_fns = mask_functions(rounding_threshold, generator, sampling, use_delta)
    kl = {v: 0.0 for v in MASK_VARIANTS}
    ce = {v: 0.0 for v in MASK_VARIANTS}
    ce_target = 0.0
    with torch.no_grad():
        for batch in batches:
            tokens, target_logits = batch.inputs, batch.target_out
            ce_target += float(next_token_ce(target_logits, tokens))
            for variant, mask_fn in mask_fns.items():
                masks = {name: mask_fn(g) for name, g in batch.ci.items()}
                logits = model.forward_with_components(tokens, masks)
                kl[variant] += float(output_divergence(logits, target_logits, "kl"))
                ce[variant] += float(next_token_ce(logits, tokens))
    n = len(batches)
    ce_target /= n
    gap_zero = ce["zero"] / n - ce_target
    results = {"ce_kl/ce_target": ce_target}
    for variant in MASK_VARIANTS:
        diff = ce[variant] / n - ce_target
        results[f"ce_kl/kl/{variant}"] = kl[variant] / n
        results[f"ce_kl/ce_diff/{variant}"] = diff
        results[f"ce_kl/ce_unrecovered/{variant}"] = (
            diff / gap_zero if gap_zero != 0 else float("nan")
        )
    return results


def metric_generator(ctx: EvalContext) -> torch.Generator:
    """The random draws of one evaluation: seeded by the run's seed and the step, on the eval
    batches' device, apart from the training stream."""
    device = ctx.batches[0].inputs.device
    return torch.Generator(device=device).manual_seed(ctx.config.seed * 1_000_003 + ctx.step)


@register_metric("ce_and_kl")
def ce_and_kl(ctx: EvalContext, rounding_threshold: float = 0.0) -> dict[str, float]:
    """KL to the target, CE difference and CE unrecovered for the six mask variants (LMs only)."""
    config = ctx.config
    return ce_kl_scores(
        ctx.model,
        ctx.batches,
        rounding_threshold,
        metric_generator(ctx),
        config.sampling,
        config.use_delta_component,
    )
