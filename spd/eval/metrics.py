"""Built-in scalar metrics (docs/method.md, 'Evaluation'). Each returns a flat dict of floats keyed by metric name.

Add one: write `fn(ctx: EvalContext, **params) -> dict[str, float]` here and decorate it with
`@register_metric("name")` (`slow=True` for expensive ones). Configs select it by that name.
"""

import torch

from spd.config.evaluators import register_metric
from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.eval.ci_patterns import (
    dense_errors,
    group_by_patterns,
    layers_by_patterns,
    n_dense,
    n_with_one_dedicated,
    n_with_sole_dedicated,
    serving_identity_errors,
    serving_layers,
)
from spd.eval.context import EvalContext
from spd.losses.masks import delta_masks, stochastic_masks
from spd.losses.terms.hidden_act_recon import hidden_act_errors
from spd.models.component_model import ComponentModel
from spd.models.module_mask import ModuleMask


@register_metric("ci_l0")
def ci_l0(ctx: EvalContext, threshold: float = 0.1) -> dict[str, float]:
    """Mean number of subcomponents per example (and position) with CI above `threshold`."""
    results: dict[str, float] = {}
    for name in ctx.model.module_names:
        counts = [(b.ci[name] > threshold).float().sum(-1).mean() for b in ctx.batches]
        results[f"ci_l0/{name}"] = float(torch.stack(counts).mean())
    results["ci_l0/total"] = sum(results.values())
    return results


@register_metric("component_activation_density")
def component_activation_density(ctx: EvalContext, threshold: float = 0.1) -> dict[str, float]:
    """Per layer: how many subcomponents ever fire on the eval data, and the mean firing rate."""
    results: dict[str, float] = {}
    for name in ctx.model.module_names:
        density = torch.stack(
            [(b.ci[name] > threshold).float().flatten(0, -2).mean(0) for b in ctx.batches]
        ).mean(0)
        results[f"density/{name}/n_active"] = float((density > 0).sum())
        results[f"density/{name}/mean"] = float(density.mean())
    return results


@register_metric("ground_truth_recovery")
def ground_truth_recovery(ctx: EvalContext, layer: str) -> dict[str, float]:
    """MMCS and ML2R of `layer`, the decomposed layer whose input columns are the ground-truth
    features (named in the config; see `mmcs_ml2r`)."""
    return mmcs_ml2r(ctx.model, layer)


def mmcs_ml2r(model: ComponentModel, layer: str) -> dict[str, float]:
    """MMCS and ML2R of a layer's subcomponents against the target's input columns W[:, j].

    For each input feature j, the subcomponent whose column j (U_c · V_{j,c}) has the highest
    cosine similarity with W[:, j] is its best match; MMCS averages those similarities, ML2R the
    ratios of the matched column norms to ‖W[:, j]‖.
    """
    if layer not in model.components:
        raise SPDUserError(
            f"ground-truth layer '{layer}' is not decomposed; decomposed: "
            f"{', '.join(model.components)}"
        )
    comp = model.components[layer]
    with torch.no_grad():
        target = comp.as_in_out(model.target_weight(layer))  # (d_in, d_out): row j is W[:, j]
        sub_columns = comp.V[:, :, None] * comp.U[None, :, :]  # (d_in, C, d_out)
        cos = torch.nn.functional.cosine_similarity(
            sub_columns, target[:, None, :], dim=-1, eps=1e-12
        )
        best_cos, best = cos.max(dim=1)
        best_norm = sub_columns[torch.arange(comp.d_in), best].norm(dim=-1)
        ratio = best_norm / target.norm(dim=-1).clamp_min(1e-12)
    return {f"mmcs/{layer}": float(best_cos.mean()), f"ml2r/{layer}": float(ratio.mean())}


@register_metric("n_large_subcomponents")
def n_large_subcomponents(ctx: EvalContext, threshold: float = 0.1) -> dict[str, float]:
    """Per layer, the number of subcomponents whose rank-one matrix has Frobenius norm > threshold."""
    return large_subcomponent_counts(ctx.model, threshold)


def large_subcomponent_counts(model: ComponentModel, threshold: float = 0.1) -> dict[str, float]:
    """Per layer, the number of subcomponents whose rank-one matrix has Frobenius norm > threshold."""
    results: dict[str, float] = {}
    with torch.no_grad():
        for name, comp in model.components.items():
            norms = comp.V.norm(dim=0) * comp.U.norm(dim=1)
            results[f"n_large_subcomponents/{name}"] = float((norms > threshold).sum())
    return results


@register_metric("identity_ci_error", slow=True)
def identity_ci_error(
    ctx: EvalContext,
    identity_layers: list[str] | None = None,
    dense_layers: dict[str, int] | None = None,
    tolerance: float = 0.1,
    input_value: float = 0.75,
) -> dict[str, float]:
    """Entries of the one-hot CI matrix that are off the expected pattern by more than `tolerance`.

    `identity_layers` (fnmatch patterns): each feature should have its own subcomponent, so the
    permuted CI matrix should be the identity (zeros elsewhere). `dense_layers` maps a pattern to
    k: every feature should use the same k subcomponents (k columns of ones, zeros elsewhere).
    All layers one pattern matches are scored together, results keyed by pattern: for identity
    patterns, each layer over the features it serves (CI > 0.5; a feature computed in two layers
    may have its own subcomponent in each), for dense ones as one matrix with the layers' columns
    side by side (see `spd.eval.ci_patterns`).
    """
    ci = ctx.one_hot_ci(input_value)
    results: dict[str, float] = {}
    for pattern, matrices in layers_by_patterns(ci, identity_layers or []).items():
        errors = serving_identity_errors(matrices, tolerance=tolerance)
        results[f"identity_ci_error/{pattern}"] = float(errors)
    dense = dense_layers or {}
    for pattern, matrix in group_by_patterns(ci, list(dense)).items():
        results[f"identity_ci_error/{pattern}"] = float(
            dense_errors(matrix, dense[pattern], tolerance)
        )
    return results


@register_metric("dedicated_subcomponents", slow=True)
def dedicated_subcomponents(
    ctx: EvalContext,
    layers: list[str] | None = None,
    on: float = 0.5,
    off: float = 0.1,
    input_value: float = 0.75,
) -> dict[str, float]:
    """Features with exactly one dedicated subcomponent (CI > `on` for that feature, ≤ `off` for
    all others) in each layer that serves them (some CI > `on`).

    `layers` (fnmatch patterns; default: every layer on its own): the layers one pattern matches
    are scored together, so a feature that a multi-layer model computes in two layers counts with
    one dedicated subcomponent in each (a single layer: exactly one). Also reports, as `…/sole`,
    the features whose dedicated subcomponents are the only ones of the group above `off`, and as
    `…/layers_per_feature` the mean number of layers that serve a feature.
    """
    ci = ctx.one_hot_ci(input_value)
    groups = (
        layers_by_patterns(ci, layers) if layers is not None else {k: [m] for k, m in ci.items()}
    )
    results: dict[str, float] = {}
    for key, matrices in groups.items():
        results[f"dedicated_subcomponents/{key}"] = float(n_with_one_dedicated(matrices, on, off))
        results[f"dedicated_subcomponents/{key}/sole"] = float(
            n_with_sole_dedicated(matrices, on, off)
        )
        serving = serving_layers(matrices, on)
        results[f"dedicated_subcomponents/{key}/layers_per_feature"] = float(
            serving.sum(1).float().mean()
        )
    return results


@register_metric("dense_subcomponents", slow=True)
def dense_subcomponents(
    ctx: EvalContext,
    layers: list[str] | None = None,
    on: float = 0.5,
    min_fraction: float = 0.9,
    input_value: float = 0.75,
) -> dict[str, float]:
    """Subcomponents with CI > `on` on at least `min_fraction` of the one-hot inputs.

    `layers` groups layers by fnmatch pattern as in `dedicated_subcomponents`.
    """
    ci = ctx.one_hot_ci(input_value)
    groups = group_by_patterns(ci, layers) if layers is not None else ci
    return {
        f"dense_subcomponents/{key}": float(n_dense(matrix, on, min_fraction))
        for key, matrix in groups.items()
    }


def _stochastic_module_masks(ci: dict[str, torch.Tensor], config: Config) -> dict[str, ModuleMask]:
    """The masks of `draw_stochastic_masks` (spd.losses.term), drawn from eval CI."""
    component = stochastic_masks(ci, config.sampling)
    delta = delta_masks(ci, config.sampling) if config.use_delta_component else {}
    return {name: ModuleMask(component=m, delta=delta.get(name)) for name, m in component.items()}


@register_metric("hidden_act_recon")
def hidden_act_recon(ctx: EvalContext) -> dict[str, float]:
    """Mean squared difference between each decomposed module's input with every module under
    stochastic masks and its input in the target pass, per module and in total (the total is the
    `hidden_act_recon` loss term). The masks are drawn on a forked random state, so selecting the
    metric does not change the training draws."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    device = ctx.inputs[0].device
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for b in ctx.batches:
            _, target_acts = ctx.model.forward_with_pre_acts(b.inputs)
            masks = _stochastic_module_masks(b.ci, ctx.config)
            for name, (sq, n) in hidden_act_errors(ctx.model, b.inputs, target_acts, masks).items():
                sums[name] = sums.get(name, 0.0) + float(sq)
                counts[name] = counts.get(name, 0) + n
    results = {f"hidden_act_recon/{name}": sums[name] / counts[name] for name in sums}
    results["hidden_act_recon/total"] = sum(sums.values()) / sum(counts.values())
    return results
