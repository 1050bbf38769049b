"""The parts of the target language models: RMSNorm, rotary positions, attention and the MLP.

Every matrix is an `nn.Linear` of its own (q, k, v and o are separate, the MLP has exactly two),
so a decomposition names each with a pattern such as `layers.*.attn.q_proj`.
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """x / rms(x) · g, with the root mean square taken over the last dimension."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Float[Tensor, "... dim"]) -> Float[Tensor, "... dim"]:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary_angles(
    seq_len: int, head_dim: int, theta: float, device: torch.device
) -> Float[Tensor, "seq half"]:
    """Angle p · θ^(-2i/head_dim) of position p and frequency pair i (computed in float32)."""
    inv_freq = theta ** (
        -torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    return torch.outer(positions, inv_freq)


def apply_rotary(
    x: Float[Tensor, "batch heads seq head_dim"], angles: Float[Tensor, "seq half"]
) -> Float[Tensor, "batch heads seq head_dim"]:
    """Rotate each pair (x_i, x_{i + head_dim/2}) by its angle: the pair read as the complex
    number x_i + i·x_{i+half} is multiplied by e^{i·angle} (Llama's "rotate half" layout)."""
    half = x.shape[-1] // 2
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q, k, v and o projections.

    With `rope_theta` set, queries and keys get rotary positions; otherwise the model adds
    positions to its input (GPT-2's learned table).
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool, rope_theta: float | None) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)

    def _heads(self, x: Float[Tensor, "batch seq d"]) -> Float[Tensor, "batch heads seq hd"]:
        batch, seq, d = x.shape
        return x.view(batch, seq, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, x: Float[Tensor, "batch seq d"]) -> Float[Tensor, "batch seq d"]:
        q, k, v = (
            self._heads(self.q_proj(x)),
            self._heads(self.k_proj(x)),
            self._heads(self.v_proj(x)),
        )
        if self.rope_theta is not None:
            angles = rotary_angles(x.shape[1], q.shape[-1], self.rope_theta, x.device)
            q, k = apply_rotary(q, angles), apply_rotary(k, angles)
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=1.0 / math.sqrt(q.shape[-1])
        )
        return self.o_proj(attended.transpose(1, 2).reshape(x.shape))


class MLP(nn.Module):
    """The plain two-matrix MLP: down_proj(act(c_fc(x)))."""

    def __init__(self, d_model: int, d_mlp: int, bias: bool, tanh_gelu: bool) -> None:
        super().__init__()
        self.approximate = "tanh" if tanh_gelu else "none"
        self.c_fc = nn.Linear(d_model, d_mlp, bias=bias)
        self.down_proj = nn.Linear(d_mlp, d_model, bias=bias)

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        return self.down_proj(F.gelu(self.c_fc(x), approximate=self.approximate))


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(attn_norm(x)), then + mlp(mlp_norm(·))."""

    def __init__(
        self, attn_norm: nn.Module, attn: CausalSelfAttention, mlp_norm: nn.Module, mlp: MLP
    ) -> None:
        super().__init__()
        self.attn_norm = attn_norm
        self.attn = attn
        self.mlp_norm = mlp_norm
        self.mlp = mlp

    def forward(self, x: Float[Tensor, "batch seq d"]) -> Float[Tensor, "batch seq d"]:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))
