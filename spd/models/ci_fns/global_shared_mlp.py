"""`ci_fn_type: global_shared_mlp`: one MLP over every decomposed layer's input at once.

The inputs are concatenated in sorted layer-name order (`spd.models.ci_fns.input_projection`;
an embedding's token as its one-hot vector), the MLP (`ci_fn_hidden_dims`, GELU between) gives
all Σ C_l raw CIs, and the output is split back per layer in the same sorted order.
"""

from collections.abc import Mapping, Sequence

from jaxtyping import Float
from torch import Tensor, nn

from spd.models.ci_fns.base import (
    CIFunctionType,
    LayerShape,
    NoParams,
    register_ci_function_type,
)
from spd.models.ci_fns.shared_mlp import (
    InputMLP,
    input_mlp_activation_elements,
    input_mlp_parameter_count,
)


def split_per_layer(
    out: Float[Tensor, "... C_total"], widths: Mapping[str, int], order: Sequence[str]
) -> dict[str, Float[Tensor, "... C"]]:
    """`out`'s last axis split into the layers' slots, in sorted name order, returned by name
    in `order` (the caller's)."""
    names = sorted(widths)
    parts = dict(zip(names, out.split([widths[n] for n in names], dim=-1), strict=True))
    return {name: parts[name] for name in order}


class GlobalSharedMLPCIFn(nn.Module):
    """Every layer's input in, every layer's raw CI out, through one `InputMLP`."""

    def __init__(self, layers: Mapping[str, LayerShape], hidden_dims: Sequence[int]) -> None:
        super().__init__()
        self.widths = {name: shape.C for name, shape in layers.items()}
        self.mlp = InputMLP(layers, hidden_dims, sum(self.widths.values()))

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Float[Tensor, "... C"]]:
        return split_per_layer(self.mlp(inputs), self.widths, list(inputs))


class GlobalSharedMLPType(CIFunctionType[NoParams]):
    """The `global_shared_mlp` type: reads every layer's input at once."""

    name = "global_shared_mlp"
    params_model = NoParams
    reads = "all_inputs"

    def build(
        self, layers: Mapping[str, LayerShape], hidden_dims: Sequence[int], params: NoParams
    ) -> GlobalSharedMLPCIFn:
        return GlobalSharedMLPCIFn(layers, hidden_dims)

    def parameter_count(
        self, layers: Mapping[str, LayerShape], hidden_dims: Sequence[int], params: NoParams
    ) -> int:
        return input_mlp_parameter_count(layers, hidden_dims, sum(s.C for s in layers.values()))

    def activation_elements(
        self,
        layers: Mapping[str, LayerShape],
        hidden_dims: Sequence[int],
        params: NoParams,
        seq_len: int = 1,
    ) -> int:
        C_total = sum(s.C for s in layers.values())
        return input_mlp_activation_elements(layers, hidden_dims, C_total)


GLOBAL_SHARED_MLP = register_ci_function_type(GlobalSharedMLPType())
