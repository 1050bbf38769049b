"""`ci_fn_type: vector_mlp`: one MLP per subcomponent on the layer's whole input vector."""

import itertools
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from spd.models.ci_fns.base import (
    LayerCIFunctionType,
    LayerShape,
    NoParams,
    fan_in_normal,
    register_ci_function_type,
)


class VectorMLPCIFn(nn.Module):
    """C MLPs d_in → hidden_dims → 1 with GELU between; the first layer of all C is one
    (d_in, C · hidden) matrix product."""

    def __init__(self, C: int, d_in: int, hidden_dims: Sequence[int]) -> None:
        super().__init__()
        dims = [*hidden_dims, 1]
        self.C = C
        self.in_weight = nn.Parameter(
            fan_in_normal((d_in, C, dims[0]), d_in, is_output=len(dims) == 1)
        )
        self.in_bias = nn.Parameter(torch.zeros(C, dims[0]))
        n_later = len(dims) - 1
        self.weights = nn.ParameterList(
            nn.Parameter(fan_in_normal((C, a, b), a, is_output=k == n_later - 1))
            for k, (a, b) in enumerate(itertools.pairwise(dims))
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(C, b)) for b in dims[1:])

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... C"]:
        d_in, C, d_hidden = self.in_weight.shape
        h = (x @ self.in_weight.reshape(d_in, C * d_hidden)).unflatten(-1, (C, d_hidden))
        h = h + self.in_bias
        for w, b in zip(self.weights, self.biases, strict=True):
            h = torch.einsum("...ci,cio->...co", torch.nn.functional.gelu(h), w) + b
        return h.squeeze(-1)


class VectorMLPType(LayerCIFunctionType[NoParams]):
    """The `vector_mlp` type: reads each layer's input vector (not available for an embedding)."""

    name = "vector_mlp"
    params_model = NoParams
    reads = "module_input"

    def build_layer(
        self, shape: LayerShape, hidden_dims: Sequence[int], params: NoParams
    ) -> VectorMLPCIFn:
        return VectorMLPCIFn(shape.C, shape.d_in, hidden_dims)

    def layer_parameter_count(
        self, shape: LayerShape, hidden_dims: Sequence[int], params: NoParams
    ) -> int:
        dims = [shape.d_in, *hidden_dims, 1]
        return shape.C * sum(a * b + b for a, b in itertools.pairwise(dims))

    def layer_activation_elements(
        self, shape: LayerShape, hidden_dims: Sequence[int], params: NoParams
    ) -> int:
        # As for `mlp`: the hidden units and three C-wide tensors; the input vector is the
        # target's own activation, counted with the target.
        return shape.C * (sum(hidden_dims) + 3)


VECTOR_MLP = register_ci_function_type(VectorMLPType())
