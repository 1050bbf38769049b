"""A fused forward/backward for C independent one-hidden-layer MLPs on scalars (`gate_type: mlp`).

The CI functions' cost is dominated by (batch × C × hidden) elementwise work. Plain autograd
materialises about twenty such tensors per step; this function keeps the layout (C, batch, hidden)
so the two contractions run as batched matmuls and saves only the hidden layer and its GELU
(recomputed in the backward pass instead when they are large). On the CPU it also
evaluates the all-zero rows of a sparse batch only once (see `scalar_mlp`).
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

# Hidden layers up to this many elements are kept for the backward pass; larger ones (e.g.
# resid_mlp3's 2048 × 500 × 128) are recomputed there, trading time for gigabytes; tms_40-10's
# 4096 × 200 × 16 (64 MB each) are kept.
KEEP_HIDDEN_MAX = 2**24
# Skip the all-zero rows only when they are a sizeable share of the batch; otherwise the
# gather/scatter costs more than it saves.
ZERO_ROW_SKIP_MAX_LIVE = 0.75


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
        keep = h.numel() <= KEEP_HIDDEN_MAX
        ctx.keep_hidden = keep  # pyright: ignore[reportAttributeAccessIssue]
        ctx.save_for_backward(x, w1, b1, w2, *((h, a) if keep else ()))
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: Tensor) -> tuple[Tensor, ...]:
        x, w1, b1, w2, *kept = ctx.saved_tensors  # pyright: ignore[reportAttributeAccessIssue]
        if kept:
            h, a = kept
        else:
            h = torch.baddbmm(b1[:, None, :], x[:, :, None], w1[:, None, :])
            a = F.gelu(h)
        g_out = grads[0].contiguous()  # (C, N)
        g_a = torch.bmm(g_out[:, :, None], w2[:, None, :])  # (C, N, H)
        g_w2 = torch.bmm(g_out[:, None, :], a).squeeze(1)  # (C, H)
        g_h = torch.ops.aten.gelu_backward(g_a, h)
        g_x = torch.bmm(g_h, w1[:, :, None]).squeeze(-1)  # (C, N)
        g_w1 = torch.bmm(x[:, None, :], g_h).squeeze(1)  # (C, H)
        return g_x, g_w1, g_h.sum(1), g_w2, g_out.sum(1)


def _apply(
    x_cn: Float[Tensor, "C N"], w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor
) -> Float[Tensor, "N C"]:
    out = _ScalarMLP.apply(x_cn.contiguous(), w1, b1, w2, b2)
    assert isinstance(out, Tensor)
    # Downstream elementwise work (sigmoids, masks) runs on (N, C) tensors; a transposed view
    # would make every one of those operators walk memory with a stride of N.
    return out.T.contiguous()


def scalar_mlp(
    x: Float[Tensor, "... C"],
    w1: Float[Tensor, "C H"],
    b1: Float[Tensor, "C H"],
    w2: Float[Tensor, "C H"],
    b2: Float[Tensor, " C"],
) -> Float[Tensor, "... C"]:
    """out[..., c] = Σ_k w2[c, k] · gelu(x[..., c] · w1[c, k] + b1[c, k]) + b2[c].

    On the CPU, rows whose C inputs are all exactly zero (all-zero inputs to the layer: most of
    a sparse toy batch) are not evaluated one by one. Each such row's output is
    out(0) + x · out'(0), with out(0) evaluated once and the slope out'(0) held constant: the
    same values, and the same gradients, since x = 0 there (the slope's own gradient is
    multiplied by x). On CUDA the per-row work is not the bottleneck and finding the rows would
    cost a synchronisation, so every row is evaluated.
    """
    lead, C = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, C)
    if flat.device.type == "cpu":
        # Σ|x| is zero exactly for all-zero rows, and is the cheapest such reduction here.
        live = flat.abs().sum(-1).nonzero().squeeze(-1)
        if live.numel() <= ZERO_ROW_SKIP_MAX_LIVE * flat.shape[0]:
            at_zero = (w2 * F.gelu(b1)).sum(-1) + b2  # (C,): the MLPs at x = 0
            with torch.no_grad():
                slope = (w2 * w1 * torch.ops.aten.gelu_backward(torch.ones_like(b1), b1)).sum(-1)
            shared = at_zero + flat * slope
            live_out = _apply(flat.index_select(0, live).T, w1, b1, w2, b2)
            return shared.index_copy(0, live, live_out).reshape(*lead, C)
    return _apply(flat.T, w1, b1, w2, b2).reshape(*lead, C)
