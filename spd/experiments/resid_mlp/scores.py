"""The residual-MLP task's end-of-run scores: the CI pattern on one-hot inputs and its verdict.

The pattern is scored on one-hot inputs (value 0.75): how many features have exactly one
dedicated mlp_in subcomponent (CI > 0.5 on that feature's one-hot input and ≤ 0.1 on every other
feature's) in each layer that serves them, how many mlp_out subcomponents (all blocks together)
are causally important for nearly every feature, and how many are important for any feature at
all, with how many of those read exactly one neuron. `verdict` puts it in one line.
"""

import fnmatch
import json
from typing import TYPE_CHECKING

import torch
from torch import nn

from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.eval.ci_patterns import (
    dense_errors,
    group_by_patterns,
    layers_by_patterns,
    live_columns,
    n_axis_aligned,
    n_dense,
    n_live,
    n_with_one_dedicated,
    n_with_sole_dedicated,
    serving_identity_errors,
    serving_layers,
)
from spd.experiments.resid_mlp.models import ResidMLP
from spd.models.component_model import ComponentModel
from spd.persistence.atomic_files import atomic_write_text

if TYPE_CHECKING:
    from spd.experiments.run_decomposition import DecompositionRun
    from spd.train.optimize import OptimizeResult

ONE_HOT_VALUE = 0.75
CI_ON, CI_OFF = 0.5, 0.1
DENSE_MIN_FRACTION = 0.9
MLP_IN, MLP_OUT = "layers.*.mlp_in", "layers.*.mlp_out"


def resid_mlp_target(target: nn.Module) -> ResidMLP:
    """`target` as a `ResidMLP`; an `SPDUserError` naming the class to use otherwise."""
    if not isinstance(target, ResidMLP):
        raise SPDUserError(
            f"the resid_mlp task needs a ResidMLP target, got {type(target).__name__}; "
            "set pretrained_model_class to spd.experiments.resid_mlp.models.ResidMLP"
        )
    return target


def ci_pattern_scores(model: ComponentModel, config: Config) -> dict[str, float]:
    """Dedicated mlp_in / dense mlp_out counts and pattern errors on one-hot inputs."""
    target = resid_mlp_target(model.target)
    n_features = target.config.n_features
    total_d_mlp = target.config.d_mlp * target.config.n_layers
    device = target.W_E.device
    with torch.no_grad():
        _, pre_acts = model.forward_with_pre_acts(
            torch.eye(n_features, device=device) * ONE_HOT_VALUE
        )
        ci, _ = model.causal_importances(pre_acts, config.sigmoid_type)
    mlp_out = group_by_patterns(ci, [MLP_OUT])[MLP_OUT]
    mlp_in_layers = layers_by_patterns(ci, [MLP_IN])[MLP_IN]
    serving = serving_layers(mlp_in_layers, CI_ON)
    neuron_aligned = sum(
        n_axis_aligned(comps.V, live_columns(ci[name], CI_OFF))
        for name, comps in model.components.items()
        if fnmatch.fnmatchcase(name, MLP_OUT)
    )
    # A subcomponent that reads one neuron cannot matter for a feature whose one-hot input leaves
    # that neuron off; so the target's broadly active neurons bound the dense neuron-aligned
    # subcomponents.
    neurons = group_by_patterns(pre_acts, [MLP_OUT])[MLP_OUT]
    return {
        "n_features": float(n_features),
        "dedicated_mlp_in": float(n_with_one_dedicated(mlp_in_layers, CI_ON, CI_OFF)),
        "dedicated_mlp_in_sole": float(n_with_sole_dedicated(mlp_in_layers, CI_ON, CI_OFF)),
        "dedicated_mlp_in_layers_per_feature": float(serving.sum(1).float().mean()),
        "n_layers": float(target.config.n_layers),
        "dense_mlp_out": float(n_dense(mlp_out, CI_ON, DENSE_MIN_FRACTION)),
        "live_mlp_out": float(n_live(mlp_out, CI_OFF)),
        "neuron_aligned_mlp_out": float(neuron_aligned),
        "broadly_active_neurons": float(n_dense(neurons, 0.0, DENSE_MIN_FRACTION)),
        "total_d_mlp": float(total_d_mlp),
        "identity_ci_error/mlp_in": float(serving_identity_errors(mlp_in_layers, CI_ON, CI_OFF)),
        "dense_ci_error/mlp_out": float(dense_errors(mlp_out, total_d_mlp, CI_OFF)),
    }


def verdict(scores: dict[str, float]) -> str:
    """The one-line result of a run."""
    n, dedicated = int(scores["n_features"]), int(scores["dedicated_mlp_in"])
    dense, d_mlp = int(scores["dense_mlp_out"]), int(scores["total_d_mlp"])
    live, aligned = int(scores["live_mlp_out"]), int(scores["neuron_aligned_mlp_out"])
    broad = int(scores["broadly_active_neurons"])
    n_layers = int(scores["n_layers"])
    per_layer, layers_used = "", ""
    if n_layers > 1:
        per_layer = " in each layer that serves it"
        served = scores["dedicated_mlp_in_layers_per_feature"]
        layers_used = f"; a feature is served by {served:.2f} of {n_layers} layers on average"
    return (
        f"{dedicated} of {n} features have exactly one dedicated mlp_in subcomponent{per_layer} "
        f"(CI > {CI_ON} on its one-hot input, ≤ {CI_OFF} on every other){layers_used}; "
        f"{dense} mlp_out subcomponents are causally important (CI > {CI_ON}) for "
        f"≥ {DENSE_MIN_FRACTION:.0%} of features (expected: {d_mlp}); "
        f"{live} mlp_out subcomponents are important for some feature, "
        f"{aligned} of them reading a single neuron; the target has {broad} of {d_mlp} neurons "
        f"active on ≥ {DENSE_MIN_FRACTION:.0%} of the one-hot inputs"
    )


def summarize(result: "OptimizeResult", config: Config) -> dict[str, float]:
    """The CI-pattern scores on one-hot inputs and the final training losses."""
    final_losses = {
        k.removeprefix("train/"): v
        for k, v in result.final_metrics.items()
        if k.startswith("train/loss/")
    }
    return {**ci_pattern_scores(result.model, config), **final_losses}


def finish(run: "DecompositionRun", config: Config) -> None:
    """Add the one-line verdict to summary.json and print it."""
    line = verdict(run.summary)
    summary_path = run.path / "summary.json"
    atomic_write_text(
        summary_path,
        json.dumps({**run.summary, "verdict": line}, indent=2, ensure_ascii=False) + "\n",
    )
    print(f"spd: {line}")
