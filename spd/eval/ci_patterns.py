"""Scores of one-hot causal-importance matrices against the patterns the toy models should show.

A CI matrix here has one row per input feature (the CI on that feature's one-hot input) and one
column per subcomponent. Layers are grouped by fnmatch pattern, so that a pattern like
`layers.*.mlp_in` is scored over all the layers it matches: in a multi-layer residual MLP a
feature may be served by any of them (each serving layer should give it one dedicated
subcomponent), and the dense mlp_out component is spread over all of them.
"""

import fnmatch
from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from spd.errors import SPDUserError
from spd.eval.context import diagonal_permutation


def layers_by_patterns(
    ci: Mapping[str, Float[Tensor, "n_features C"]], patterns: Sequence[str]
) -> dict[str, list[Float[Tensor, "n_features C"]]]:
    """For each pattern, the CI matrices of the layers it matches, in their order in `ci`.

    A pattern that matches no layer is a user error (it is almost always a typo in a metric's
    parameters).
    """
    groups: dict[str, list[Tensor]] = {}
    for pattern in patterns:
        matched = [m for name, m in ci.items() if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise SPDUserError(
                f"metric parameter pattern '{pattern}' matches no decomposed layer; "
                f"decomposed: {', '.join(ci)}"
            )
        groups[pattern] = matched
    return groups


def group_by_patterns(
    ci: Mapping[str, Float[Tensor, "n_features C"]], patterns: Sequence[str]
) -> dict[str, Float[Tensor, "n_features C_group"]]:
    """For each pattern, the CI matrices of the layers it matches, side by side (see
    `layers_by_patterns`)."""
    return {p: torch.cat(ms, dim=1) for p, ms in layers_by_patterns(ci, patterns).items()}


def dedicated(
    ci: Float[Tensor, "n_features C"], on: float = 0.5, off: float = 0.1
) -> Bool[Tensor, "n_features C"]:
    """dedicated[f, c]: CI of c is above `on` for feature f and at most `off` for every other.

    With `on` ≥ `off` a subcomponent is dedicated to at most one feature, so features that each
    have exactly one dedicated subcomponent always have different ones.
    """
    quiet_elsewhere = (ci <= off).sum(0) == ci.shape[0] - 1
    return (ci > on) & quiet_elsewhere[None, :]


def dedicated_per_layer(
    layers: Sequence[Float[Tensor, "n_features C"]], on: float = 0.5, off: float = 0.1
) -> Int[Tensor, "n_features n_layers"]:
    """How many dedicated subcomponents (see `dedicated`) each feature has in each layer."""
    return torch.stack([dedicated(m, on, off).sum(1) for m in layers], 1)


def serving_layers(
    layers: Sequence[Float[Tensor, "n_features C"]], on: float = 0.5
) -> Bool[Tensor, "n_features n_layers"]:
    """serving[f, l]: some subcomponent of layer l has CI above `on` for feature f."""
    return torch.stack([(m > on).any(1) for m in layers], 1)


def _one_per_serving_layer(
    counts: Int[Tensor, "n_features n_layers"], serving: Bool[Tensor, "n_features n_layers"]
) -> Bool[Tensor, " n_features"]:
    return serving.any(1) & (counts == serving.long()).all(1)


def n_with_one_dedicated(
    layers: Sequence[Float[Tensor, "n_features C"]], on: float = 0.5, off: float = 0.1
) -> int:
    """Features with exactly one dedicated subcomponent in each layer of `layers` that serves
    them (`serving_layers`), served by at least one. With one layer: exactly one.

    A feature that a multi-layer target computes in two layers needs its input read in both, so
    the paper's pattern there is one dedicated subcomponent per feature in each of those layers.
    """
    counts, serving = dedicated_per_layer(layers, on, off), serving_layers(layers, on)
    return int(_one_per_serving_layer(counts, serving).sum())


def n_with_sole_dedicated(
    layers: Sequence[Float[Tensor, "n_features C"]], on: float = 0.5, off: float = 0.1
) -> int:
    """Features counted by `n_with_one_dedicated` whose dedicated subcomponents are also the only
    ones above `off` in `layers`.

    Stricter: a feature that also switches on a shared subcomponent (as happens when the
    importance coefficient is too low) does not count.
    """
    counts = dedicated_per_layer(layers, on, off)
    above_off = torch.stack([(m > off).sum(1) for m in layers], 1)
    alone = (above_off == counts).all(1)
    return int((_one_per_serving_layer(counts, serving_layers(layers, on)) & alone).sum())


def n_dense(ci: Float[Tensor, "n_features C"], on: float = 0.5, min_fraction: float = 0.9) -> int:
    """Subcomponents with CI above `on` for at least `min_fraction` of the features."""
    return int(((ci > on).float().mean(0) >= min_fraction).sum())


def live_columns(ci: Float[Tensor, "n_features C"], off: float = 0.1) -> Bool[Tensor, " C"]:
    """Which subcomponents have CI above `off` for at least one feature."""
    return (ci > off).any(0)


def n_live(ci: Float[Tensor, "n_features C"], off: float = 0.1) -> int:
    """How many subcomponents are live (see `live_columns`)."""
    return int(live_columns(ci, off).sum())


def n_axis_aligned(
    read_vectors: Float[Tensor, "d_in C"], columns: Tensor, min_cos: float = 0.99
) -> int:
    """How many of the chosen columns point along one input axis (|cos| ≥ `min_cos` with a
    basis vector), each axis counted once: for an MLP's output matrix, the subcomponents that
    read exactly one neuron."""
    best, axis = nearest_axes(read_vectors[:, columns])
    return int(axis[best >= min_cos].unique().numel())


def nearest_axes(
    read_vectors: Float[Tensor, "d_in C"],
) -> tuple[Float[Tensor, " C"], Tensor]:
    """For each column, the input axis it points along most closely and that |cos|."""
    cos = read_vectors.abs() / read_vectors.norm(dim=0, keepdim=True).clamp_min(1e-12)
    return cos.max(0)


def identity_errors(ci: Float[Tensor, "n_features C"], order: list[int], tolerance: float) -> int:
    """Entries off the identity pattern by more than `tolerance`, columns taken in `order`.

    `order` is the diagonal permutation (feature f's subcomponent is column `order[f]`); the
    expected matrix is the identity on the first min(n_features, C) columns and zero elsewhere.
    """
    ordered = ci[:, order]
    n_features, C = ordered.shape
    expected = torch.zeros_like(ordered)
    diag = min(n_features, C)
    expected[:diag, :diag] = torch.eye(diag, device=ci.device)
    return int(((ordered - expected).abs() > tolerance).sum())


def serving_identity_errors(
    layers: Sequence[Float[Tensor, "n_features C"]], on: float = 0.5, tolerance: float = 0.1
) -> int:
    """`identity_errors` of each layer over the features it serves (`serving_layers`), plus the
    entries above `tolerance` of the features it does not serve.

    So a feature computed in two layers may have its own subcomponent in each. Features that no
    layer serves are scored in the first layer's identity pattern (their missing diagonal entry
    is an error); with one layer this is `identity_errors` of that layer.
    """
    serving = serving_layers(layers, on)
    unserved = ~serving.any(1)
    errors = 0
    for index, (matrix, serves) in enumerate(zip(layers, serving.T, strict=True)):
        scored = serves | unserved if index == 0 else serves
        rows = matrix[scored]
        if rows.shape[0] > 0:
            errors += identity_errors(rows, diagonal_permutation(rows), tolerance)
        errors += int((matrix[~scored] > tolerance).sum())
    return errors


def dense_errors(ci: Float[Tensor, "n_features C"], k: int, tolerance: float) -> int:
    """Entries off the dense rank-k pattern by more than `tolerance`.

    Expected: the k columns with the largest total CI are all ones, every other column zero.
    """
    ordered = ci[:, ci.sum(0).argsort(descending=True)]
    expected = torch.zeros_like(ordered)
    expected[:, :k] = 1.0
    return int(((ordered - expected).abs() > tolerance).sum())
