"""`ce_and_kl_per_group`: CE and KL against the target with one layer group at a time masked.

For each layer group (`spd.eval.layer_groups`: `layer_0`, `layer_1`, …, `total`, or the groups the
config names) and each mask kind, the model runs on the eval token batches with only that group's
modules under their masks; every other decomposed module runs its target weight (a module left
out of a component pass does). Reported, as `ce_and_kl` reports them for all modules at once
(spd/eval/lm_metrics.py):
- `ce_kl/kl/<mask>/<group>`: KL(target ‖ masked model), mean over positions;
- `ce_kl/ce_diff/<mask>/<group>`: next-token CE minus the target's;
- `ce_kl/ce_unrecovered/<mask>/<group>`: that difference over the one with the group's
  modules zeroed (the `zero` mask, always computed), so 1 is "as bad as removing the group".

Mask kinds: those of `ce_and_kl` (`ci`, `stochastic`, `unmasked`, `random`, `rounded`, `zero`;
default `ci`, `stochastic`, `rounded`, `unmasked`, and `zero` always), drawn module by module from each module's CI, plus
any kind registered with `register_mask_kind` (e.g. an adversarial search over a group's masks),
which sees the model, the batch and the group's modules at once.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated

import torch
from pydantic import AfterValidator

from spd.config.evaluators import register_metric
from spd.eval.context import EvalBatch, EvalContext
from spd.eval.layer_groups import GroupName, ce_kl_key, configured_groups
from spd.eval.lm_metrics import MaskFn, mask_functions, metric_generator, next_token_ce
from spd.losses.divergence import output_divergence
from spd.models.component_model import ComponentModel
from spd.models.module_mask import MaskLike

# The masks of one group's modules in one component pass.
GroupMaskFn = Callable[[ComponentModel, EvalBatch, Sequence[str]], dict[str, MaskLike]]

PER_MODULE_KINDS = ("ci", "stochastic", "unmasked", "random", "rounded", "zero")
DEFAULT_KINDS = ("ci", "stochastic", "rounded", "unmasked")
# Kinds whose masks are not a function of each module's CI alone, by name: a factory that gets
# the evaluation's context and returns the kind's `GroupMaskFn`.
_GROUP_KINDS: dict[str, Callable[[EvalContext], GroupMaskFn]] = {}


def register_mask_kind(name: str, factory: Callable[[EvalContext], GroupMaskFn]) -> None:
    """Make `name` a mask kind of `ce_and_kl_per_group` (configs select it in `masks`)."""
    if name in _GROUP_KINDS or name in PER_MODULE_KINDS:
        raise ValueError(f"mask kind '{name}' is registered twice")
    _GROUP_KINDS[name] = factory


def _known_kind(name: str) -> str:
    known = (*PER_MODULE_KINDS, *_GROUP_KINDS)
    if name not in known:
        raise ValueError(f"unknown mask kind '{name}'; known: {', '.join(known)}")
    return name


MaskKind = Annotated[str, AfterValidator(_known_kind)]


def _per_module(mask_fn: MaskFn) -> GroupMaskFn:
    def masks(
        _model: ComponentModel, batch: EvalBatch, modules: Sequence[str]
    ) -> dict[str, MaskLike]:
        return {name: mask_fn(batch.ci[name]) for name in modules}

    return masks


def group_scores(
    model: ComponentModel,
    batches: Sequence[EvalBatch],
    groups: Mapping[str, Sequence[str]],
    kinds: Mapping[str, GroupMaskFn],
) -> dict[str, float]:
    """The metric's values (module docstring) over `batches`, each weighted equally; `kinds`
    must include `zero`."""
    kl: dict[tuple[str, str], float] = {}
    ce: dict[tuple[str, str], float] = {}
    ce_target = 0.0
    with torch.no_grad():
        for batch in batches:
            tokens, target_logits = batch.inputs, batch.target_out
            ce_target += float(next_token_ce(target_logits, tokens))
            for group, modules in groups.items():
                for kind, group_masks in kinds.items():
                    logits = model.forward_with_components(
                        tokens, group_masks(model, batch, modules)
                    )
                    divergence = float(output_divergence(logits, target_logits, "kl"))
                    kl[group, kind] = kl.get((group, kind), 0.0) + divergence
                    ce[group, kind] = ce.get((group, kind), 0.0) + float(
                        next_token_ce(logits, tokens)
                    )
    n = len(batches)
    ce_target /= n
    results = {"ce_kl/ce_target": ce_target}
    for group in groups:
        gap_zero = ce[group, "zero"] / n - ce_target
        for kind in kinds:
            diff = ce[group, kind] / n - ce_target
            results[ce_kl_key("kl", kind, group)] = kl[group, kind] / n
            results[ce_kl_key("ce_diff", kind, group)] = diff
            results[ce_kl_key("ce_unrecovered", kind, group)] = (
                diff / gap_zero if gap_zero != 0 else float("nan")
            )
    return results


@register_metric("ce_and_kl_per_group")
def ce_and_kl_per_group(
    ctx: EvalContext,
    groups: dict[GroupName, list[str]] | None = None,
    masks: list[MaskKind] | None = None,
    rounding_threshold: float = 0.0,
) -> dict[str, float]:
    """KL to the target, CE difference and CE unrecovered per layer group and mask kind, only
    that group masked (LMs only). `groups`: {name: [fnmatch patterns]} (default: one per
    transformer block); `masks`: the mask kinds (default ci, stochastic, rounded, unmasked)."""
    config = ctx.config
    per_module = mask_functions(
        rounding_threshold, metric_generator(ctx), config.sampling, config.use_delta_component
    )
    kinds: dict[str, GroupMaskFn] = {}
    for kind in masks if masks is not None else DEFAULT_KINDS:
        group_kind = _GROUP_KINDS.get(kind)
        kinds[kind] = group_kind(ctx) if group_kind is not None else _per_module(per_module[kind])
    kinds["zero"] = _per_module(per_module["zero"])
    return group_scores(
        ctx.model, ctx.batches, configured_groups(ctx.model.module_names, groups), kinds
    )
