"""Built-in figures (docs/method.md, 'Evaluation'). Each returns named matplotlib figures; the caller saves and closes them.

Add one: write `fn(ctx: EvalContext, **params) -> dict[str, Figure]` here and decorate it with
`@register_figure("name")` (figures are slow by default: run every `slow_eval_freq` steps).
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from spd.config.evaluators import register_figure
from spd.errors import SPDUserError
from spd.eval.context import EvalContext, diagonal_permutation

# Most tick labels an axis of a heatmap gets; more rows or columns get every k-th index.
MAX_TICKS = 20


def one_hot_value(ctx: EvalContext, input_value: float | None) -> float:
    """`input_value`, or the task's one-hot value (`TaskConfig.one_hot_value`) when it is None."""
    return ctx.config.task_config.one_hot_value if input_value is None else input_value


def _index_ticks(axis: Axis, labels: list[int]) -> None:
    """Integer tick labels on a heatmap axis: `labels[i]` at row/column i (every k-th one)."""
    step = max(1, -(-len(labels) // MAX_TICKS))
    positions = list(range(0, len(labels), step))
    axis.set_ticks(positions, [str(labels[p]) for p in positions])


def _heatmap(
    ax: plt.Axes,
    matrix: np.ndarray,
    title: str,
    cmap: str = "Blues",
    symmetric: bool = False,
    row_labels: list[int] | None = None,
    col_labels: list[int] | None = None,
) -> None:
    """`matrix` as an image; rows and columns are labelled with integer indices (`row_labels` /
    `col_labels` when they are not 0, 1, …, e.g. the subcomponents of a permuted order)."""
    vmax = float(np.abs(matrix).max()) or 1.0
    image = ax.imshow(matrix, aspect="auto", cmap=cmap, vmin=-vmax if symmetric else 0, vmax=vmax)
    ax.set_title(title, fontsize=9)
    _index_ticks(ax.yaxis, row_labels if row_labels is not None else list(range(matrix.shape[0])))
    _index_ticks(ax.xaxis, col_labels if col_labels is not None else list(range(matrix.shape[1])))
    ax.tick_params(labelsize=7)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


@register_figure("permuted_ci")
def permuted_ci(ctx: EvalContext, input_value: float | None = None) -> dict[str, Figure]:
    """CI of every layer on one-hot inputs, columns permuted to be as diagonal as possible.

    `input_value`: the one-hot value (null: 1 for TMS, 0.75 otherwise). Shown are the
    subcomponents the permutation puts first (each labelled with its index); the title says how
    many are hidden and the largest CI among them.
    """
    value = one_hot_value(ctx, input_value)
    ci = ctx.one_hot_ci(value)
    fig, axes = plt.subplots(1, len(ci), figsize=(4.5 * len(ci), 3.6), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], ci.items(), strict=True):
        order = diagonal_permutation(matrix)
        n_shown = min(len(order), max(matrix.shape[0] * 2, 10))
        hidden = matrix[:, order[n_shown:]]
        note = (
            f"{len(order) - n_shown} hidden, max CI {float(hidden.max()):.2f}"
            if hidden.numel()
            else "all shown"
        )
        _heatmap(
            ax,
            matrix[:, order[:n_shown]].cpu().numpy(),
            f"{name}: {n_shown} of {len(order)} ({note})",
            cmap="Blues",
            col_labels=order[:n_shown],
        )
        ax.set_xlabel("subcomponent index (permuted order)")
        ax.set_ylabel("one-hot input feature")
    fig.suptitle(f"Causal importance on one-hot inputs (value {value:g}), step {ctx.step}")
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
    ctx: EvalContext, input_value: float | None = None, max_components: int = 40
) -> dict[str, Figure]:
    """V and U of every layer, columns/rows in the same order as the permuted-CI plot (its
    `input_value`; null: 1 for TMS, 0.75 otherwise), labelled with the subcomponent indices."""
    ci = ctx.one_hot_ci(one_hot_value(ctx, input_value))
    comps = ctx.model.components
    fig, axes = plt.subplots(2, len(comps), figsize=(4.5 * len(comps), 6.5), squeeze=False)
    with torch.no_grad():
        for col, (name, comp) in enumerate(comps.items()):
            order = diagonal_permutation(ci[name])[:max_components]
            _heatmap(
                axes[0][col],
                comp.V[:, order].cpu().numpy(),
                f"{name}: V (d_in × C)",
                "RdBu",
                True,
                col_labels=order,
            )
            axes[0][col].set_xlabel("subcomponent index")
            axes[0][col].set_ylabel("input dimension")
            _heatmap(
                axes[1][col],
                comp.U[order, :].cpu().numpy(),
                f"{name}: U (C × d_out)",
                "RdBu",
                True,
                row_labels=order,
            )
            axes[1][col].set_xlabel("output dimension")
            axes[1][col].set_ylabel("subcomponent index")
    fig.tight_layout()
    return {"uv_matrices": fig}


# Panels per row of the feature_vectors figure.
FEATURE_COLUMNS = 3


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
    # A grid of at most FEATURE_COLUMNS panels a row, so the figure stays about as tall as it is
    # wide and every panel readable at a report's width (one row of 9 was a thin strip).
    n_cols = min(FEATURE_COLUMNS, len(panels))
    n_rows = -(-len(panels) // n_cols)
    fig, grid = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 3.2 * n_rows), squeeze=False)
    for ax in grid.flat[len(panels) :]:
        fig.delaxes(ax)
    colors = plt.get_cmap("tab10")(np.arange(target.shape[0]) % 10)
    limit = float(np.abs(target).max()) * 1.1 or 1.0
    for ax, (title, matrix) in zip(grid.flat, panels, strict=False):
        if matrix.shape[1] == 2:
            for j, (x, y) in enumerate(matrix):
                ax.arrow(0, 0, x, y, color=colors[j], width=limit * 0.01, length_includes_head=True)
            ax.set_xlim(-limit, limit)
            ax.set_ylim(-limit, limit)
            ax.set_aspect("equal")
            ax.xaxis.set_major_locator(MaxNLocator(5))
        else:
            ax.imshow(matrix, aspect="auto", cmap="RdBu", vmin=-limit, vmax=limit)
            _index_ticks(ax.yaxis, list(range(matrix.shape[0])))
            _index_ticks(ax.xaxis, list(range(matrix.shape[1])))
            ax.set_xlabel("hidden dimension", fontsize=7)
            ax.set_ylabel("input feature", fontsize=7)
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"{layer}: input-feature columns, step {ctx.step}", fontsize=9)
    fig.tight_layout()
    return {f"feature_vectors_{layer}": fig}
