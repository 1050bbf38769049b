"""The squashing functions (docs/method.md, 'Causal importance'), against values and slopes by hand."""

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from spd.config.schema import SigmoidType
from spd.models.sigmoids import (
    get_sigmoids,
    hard_sigmoid,
    lower_leaky_hard_sigmoid,
    swish_hard_sigmoid,
    upper_leaky_hard_sigmoid,
)

#              below 0 ─────────┐  at 0  inside   at 1  above 1
POINTS = [-2.0, -0.5, 0.0, 0.25, 1.0, 1.5, 3.0]


def _value_and_grad(
    fn: Callable[[Tensor], Tensor], points: list[float]
) -> tuple[list[float], list[float]]:
    x = torch.tensor(points, requires_grad=True)
    y = fn(x)
    y.sum().backward()
    assert x.grad is not None
    return y.tolist(), x.grad.tolist()


def test_lower_leaky_hard_sigmoid_clamps_forward() -> None:
    values, _ = _value_and_grad(lower_leaky_hard_sigmoid, POINTS)
    assert values == [0.0, 0.0, 0.0, 0.25, 1.0, 1.0, 1.0]


def test_lower_leaky_hard_sigmoid_gradient_leaks_below_zero_only() -> None:
    # Slope 1 on (0, 1], 0.01 for x <= 0 (a closed CI function can reopen), 0 above 1.
    _, grads = _value_and_grad(lower_leaky_hard_sigmoid, POINTS)
    assert grads == pytest.approx([0.01, 0.01, 0.01, 1.0, 1.0, 0.0, 0.0])


def test_lower_leaky_hard_sigmoid_passes_upstream_gradient_through() -> None:
    x = torch.tensor([-1.0, 0.5], requires_grad=True)
    (lower_leaky_hard_sigmoid(x) * torch.tensor([3.0, -2.0])).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == pytest.approx([0.03, -2.0])


def test_upper_leaky_hard_sigmoid_values_and_slopes() -> None:
    # 0 for x <= 0, x on [0, 1], 1 + 0.01 (x − 1) above 1.
    values, grads = _value_and_grad(upper_leaky_hard_sigmoid, POINTS)
    assert values == pytest.approx([0.0, 0.0, 0.0, 0.25, 1.0, 1.005, 1.02])
    assert grads[0] == 0.0 and grads[1] == 0.0
    assert grads[3] == pytest.approx(1.0) and grads[4] == pytest.approx(1.0)
    assert grads[5] == pytest.approx(0.01) and grads[6] == pytest.approx(0.01)


def test_upper_leaky_hard_sigmoid_has_slope_one_at_exactly_zero() -> None:
    # As the original implementation (its clamp passes the gradient at the boundary): at
    # initialisation the CI functions' biases are 0, so an all-zero row's raw CI is exactly 0 and
    # this slope decides whether the importance loss reaches those biases at all.
    x = torch.tensor([0.0, -0.0, -1e-30], requires_grad=True)
    (upper_leaky_hard_sigmoid(x) * torch.tensor([2.0, 3.0, 5.0])).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [2.0, 3.0, 0.0]


def test_hard_sigmoid_is_a_plain_clamp() -> None:
    values, grads = _value_and_grad(hard_sigmoid, POINTS)
    assert values == [0.0, 0.0, 0.0, 0.25, 1.0, 1.0, 1.0]
    assert grads[0] == 0.0 and grads[3] == 1.0 and grads[6] == 0.0


def test_swish_hard_sigmoid_is_a_smooth_hard_sigmoid() -> None:
    # (silu(10x) − silu(10(x − 1))) / 10: at x = 0.5 the two swish terms are 5σ(5) and −5σ(−5),
    # so the value is (5σ(5) + 5σ(−5)) / 10 = 0.5 exactly.
    values = swish_hard_sigmoid(torch.tensor([-3.0, 0.5, 4.0])).tolist()
    assert values[1] == pytest.approx(0.5, abs=1e-7)
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert values[2] == pytest.approx(1.0, abs=1e-6)
    _, grads = _value_and_grad(swish_hard_sigmoid, [0.1, 0.5, 0.9])
    assert all(g > 0 for g in grads), "rising across the ramp"


def test_leaky_hard_pairs_lower_for_masks_and_upper_for_loss() -> None:
    mask_fn, loss_fn = get_sigmoids("leaky_hard")
    x = torch.tensor([-1.0, 0.5, 2.0])
    assert mask_fn(x).tolist() == [0.0, 0.5, 1.0]
    assert loss_fn(x).tolist() == pytest.approx([0.0, 0.5, 1.01])


@pytest.mark.parametrize(
    ("sigmoid_type", "expected"),
    [
        # logistic σ(x) = 1 / (1 + e^{−x}): σ(0) = 0.5, σ(ln 3) = 0.75.
        ("normal", [0.5, 0.75]),
        ("hard", [0.0, 1.0]),
        ("upper_leaky_hard", [0.0, 1.0 + 0.01 * (math.log(3.0) - 1)]),
    ],
)
def test_single_function_types_serve_both_roles(
    sigmoid_type: SigmoidType, expected: list[float]
) -> None:
    mask_fn, loss_fn = get_sigmoids(sigmoid_type)
    x = torch.tensor([0.0, math.log(3.0)])
    assert mask_fn(x).tolist() == pytest.approx(expected, abs=1e-6)
    assert loss_fn(x).tolist() == pytest.approx([abs(e) for e in expected], abs=1e-6)
