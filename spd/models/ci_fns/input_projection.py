"""The first linear map of a CI function that reads layer inputs: one or several layers' input
vectors, concatenated in a fixed order, times one matrix.

An embedding's input is a token index; it enters as its one-hot vector, whose product with the
matrix is a row of a table of its own, so it is computed as a lookup (same maths, no vocabulary-
wide tensor). The concatenation order is the layers' names sorted, whatever order the caller's
mapping has, so a saved function reads the same slots after a load.
"""

from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor, nn

from spd.models.ci_fns.base import LayerShape, fan_in_std, module_key


def input_fan_in(layers: Mapping[str, LayerShape]) -> int:
    """Inputs per row feeding the projection: each vector's width, one per token (its one-hot
    vector has one non-zero entry)."""
    return sum(1 if s.token_input else s.d_in for s in layers.values())


def projection_parameter_count(layers: Mapping[str, LayerShape], d_out: int) -> int:
    """Parameters of `InputProjection(layers, d_out, …)`: the matrix (token tables included)
    and the bias."""
    return (sum(s.d_in for s in layers.values()) + 1) * d_out


def dense_input_width(layers: Mapping[str, LayerShape]) -> int:
    """Width of the concatenated input vectors (token inputs are looked up, not concatenated)."""
    return sum(s.d_in for s in layers.values() if not s.token_input)


class InputProjection(nn.Module):
    """`{layer: input}` → concat(inputs in sorted name order) @ W + b, of width `d_out`.

    The vector inputs' block of W is one (Σ d_in, d_out) matrix; each embedding's block is a
    (vocabulary, d_out) table indexed by its token. Initialised N(0, fan_in_std(fan_in)²) with
    fan_in as `input_fan_in` counts it; the bias at zero.
    """

    def __init__(self, layers: Mapping[str, LayerShape], d_out: int, is_output: bool) -> None:
        super().__init__()
        self.vector_names = sorted(n for n, s in layers.items() if not s.token_input)
        self.token_names = sorted(n for n, s in layers.items() if s.token_input)
        std = fan_in_std(input_fan_in(layers), is_output)
        d_vectors = dense_input_width(layers)
        self.weight = (
            nn.Parameter(torch.randn(d_vectors, d_out) * std) if self.vector_names else None
        )
        self.tables = nn.ParameterDict(
            {
                module_key(name): nn.Parameter(torch.randn(layers[name].d_in, d_out) * std)
                for name in self.token_names
            }
        )
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, inputs: Mapping[str, Tensor]) -> Float[Tensor, "... d_out"]:
        missing = [n for n in (*self.vector_names, *self.token_names) if n not in inputs]
        assert not missing, (
            f"this CI function reads every layer it was built for; missing {missing}"
        )
        out = self.bias
        if self.weight is not None:
            vectors = [inputs[name] for name in self.vector_names]
            x = vectors[0] if len(vectors) == 1 else torch.cat(vectors, dim=-1)
            out = out + x @ self.weight
        for name in self.token_names:
            out = out + self.tables[module_key(name)][inputs[name]]
        return out
