"""`ci_fn_type: global_shared_transformer`: one transformer over every decomposed layer's input,
attending over the sequence, so that a token's CI can depend on its context.

Each layer's input vector is RMS-normalised (without a gain: the projection after it would
absorb one), the normalised inputs are concatenated in sorted layer-name order and projected to
`d_model` (`spd.models.ci_fns.input_projection`; an embedding's token enters as its one-hot
vector, a table lookup). Then `n_blocks` pre-norm blocks: RMSNorm → bidirectional multi-head
self-attention with rotary positions → residual → RMSNorm → MLP (GELU) → residual; a final
RMSNorm and a linear head give all Σ C_l raw CIs, split back per layer in sorted order.

The second-to-last axis of an input vector (the last of a token input) is the sequence; an
input without one (a toy model's (batch, d) rows) is a sequence of length one. Sequences are
unpadded (`spd.data.lm_data` packs full windows), so no attention mask is applied. Attention is
computed as softmax(Q Kᵀ / √d_head) V in plain operations, which keep the (heads × seq × seq)
probabilities for the backward pass: the memory estimate counts them (`activation_elements`).
"""

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float
from pydantic import Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator
from torch import Tensor, nn

from spd.config.schema import StrictModel
from spd.models.ci_fns.base import (
    CIFunctionType,
    LayerShape,
    fan_in_normal,
    register_ci_function_type,
)
from spd.models.ci_fns.global_shared_mlp import split_per_layer
from spd.models.ci_fns.input_projection import (
    InputProjection,
    dense_input_width,
    projection_parameter_count,
)

# Added under the square root of every RMS normalisation (inputs and blocks).
NORM_EPS = 1e-6


class GlobalTransformerParams(StrictModel):
    """The `ci_fn_params` of `global_shared_transformer` (`ci_fn_hidden_dims` is not used)."""

    d_model: PositiveInt = Field(default=64, description="Width of the residual stream")
    n_blocks: PositiveInt = Field(default=2, description="Number of transformer blocks")
    n_heads: PositiveInt = Field(
        default=4, description="Attention heads per block; must divide d_model"
    )
    mlp_hidden: PositiveInt = Field(
        default=256, description="Hidden width of each block's MLP (GELU)"
    )
    rope_theta: PositiveFloat = Field(
        default=10000.0,
        description="Base of the rotary position embedding's frequencies (theta^(-2i/d_head))",
    )

    @field_validator("n_heads")
    @classmethod
    def _heads_fit(cls, n_heads: int, info: ValidationInfo) -> int:
        d_model = info.data.get("d_model")
        if d_model is None:  # d_model itself failed and is reported
            return n_heads
        if d_model % n_heads:
            raise ValueError(
                f"d_model {d_model} is not divisible by n_heads {n_heads}; choose n_heads that "
                "divides d_model"
            )
        if (d_model // n_heads) % 2:
            raise ValueError(
                f"the head dimension d_model / n_heads = {d_model // n_heads} is odd, but rotary "
                "positions rotate pairs of dimensions; make it even"
            )
        return n_heads


def rms_normalise(x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    """x / RMS(x), in float32 at least (a zero vector stays zero)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS)


def rotary_angles(
    seq_len: int, d_head: int, theta: float, device: torch.device
) -> tuple[Float[Tensor, "seq half"], Float[Tensor, "seq half"]]:
    """cos and sin of position p times frequency theta^(-2i/d_head), i < d_head / 2."""
    inv_freq = theta ** (-torch.arange(0, d_head, 2, device=device, dtype=torch.float32) / d_head)
    angles = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos(), angles.sin()


def rotate(
    x: Float[Tensor, "... seq d_head"],
    cos: Float[Tensor, "seq half"],
    sin: Float[Tensor, "seq half"],
) -> Float[Tensor, "... seq d_head"]:
    """Rotate each pair (x_i, x_{i + d_head/2}) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    """RMSNorm → bidirectional self-attention (rotary) → residual → RMSNorm → MLP → residual."""

    def __init__(self, params: GlobalTransformerParams) -> None:
        super().__init__()
        d, m = params.d_model, params.mlp_hidden
        self.n_heads = params.n_heads
        self.theta = params.rope_theta
        self.attn_norm = nn.RMSNorm(d, eps=NORM_EPS)
        self.qkv = nn.Parameter(fan_in_normal((d, 3 * d), d, is_output=True))
        self.attn_out = nn.Parameter(fan_in_normal((d, d), d, is_output=True))
        self.mlp_norm = nn.RMSNorm(d, eps=NORM_EPS)
        self.up = nn.Parameter(fan_in_normal((d, m), d, is_output=False))
        self.up_bias = nn.Parameter(torch.zeros(m))
        self.down = nn.Parameter(fan_in_normal((m, d), m, is_output=True))
        self.down_bias = nn.Parameter(torch.zeros(d))

    def attention(self, x: Float[Tensor, "... seq d"]) -> Float[Tensor, "... seq d"]:
        seq, d = x.shape[-2:]
        d_head = d // self.n_heads
        qkv = (x @ self.qkv).unflatten(-1, (3, self.n_heads, d_head))
        q, k, v = (
            qkv.select(-3, i).transpose(-2, -3) for i in range(3)
        )  # (..., heads, seq, d_head)
        cos, sin = rotary_angles(seq, d_head, self.theta, x.device)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        # No mask: every position attends to every other (bidirectional; sequences are unpadded).
        probs = torch.softmax((q @ k.transpose(-1, -2)) * d_head**-0.5, dim=-1)
        out = (probs @ v).transpose(-2, -3).flatten(-2)
        return out @ self.attn_out

    def forward(self, h: Float[Tensor, "... seq d"]) -> Float[Tensor, "... seq d"]:
        h = h + self.attention(self.attn_norm(h))
        hidden = torch.nn.functional.gelu(self.mlp_norm(h) @ self.up + self.up_bias)
        return h + hidden @ self.down + self.down_bias


class GlobalSharedTransformerCIFn(nn.Module):
    """Every layer's input in, every layer's raw CI out (module doc)."""

    def __init__(self, layers: Mapping[str, LayerShape], params: GlobalTransformerParams) -> None:
        super().__init__()
        self.widths = {name: shape.C for name, shape in layers.items()}
        self.token_input = {name: shape.token_input for name, shape in layers.items()}
        d = params.d_model
        self.projection = InputProjection(layers, d, is_output=True)
        self.blocks = nn.ModuleList(Block(params) for _ in range(params.n_blocks))
        self.final_norm = nn.RMSNorm(d, eps=NORM_EPS)
        C_total = sum(self.widths.values())
        self.head = nn.Parameter(fan_in_normal((d, C_total), d, is_output=True))
        self.head_bias = nn.Parameter(torch.zeros(C_total))

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Float[Tensor, "... C"]]:
        normalised = {
            name: x if self.token_input[name] else rms_normalise(x) for name, x in inputs.items()
        }
        h = self.projection(normalised)
        no_sequence = h.dim() == 2  # (batch, d_model): a toy model's rows, sequences of one
        if no_sequence:
            h = h.unsqueeze(-2)
        for block in self.blocks:
            h = block(h)
        out = self.final_norm(h) @ self.head + self.head_bias
        if no_sequence:
            out = out.squeeze(-2)
        return split_per_layer(out, self.widths, list(inputs))


class GlobalSharedTransformerType(CIFunctionType[GlobalTransformerParams]):
    """The `global_shared_transformer` type: reads every layer's input at once."""

    name = "global_shared_transformer"
    params_model = GlobalTransformerParams
    reads = "all_inputs"

    def build(
        self,
        layers: Mapping[str, LayerShape],
        hidden_dims: Sequence[int],
        params: GlobalTransformerParams,
    ) -> GlobalSharedTransformerCIFn:
        return GlobalSharedTransformerCIFn(layers, params)

    def parameter_count(
        self,
        layers: Mapping[str, LayerShape],
        hidden_dims: Sequence[int],
        params: GlobalTransformerParams,
    ) -> int:
        d, m = params.d_model, params.mlp_hidden
        # Two norm gains, the attention's qkv and output maps, the MLP with its biases.
        block = 2 * d + 3 * d * d + d * d + (d * m + m) + (m * d + d)
        C_total = sum(s.C for s in layers.values())
        head = d + d * C_total + C_total  # final norm gain, head and its bias
        return projection_parameter_count(layers, d) + params.n_blocks * block + head

    def activation_elements(
        self,
        layers: Mapping[str, LayerShape],
        hidden_dims: Sequence[int],
        params: GlobalTransformerParams,
        seq_len: int = 1,
    ) -> int:
        d, m, heads = params.d_model, params.mlp_hidden, params.n_heads
        # The normalised input vectors, concatenated, and each token index.
        inputs = dense_input_width(layers) + sum(s.token_input for s in layers.values())
        # Per block: each RMSNorm keeps its input, 1/RMS, the normalised vector and its product
        # with the gain (3d + 1, twice); attention keeps q, k, v and its output (4d) and the
        # probabilities over the sequence (heads × seq_len: what grows with its square); the MLP
        # its pre-activation and GELU output (2m).
        block = 10 * d + 2 + 2 * m + heads * seq_len
        C_total = sum(s.C for s in layers.values())
        # The final RMSNorm (3d + 1); the raw CI, which the sigmoids keep.
        return inputs + params.n_blocks * block + 3 * d + 1 + C_total


GLOBAL_SHARED_TRANSFORMER = register_ci_function_type(GlobalSharedTransformerType())
