"""Scores of one-hot causal-importance matrices against the patterns the toy models should show.

A CI matrix here has one row per input feature (the CI on that feature's one-hot input) and one
column per subcomponent. Layers are grouped by fnmatch pattern and a group's matrices are put
side by side, so a pattern like `layers.*.mlp_in` is scored as one matrix: in a multi-layer
residual MLP a feature's dedicated subcomponent may sit in any layer, and the dense mlp_out
component is spread over all of them.
"""

import fnmatch
from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from spd.errors import SPDUserError


def group_by_patterns(
    ci: Mapping[str, Float[Tensor, "n_features C"]], patterns: Sequence[str]
) -> dict[str, Float[Tensor, "n_features C_group"]]:
    """For each pattern, the CI matrices of the layers it matches, concatenated along columns.

    Layers keep their order in `ci`. A pattern that matches no layer is a user error (it is
    almost always a typo in a metric's parameters).
    """
    groups: dict[str, Tensor] = {}
    for pattern in patterns:
        matched = [m for name, m in ci.items() if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise SPDUserError(
                f"metric parameter pattern '{pattern}' matches no decomposed layer; "
                f"decomposed: {', '.join(ci)}"
            )
        groups[pattern] = torch.cat(matched, dim=1)
    return groups


def dedicated(
    ci: Float[Tensor, "n_features C"], on: float = 0.5, off: float = 0.1
) -> Bool[Tensor, "n_features C"]:
    """dedicated[f, c]: CI of c is above `on` for feature f and at most `off` for every other.

    With `on` ≥ `off` a subcomponent is dedicated to at most one feature, so features that each
    have exactly one dedicated subcomponent always have different ones.
    """
    quiet_elsewhere = (ci <= off).sum(0) == ci.shape[0] - 1
    return (ci > on) & quiet_elsewhere[None, :]


def n_with_one_dedicated(
    ci: Float[Tensor, "n_features C"], on: float = 0.5, off: float = 0.1
) -> int:
    """Features with exactly one dedicated subcomponent (see `dedicated`)."""
    return int((dedicated(ci, on, off).sum(1) == 1).sum())


def n_with_sole_dedicated(
    ci: Float[Tensor, "n_features C"], on: float = 0.5, off: float = 0.1
) -> int:
    """Features whose one dedicated subcomponent is also the only one with CI above `off`.

    Stricter than `n_with_one_dedicated`: a feature that also switches on a shared subcomponent
    (as happens when the importance coefficient is too low) does not count.
    """
    one = dedicated(ci, on, off).sum(1) == 1
    alone = (ci > off).sum(1) == 1
    return int((one & alone).sum())


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


def dense_errors(ci: Float[Tensor, "n_features C"], k: int, tolerance: float) -> int:
    """Entries off the dense rank-k pattern by more than `tolerance`.

    Expected: the k columns with the largest total CI are all ones, every other column zero.
    """
    ordered = ci[:, ci.sum(0).argsort(descending=True)]
    expected = torch.zeros_like(ordered)
    expected[:, :k] = 1.0
    return int(((ordered - expected).abs() > tolerance).sum())
