"""Figures of the residual-MLP experiments (registered with the shared figure registry).

`resid_mlp_neuron_contributions` compares, feature by feature, how the target's neurons compute
the feature with how the feature's own mlp_in subcomponent does. The contribution of neuron n
(of layer l) to feature i is

    (W_in^l[n, :] · e_i) · (W_out^l[:, n] · e_i),   e_i = W_E[i, :]

— how strongly the neuron reads the feature times how strongly it writes back onto the feature's
read-off direction (the unembedding is W_Eᵀ, so both directions are e_i). For the subcomponent
matched to feature i, W_in^l is replaced by that subcomponent's rank-one matrix (its own layer's
W_out is kept; neurons of other layers contribute nothing).
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor, nn

from spd.config.evaluators import register_figure
from spd.eval.ci_patterns import layers_by_patterns
from spd.eval.context import EvalContext, diagonal_permutation
from spd.experiments.resid_mlp.models import ResidMLP
from spd.models.component_model import ComponentModel, DecomposedModule

MLP_IN_PATTERN = "layers.*.mlp_in"


def _linear_weight(model: ComponentModel, name: str) -> Float[Tensor, "d_out d_in"]:
    """The target's weight of a Linear, whether or not that Linear is decomposed."""
    module = model.target.get_submodule(name)
    linear = module.original if isinstance(module, DecomposedModule) else module
    assert isinstance(linear, nn.Linear), f"{name} is not a Linear"
    return linear.weight


def target_neuron_contributions(model: ComponentModel) -> Float[Tensor, "n_features n_neurons"]:
    """Contribution of every neuron (layers concatenated in order) to every feature."""
    target = model.target
    assert isinstance(target, ResidMLP), "neuron contributions need a ResidMLP target"
    W_E = target.W_E
    per_layer = []
    for layer in range(target.config.n_layers):
        reads = W_E @ _linear_weight(model, f"layers.{layer}.mlp_in").T  # (features, d_mlp)
        writes = W_E @ _linear_weight(model, f"layers.{layer}.mlp_out")  # (features, d_mlp)
        per_layer.append(reads * writes)
    return torch.cat(per_layer, dim=1)


def subcomponent_neuron_contributions(
    model: ComponentModel, matched: list[list[tuple[int, int]]]
) -> Float[Tensor, "n_features n_neurons"]:
    """Row i: the neuron contributions to feature i with the mlp_in of each layer in `matched[i]`
    replaced by that layer's subcomponent there (pairs (layer, subcomponent)); the other layers'
    neurons are left at zero."""
    target = model.target
    assert isinstance(target, ResidMLP), "neuron contributions need a ResidMLP target"
    W_E, d_mlp = target.W_E, target.config.d_mlp
    out = torch.zeros(len(matched), target.config.n_layers * d_mlp, device=W_E.device)
    for feature, pairs in enumerate(matched):
        e = W_E[feature]
        for layer, c in pairs:
            comp = model.components[f"layers.{layer}.mlp_in"]
            reads = (e @ comp.V[:, c]) * comp.U[c]  # (d_mlp,): W_in^c e_i, W_in^c = (V_c U_c)ᵀ
            writes = e @ _linear_weight(model, f"layers.{layer}.mlp_out")
            out[feature, layer * d_mlp : (layer + 1) * d_mlp] = reads * writes
    return out


def matched_mlp_in_subcomponents(
    ci: dict[str, Float[Tensor, "n_features C"]], on: float = 0.5
) -> list[list[tuple[int, int]]]:
    """For each feature, the (layer, subcomponent) pairs of the mlp_in subcomponents assigned to it.

    Each layer's CI matrix is matched to the features by linear-sum assignment, as in the
    permuted-CI plot. A feature keeps the match of every layer where that CI is above `on` (a
    feature computed in two layers has one in each), or else its single strongest match.
    """
    layers = layers_by_patterns(ci, [MLP_IN_PATTERN])[MLP_IN_PATTERN]
    n_features = layers[0].shape[0]
    per_layer = [diagonal_permutation(m)[:n_features] for m in layers]
    matched = []
    for f in range(n_features):
        strengths = [float(m[f, order[f]]) for m, order in zip(layers, per_layer, strict=True)]
        chosen = [layer for layer, value in enumerate(strengths) if value > on]
        if not chosen:
            chosen = [max(range(len(layers)), key=strengths.__getitem__)]
        matched.append([(layer, per_layer[layer][f]) for layer in chosen])
    return matched


@register_figure("resid_mlp_neuron_contributions")
def resid_mlp_neuron_contributions(
    ctx: EvalContext, input_value: float = 0.75, n_features_shown: int = 5
) -> dict[str, Figure]:
    """Target vs matched mlp_in subcomponent: neuron contributions to every feature (heatmaps) and
    to the first `n_features_shown` features (bars)."""
    ci = ctx.one_hot_ci(input_value)
    resid_mlp = ctx.model.target
    assert isinstance(resid_mlp, ResidMLP), "neuron contributions need a ResidMLP target"
    d_mlp = resid_mlp.config.d_mlp
    with torch.no_grad():
        target = target_neuron_contributions(ctx.model).cpu().numpy()
        matched = matched_mlp_in_subcomponents(ci)
        sub = subcomponent_neuron_contributions(ctx.model, matched).cpu().numpy()
    limit = float(max(np.abs(target).max(), np.abs(sub).max())) or 1.0
    n_shown = min(n_features_shown, target.shape[0])
    fig = plt.figure(figsize=(max(10.0, 3.0 * n_shown), 7.5))
    grid = fig.add_gridspec(2, max(n_shown, 2), height_ratios=[1.6, 1.0])
    half = max(n_shown, 2) // 2
    for k, (matrix, title) in enumerate([(target, "target"), (sub, "matched mlp_in subcomponent")]):
        ax = fig.add_subplot(grid[0, k * half : (k + 1) * half])
        image = ax.imshow(matrix, aspect="auto", cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_title(f"{title}: contribution of neuron n to feature i", fontsize=9)
        ax.set_xlabel("neuron (layers in order)")
        ax.set_ylabel("feature")
        for boundary in range(d_mlp, matrix.shape[1], d_mlp):
            ax.axvline(boundary - 0.5, color="black", linewidth=0.8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    neurons = np.arange(target.shape[1])
    for i in range(n_shown):
        ax = fig.add_subplot(grid[1, i])
        ax.bar(neurons - 0.2, target[i], width=0.4, label="target")
        label = " + ".join(f"L{layer} c{c}" for layer, c in matched[i])
        ax.bar(neurons + 0.2, sub[i], width=0.4, label=label)
        ax.set_title(f"feature {i}", fontsize=9)
        ax.set_xlabel("neuron", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Neuron contributions, step {ctx.step}")
    fig.tight_layout()
    return {"neuron_contributions": fig}
