"""`ci_fn_type: shared_mlp`: per layer, one MLP from the layer's input vector to all its C raw CIs.

Unlike `vector_mlp` (C separate MLPs on the same input), the C outputs share the hidden units.
An embedding's token enters as its one-hot vector, its first layer a table lookup
(`spd.models.ci_fns.input_projection`). `InputMLP` is also the body of `global_shared_mlp`.
"""

import itertools
from collections.abc import Mapping, Sequence

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
from spd.models.ci_fns.input_projection import (
    InputProjection,
    dense_input_width,
    projection_parameter_count,
)


class InputMLP(nn.Module):
    """The inputs of `layers` (concatenated, `InputProjection`) → hidden_dims → d_out, GELU
    between the layers."""

    def __init__(
        self, layers: Mapping[str, LayerShape], hidden_dims: Sequence[int], d_out: int
    ) -> None:
        super().__init__()
        dims = [*hidden_dims, d_out]
        self.projection = InputProjection(layers, dims[0], is_output=len(dims) == 1)
        n_later = len(dims) - 1
        self.weights = nn.ParameterList(
            nn.Parameter(fan_in_normal((a, b), a, is_output=k == n_later - 1))
            for k, (a, b) in enumerate(itertools.pairwise(dims))
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(b)) for b in dims[1:])

    def forward(self, inputs: Mapping[str, Tensor]) -> Float[Tensor, "... d_out"]:
        h = self.projection(inputs)
        for w, b in zip(self.weights, self.biases, strict=True):
            h = torch.nn.functional.gelu(h) @ w + b
        return h


def input_mlp_parameter_count(
    layers: Mapping[str, LayerShape], hidden_dims: Sequence[int], d_out: int
) -> int:
    """Parameters of `InputMLP(layers, hidden_dims, d_out)`."""
    dims = [*hidden_dims, d_out]
    later = sum(a * b + b for a, b in itertools.pairwise(dims))
    return projection_parameter_count(layers, dims[0]) + later


def input_mlp_activation_elements(
    layers: Mapping[str, LayerShape], hidden_dims: Sequence[int], d_out: int
) -> int:
    """What autograd keeps of `InputMLP` per row, and of the sigmoids after it: the concatenated
    input vectors (one layer's own input is the target's activation, counted with the target),
    each token index, each hidden layer's pre-activation and GELU output, and the raw output
    (which the sigmoids keep)."""
    vectors = [s for s in layers.values() if not s.token_input]
    concat = dense_input_width(layers) if len(vectors) > 1 else 0
    tokens = len(layers) - len(vectors)
    return concat + tokens + 2 * sum(hidden_dims) + d_out


class SharedMLPCIFn(nn.Module):
    """One layer's `InputMLP`: its input (a vector, or an embedding's token) → its C raw CIs."""

    def __init__(self, shape: LayerShape, hidden_dims: Sequence[int]) -> None:
        super().__init__()
        self.mlp = InputMLP({"input": shape}, hidden_dims, shape.C)

    def forward(self, x: Tensor) -> Float[Tensor, "... C"]:
        return self.mlp({"input": x})


class SharedMLPType(LayerCIFunctionType[NoParams]):
    """The `shared_mlp` type: reads each layer's input (an embedding's token as its one-hot)."""

    name = "shared_mlp"
    params_model = NoParams
    reads = "module_input"
    reads_tokens = True

    def build_layer(
        self, shape: LayerShape, hidden_dims: Sequence[int], params: NoParams
    ) -> SharedMLPCIFn:
        return SharedMLPCIFn(shape, hidden_dims)

    def layer_parameter_count(
        self, shape: LayerShape, hidden_dims: Sequence[int], params: NoParams
    ) -> int:
        return input_mlp_parameter_count({"input": shape}, hidden_dims, shape.C)

    def layer_activation_elements(
        self, shape: LayerShape, hidden_dims: Sequence[int], params: NoParams
    ) -> int:
        return input_mlp_activation_elements({"input": shape}, hidden_dims, shape.C)


SHARED_MLP = register_ci_function_type(SharedMLPType())
