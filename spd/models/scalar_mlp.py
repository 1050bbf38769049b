"""A fused forward/backward for C independent one-hidden-layer MLPs on scalars (`gate_type: mlp`).

The CI functions' cost is dominated by (batch × C × hidden) elementwise work. Plain autograd
materialises about twenty such tensors per step; this function keeps the layout (C, batch, hidden)
so the two contractions run as batched matmuls, saves nothing of that size, and recomputes the
pre-activation in the backward pass: about a third of the memory traffic.
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


class _ScalarMLP(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        w1: Tensor,
        b1: Tensor,
        w2: Tensor,
        b2: Tensor,
    ) -> Tensor:
        # x: (C, N); w1, b1, w2: (C, H); b2: (C,)
        h = torch.baddbmm(b1[:, None, :], x[:, :, None], w1[:, None, :])  # (C, N, H)
        a = F.gelu(h)
        out = torch.baddbmm(b2[:, None, None], a, w2[:, :, None]).squeeze(-1)  # (C, N)
        ctx.save_for_backward(x, w1, b1, w2)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: Tensor) -> tuple[Tensor, ...]:
        x, w1, b1, w2 = ctx.saved_tensors  # pyright: ignore[reportAttributeAccessIssue]
        g_out = grads[0].contiguous()  # (C, N)
        h = torch.baddbmm(b1[:, None, :], x[:, :, None], w1[:, None, :])
        g_a = torch.bmm(g_out[:, :, None], w2[:, None, :])  # (C, N, H)
        g_w2 = torch.bmm(g_out[:, None, :], F.gelu(h)).squeeze(1)  # (C, H)
        g_h = torch.ops.aten.gelu_backward(g_a, h)
        g_x = torch.bmm(g_h, w1[:, :, None]).squeeze(-1)  # (C, N)
        g_w1 = torch.bmm(x[:, None, :], g_h).squeeze(1)  # (C, H)
        return g_x, g_w1, g_h.sum(1), g_w2, g_out.sum(1)


def scalar_mlp(
    x: Float[Tensor, "... C"],
    w1: Float[Tensor, "C H"],
    b1: Float[Tensor, "C H"],
    w2: Float[Tensor, "C H"],
    b2: Float[Tensor, " C"],
) -> Float[Tensor, "... C"]:
    """out[..., c] = Σ_k w2[c, k] · gelu(x[..., c] · w1[c, k] + b1[c, k]) + b2[c]."""
    lead = x.shape[:-1]
    x_cn = x.reshape(-1, x.shape[-1]).T.contiguous()
    out = _ScalarMLP.apply(x_cn, w1, b1, w2, b2)
    assert isinstance(out, Tensor)
    return out.T.reshape(*lead, x.shape[-1])
