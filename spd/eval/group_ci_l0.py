"""`ci_l0_per_group`: the CI-L0 of each layer group (`spd.eval.layer_groups`).

A group's CI-L0 is the sum over its modules of each module's mean number of subcomponents with CI
above `threshold` per example and position (the `ci_l0` metric's per-module value), reported as
`ci_l0/group/<group>`; `ci_l0/group/total` is `ci_l0/total`.
"""

from spd.config.evaluators import register_metric
from spd.eval.context import EvalContext
from spd.eval.layer_groups import GroupName, ci_l0_key, configured_groups
from spd.eval.metrics import ci_l0


@register_metric("ci_l0_per_group")
def ci_l0_per_group(
    ctx: EvalContext, threshold: float = 0.1, groups: dict[GroupName, list[str]] | None = None
) -> dict[str, float]:
    """Per layer group, the summed mean number of subcomponents with CI above `threshold`.
    `groups`: {name: [fnmatch patterns]} (default: one per transformer block)."""
    per_module = ci_l0(ctx, threshold)
    return {
        ci_l0_key(group): sum(per_module[f"ci_l0/{name}"] for name in modules)
        for group, modules in configured_groups(ctx.model.module_names, groups).items()
    }
