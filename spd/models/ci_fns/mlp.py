"""`ci_fn_type: mlp`: one tiny MLP per subcomponent on its scalar inner activation.

Each layer's C MLPs run at once as batched maps; with one hidden layer (the common case) they
run through the fused kernel of `spd.models.scalar_mlp`.
"""

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
from spd.models.scalar_mlp import scalar_mlp


class MLPCIFn(nn.Module):
    """C scalar MLPs 1 → hidden_dims → 1 with GELU between; hidden layer k has weights
    (C, d_k, d_{k+1})."""

    def __init__(self, C: int, hidden_dims: Sequence[int]) -> None:
        super().__init__()
        dims = [1, *hidden_dims, 1]
        n_layers = len(dims) - 1
        self.weights = nn.ParameterList(
            nn.Parameter(fan_in_normal((C, d_in, d_out), d_in, is_output=k == n_layers - 1))
            for k, (d_in, d_out) in enumerate(itertools.pairwise(dims))
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(C, d_out)) for d_out in dims[1:])

    def forward(self, inner_acts: Float[Tensor, "... C"]) -> Float[Tensor, "... C"]:
        if len(self.weights) == 2:
            # One hidden layer (the common case): the fused kernel, same maths.
            w1, w2 = self.weights
            b1, b2 = self.biases
            return scalar_mlp(inner_acts, w1[:, 0, :], b1, w2[:, :, 0], b2[:, 0])
        last = len(self.weights) - 1
        h: Tensor = inner_acts.unsqueeze(-1)  # (..., C, 1)
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if k == 0:
                # A (1 → d) map is an outer product; skip the einsum.
                h = h * w[:, 0, :] + b
            elif k == last and w.shape[-1] == 1:
                h = (h * w[:, :, 0]).sum(-1, keepdim=True) + b
            else:
                h = torch.einsum("...ci,cio->...co", h, w) + b
            if k < last:
                h = torch.nn.functional.gelu(h)
        return h.squeeze(-1)


class MLPType(LayerCIFunctionType[NoParams]):
    """The `mlp` type: reads each layer's inner activations x @ V."""

    name = "mlp"
    params_model = NoParams
    reads = "inner_acts"

    def build_layer(
        self, shape: LayerShape, hidden_dims: Sequence[int], params: NoParams
    ) -> MLPCIFn:
        return MLPCIFn(shape.C, hidden_dims)

    def layer_parameter_count(
        self, shape: LayerShape, hidden_dims: Sequence[int], params: NoParams
    ) -> int:
        dims = [1, *hidden_dims, 1]
        return shape.C * sum(a * b + b for a, b in itertools.pairwise(dims))

    def layer_activation_elements(
        self, shape: LayerShape, hidden_dims: Sequence[int], params: NoParams
    ) -> int:
        # The hidden units, plus three C-wide tensors: the raw output and its two sigmoids (mask
        # and loss side). The inner activations are counted with the components; what autograd
        # keeps besides is in spd.train.memory_estimate.ACTIVATION_OVERHEAD (fitted).
        return shape.C * (sum(hidden_dims) + 3)


MLP = register_ci_function_type(MLPType())
