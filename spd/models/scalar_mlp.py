"""A fused forward/backward for C independent one-hidden-layer MLPs on scalars (`ci_fn_type: mlp`).

The CI functions' cost is dominated by (batch × C × hidden) elementwise work, and on the CPU by
moving it through memory: tms_40-10's hidden layer alone is 4096 × 200 × 16 floats (52 MB) per
layer. So this function runs over blocks of subcomponents small enough for the block's hidden
layer to stay in the CPU's cache, and lays each block out as (C, hidden, batch), so every
contraction is a batched matrix product over the long batch axis. The hidden layer and its GELU
are kept for the backward pass up to `KEEP_HIDDEN_MAX` elements and recomputed block by block
beyond. On the CPU it also evaluates the all-zero rows of a sparse batch only once (see
`scalar_mlp`).
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

# Elements of one block's hidden layer per CPU thread (2 MB in float32): a block's few tensors of
# this size stay in the L2/L3 caches. Measured on tms_40-10 (C = 200, batch 4096, hidden 16)
# with 1 thread: one block of everything takes 186 ms forward and backward, blocks of 2^19
# elements 45 ms. On CUDA the whole layer is one block (memory bandwidth is not the limit there,
# kernel launches are).
CPU_BLOCK_ELEMENTS = 2**19
# Hidden layers up to this many elements (64 MB in float32) are kept from the forward pass, with
# their GELU: reading them back costs less than recomputing them (tms_40-10's 4096 × 200 × 16,
# 1 thread: 48 ms forward and backward kept, 53 ms recomputed). Larger ones (resid_mlp3's
# 2048 × 500 × 128) are recomputed in the backward pass, trading time for gigabytes.
KEEP_HIDDEN_MAX = 2**24
# Skip the all-zero rows only when they are a sizeable share of the batch; otherwise the
# gather/scatter costs more than it saves.
ZERO_ROW_SKIP_MAX_LIVE = 0.75


def _blocks(x: Tensor, hidden: int) -> list[slice]:
    """Slices of the C axis whose hidden layers have about `CPU_BLOCK_ELEMENTS` elements per
    thread each (one slice on CUDA)."""
    C, N = x.shape
    if x.device.type != "cpu":
        return [slice(0, C)]
    # Each thread works on its share of a block, so the block grows with the threads.
    per_block = max(1, CPU_BLOCK_ELEMENTS * torch.get_num_threads() // max(1, N * hidden))
    return [slice(s, min(C, s + per_block)) for s in range(0, C, per_block)]


def _hidden(x: Tensor, w1: Tensor, b1: Tensor, c: slice) -> Tensor:
    """The pre-GELU hidden layer of subcomponents `c`, laid out (C_block, H, N)."""
    return torch.baddbmm(b1[c, :, None], w1[c, :, None], x[c, None, :])


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
        out = x.new_empty(x.shape[0], 1, x.shape[1])
        keep = x.numel() * w1.shape[1] <= KEEP_HIDDEN_MAX
        kept: list[Tensor] = []
        for c in _blocks(x, w1.shape[1]):
            h = _hidden(x, w1, b1, c)
            a = F.gelu(h)
            torch.baddbmm(b2[c, None, None], w2[c, None, :], a, out=out[c])
            if keep:
                kept += [h, a]
        ctx.save_for_backward(x, w1, b1, w2, *kept)
        return out.squeeze(1)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: Tensor) -> tuple[Tensor, ...]:
        x, w1, b1, w2, *kept = ctx.saved_tensors  # pyright: ignore[reportAttributeAccessIssue]
        g_out = grads[0].contiguous()  # (C, N)
        C, H = w1.shape
        # With g_h = g_out ⊗ w2 ⊙ gelu'(h) (one pass over a block for gelu'(h), no (C, H, N)
        # tensor for g_out ⊗ w2, and w2 applied to the (C, H) results instead):
        #   g_w1 = w2 Σ_n x g_out gelu'(h),  g_b1 = w2 Σ_n g_out gelu'(h)  (one product against
        #   both rows of `rhs`),  g_x = g_out · ((w1 w2) · gelu'(h)),  g_w2 = Σ_n g_out gelu(h).
        rhs = torch.stack([x * g_out, g_out], 1)  # (C, 2, N)
        w1_w2 = (w1 * w2)[:, None, :]  # (C, 1, H)
        g_w1_b1 = x.new_empty(C, 2, H)
        g_w2 = x.new_empty(C, 1, H)
        w1_d = x.new_empty(C, 1, x.shape[1])
        for i, c in enumerate(_blocks(x, H)):
            if kept:
                h, a = kept[2 * i], kept[2 * i + 1]
            else:
                h = _hidden(x, w1, b1, c)
                a = F.gelu(h)
            torch.bmm(rhs[c, 1:], a.transpose(1, 2), out=g_w2[c])
            gelu_slope = torch.ops.aten.gelu_backward(_ones_like(h), h)
            torch.bmm(rhs[c], gelu_slope.transpose(1, 2), out=g_w1_b1[c])
            torch.bmm(w1_w2[c], gelu_slope, out=w1_d[c])
        g_w1_b1.mul_(w2[:, None, :])
        g_x = w1_d.squeeze(1).mul_(g_out)
        return g_x, g_w1_b1[:, 0], g_w1_b1[:, 1], g_w2.squeeze(1), g_out.sum(1)


_cpu_ones: dict[torch.dtype, Tensor] = {}


def _ones_like(t: Tensor) -> Tensor:
    """Ones shaped like `t`: on the CPU a contiguous view of one buffer kept per dtype.

    gelu_backward's incoming gradient. On the CPU, with a broadcast (stride-0) one it runs its
    slower strided loop (1.35 against 0.9 ns per element), and a fresh tensor of ones costs a pass
    to fill; the buffer is as large as the largest block (`CPU_BLOCK_ELEMENTS` per thread). On
    CUDA, where the whole layer is one block, the broadcast costs nothing extra.
    """
    if t.device.type != "cpu":
        return t.new_ones(()).expand_as(t)
    buffer = _cpu_ones.get(t.dtype)
    if buffer is None or buffer.numel() < t.numel():
        buffer = _cpu_ones[t.dtype] = torch.ones(t.numel(), dtype=t.dtype)
    return buffer[: t.numel()].view(t.shape)


def _apply(
    x_cn: Float[Tensor, "C N"], w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor
) -> Float[Tensor, "N C"]:
    if torch.is_autocast_enabled(x_cn.device.type):
        # The hand-fused kernel has no autocast rules: under `autocast_bf16` it runs in its
        # weights' dtype (float32) on the bf16 inner activations cast up.
        with torch.autocast(x_cn.device.type, enabled=False):
            out = _ScalarMLP.apply(x_cn.to(w1.dtype).contiguous(), w1, b1, w2, b2)
    else:
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
    live = rows_evaluated_alone(flat)
    if live is None:
        return _apply(flat.T, w1, b1, w2, b2).reshape(*lead, C)
    at_zero = (w2 * F.gelu(b1)).sum(-1) + b2  # (C,): the MLPs at x = 0
    with torch.no_grad():
        slope = (w2 * w1 * torch.ops.aten.gelu_backward(torch.ones_like(b1), b1)).sum(-1)
    shared = at_zero + flat * slope
    live_out = _apply(flat.index_select(0, live).T, w1, b1, w2, b2)
    return shared.index_copy(0, live, live_out).reshape(*lead, C)


def rows_evaluated_alone(flat: Float[Tensor, "N C"]) -> Tensor | None:
    """The indices of the rows `scalar_mlp` evaluates one by one when it skips the all-zero rows
    (CPU, and those rows a large enough share), or None when it evaluates every row."""
    if flat.device.type != "cpu":
        return None
    # Σ|x| is zero exactly for all-zero rows, and is the cheapest such reduction here.
    live = flat.abs().sum(-1).nonzero().squeeze(-1)
    return live if live.numel() <= ZERO_ROW_SKIP_MAX_LIVE * flat.shape[0] else None
