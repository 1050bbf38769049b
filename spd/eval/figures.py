"""Built-in figures (docs/method.md, 'Evaluation'). Each returns named matplotlib figures; the caller saves and closes them.

Add one: write `fn(ctx: EvalContext, **params) -> dict[str, Figure]` here and decorate it with
`@register_figure("name")` (figures are slow by default: run every `slow_eval_freq` steps).
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from spd.config.evaluators import register_figure
from spd.errors import SPDUserError
from spd.eval.context import EvalContext, diagonal_permutation


def _heatmap(
    ax: plt.Axes, matrix: np.ndarray, title: str, cmap: str = "Blues", symmetric: bool = False
) -> None:
    vmax = float(np.abs(matrix).max()) or 1.0
    image = ax.imshow(matrix, aspect="auto", cmap=cmap, vmin=-vmax if symmetric else 0, vmax=vmax)
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


@register_figure("permuted_ci")
def permuted_ci(ctx: EvalContext, input_value: float = 0.75) -> dict[str, Figure]:
    """CI of every layer on one-hot inputs, columns permuted to be as diagonal as possible."""
    ci = ctx.one_hot_ci(input_value)
    fig, axes = plt.subplots(1, len(ci), figsize=(4.5 * len(ci), 3.6), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], ci.items(), strict=True):
        order = diagonal_permutation(matrix)
        n_shown = min(len(order), max(matrix.shape[0] * 2, 10))
        _heatmap(
            ax,
            matrix[:, order[:n_shown]].cpu().numpy(),
            f"{name} (first {n_shown} of {len(order)})",
            cmap="Blues",
        )
        ax.set_xlabel("subcomponent (permuted)")
        ax.set_ylabel("one-hot input feature")
    fig.suptitle(f"Causal importance on one-hot inputs (value {input_value}), step {ctx.step}")
    fig.tight_layout()
    return {"permuted_ci": fig}


@register_figure("ci_histograms")
def ci_histograms(ctx: EvalContext, bins: int = 50) -> dict[str, Figure]:
    """Histogram of CI values per layer on the eval batches (log count axis)."""
    names = ctx.model.module_names
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        values = torch.cat([b.ci[name].flatten() for b in ctx.batches]).cpu().numpy()
        ax.hist(values, bins=bins, range=(0, 1))
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("CI")
    fig.tight_layout()
    return {"ci_histograms": fig}


@register_figure("uv_matrices")
def uv_matrices(
    ctx: EvalContext, input_value: float = 0.75, max_components: int = 40
) -> dict[str, Figure]:
    """V and U of every layer, columns/rows in the same order as the permuted-CI plot."""
    ci = ctx.one_hot_ci(input_value)
    comps = ctx.model.components
    fig, axes = plt.subplots(2, len(comps), figsize=(4.5 * len(comps), 6.5), squeeze=False)
    with torch.no_grad():
        for col, (name, comp) in enumerate(comps.items()):
            order = diagonal_permutation(ci[name])[:max_components]
            _heatmap(
                axes[0][col], comp.V[:, order].cpu().numpy(), f"{name}: V (d_in × C)", "RdBu", True
            )
            _heatmap(
                axes[1][col], comp.U[order, :].cpu().numpy(), f"{name}: U (C × d_out)", "RdBu", True
            )
    fig.tight_layout()
    return {"uv_matrices": fig}


@register_figure("feature_vectors")
def feature_vectors(
    ctx: EvalContext, layer: str | None = None, n_subcomponents: int = 8
) -> dict[str, Figure]:
    """The target's input-feature columns W[:, j] and those of the largest subcomponents.

    `layer`: the decomposed layer to draw (default: the first decomposed layer).

    With a 2-dimensional output the columns are drawn as arrows (the TMS picture); otherwise as
    heatmaps of the (features × hidden) matrices.
    """
    layer = layer if layer is not None else ctx.model.module_names[0]
    if layer not in ctx.model.components:
        raise SPDUserError(
            f"figure feature_vectors: layer '{layer}' is not decomposed; decomposed: "
            f"{', '.join(ctx.model.components)}"
        )
    comp = ctx.model.components[layer]
    with torch.no_grad():
        target = comp.as_in_out(ctx.model.target_weight(layer)).cpu().numpy()  # (features, hidden)
        subs = comp.subcomponent_weights().cpu().numpy()  # (C, features, hidden)
    norms = np.linalg.norm(subs.reshape(len(subs), -1), axis=1)
    top = np.argsort(-norms)[:n_subcomponents]
    panels = [("target", target)] + [
        (f"subcomponent {c} (‖·‖={norms[c]:.2f})", subs[c]) for c in top
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8), squeeze=False)
    colors = plt.get_cmap("tab10")(np.arange(target.shape[0]) % 10)
    limit = float(np.abs(target).max()) * 1.1 or 1.0
    for ax, (title, matrix) in zip(axes[0], panels, strict=True):
        if matrix.shape[1] == 2:
            for j, (x, y) in enumerate(matrix):
                ax.arrow(0, 0, x, y, color=colors[j], width=limit * 0.01, length_includes_head=True)
            ax.set_xlim(-limit, limit)
            ax.set_ylim(-limit, limit)
            ax.set_aspect("equal")
        else:
            ax.imshow(matrix, aspect="auto", cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"{layer}: input-feature columns, step {ctx.step}", fontsize=9)
    fig.tight_layout()
    return {f"feature_vectors_{layer}": fig}
