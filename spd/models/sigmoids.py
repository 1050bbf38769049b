"""Squashing functions that turn raw causal-importance outputs into values in [0, 1].

Each `sigmoid_type` yields a pair: the function used for masks and the one used for the
importance-minimality loss. `leaky_hard` uses a lower-leaky hard sigmoid for masks (so a CI
function whose output is at or below 0 still gets gradient) and an upper-leaky one for the loss (so
values above 1 are still pushed down).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from spd.config.schema import SigmoidType

LEAK = 0.01


class _LowerLeakyHardSigmoid(torch.autograd.Function):
    """Forward clamp(x, 0, 1); backward slope 1 on (0, 1], LEAK for x <= 0, 0 for x > 1."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grad_outputs: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors  # pyright: ignore[reportAttributeAccessIssue]
        # LeakyReLU's backward (slope 1 above 0, LEAK at and below 0) cut to 0 above 1: three
        # passes over the CI tensor instead of five.
        leaky = torch.ops.aten.leaky_relu_backward(grad_outputs[0], x, LEAK, False)
        return leaky.masked_fill_(x > 1, 0.0)


def lower_leaky_hard_sigmoid(x: Tensor) -> Tensor:
    result = _LowerLeakyHardSigmoid.apply(x)
    assert isinstance(result, Tensor)
    return result


class _UpperLeakyHardSigmoid(torch.autograd.Function):
    """Forward 0 for x <= 0, x on [0, 1], 1 + LEAK·(x − 1) above 1.

    Slope 0 below 0, 1 on [0, 1] (at exactly 0 too, as the original implementation's clamp has:
    at initialisation the CI functions' biases are 0, so an all-zero input gives exactly 0 here),
    LEAK above 1.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        # clamp(x, 0) − (1 − LEAK)·clamp(x − 1, 0): two passes instead of where() over three.
        return x.clamp(min=0.0).sub_((x - 1).clamp_(min=0.0), alpha=1 - LEAK)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grad_outputs: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors  # pyright: ignore[reportAttributeAccessIssue]
        slope = torch.where(x > 1, LEAK, (x >= 0).to(x.dtype))
        return grad_outputs[0] * slope


def upper_leaky_hard_sigmoid(x: Tensor) -> Tensor:
    """0 for x <= 0, x on [0, 1], 1 + LEAK·(x − 1) above 1."""
    result = _UpperLeakyHardSigmoid.apply(x)
    assert isinstance(result, Tensor)
    return result


def hard_sigmoid(x: Tensor) -> Tensor:
    return x.clamp(0.0, 1.0)


SWISH_SHARPNESS = 10.0


def swish_hard_sigmoid(x: Tensor) -> Tensor:
    """A smooth hard sigmoid: (swish(kx) − swish(k(x − 1))) / k, ≈0 below 0 and ≈1 above 1."""
    k = SWISH_SHARPNESS
    return (F.silu(k * x) - F.silu(k * (x - 1))) / k


SigmoidFn = Callable[[Tensor], Tensor]


def get_sigmoids(sigmoid_type: SigmoidType) -> tuple[SigmoidFn, SigmoidFn]:
    """(mask-side function, loss-side function) for a `sigmoid_type`."""
    if sigmoid_type == "leaky_hard":
        return lower_leaky_hard_sigmoid, upper_leaky_hard_sigmoid
    single: SigmoidFn = {
        "normal": torch.sigmoid,
        "hard": hard_sigmoid,
        "upper_leaky_hard": upper_leaky_hard_sigmoid,
        "swish_hard": swish_hard_sigmoid,
    }[sigmoid_type]
    return single, lambda x: single(x).abs()
