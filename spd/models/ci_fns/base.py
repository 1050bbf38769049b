"""What a CI-function type declares, and the per-layer form most types share.

A CI-function type (`ci_fn_type` in a config) is a `CIFunctionType` registered in
`spd.config.ci_fn_registry.CI_FNS`. It declares
- `name`, its value of `ci_fn_type`, and `params_model`, the `StrictModel` its `ci_fn_params`
  are checked against when the config loads (`NoParams` when it has none);
- `reads`, what it is fed: `inner_acts` (each layer's x @ V, C wide), `module_input` (each
  layer's input vector x) or `all_inputs` (every decomposed layer's input at once, for a CI
  function that sees the whole model; always computed from the target's own pass);
- `build`, the module that computes CI: it maps `{layer name: input}` to `{layer name: raw CI
  (... C), before the sigmoid}`, for the layers it is given;
- `parameter_count` and `activation_elements`, the module's trainable parameters and the
  activation elements it keeps per input row (per token of a language model, given the sequence
  length), for `spd.train.memory_estimate`.

A type with one CI function per layer subclasses `LayerCIFunctionType` and says how one layer's
function is built and sized; a type that reads `all_inputs` subclasses `CIFunctionType` itself.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import torch
from jaxtyping import Float
from pydantic import BaseModel
from torch import Tensor, nn

from spd.config.ci_fn_registry import CI_FNS
from spd.config.schema import StrictModel
from spd.errors import SPDUserError

CIInput = Literal["inner_acts", "module_input", "all_inputs"]
ParamsT = TypeVar("ParamsT", bound=BaseModel)
CIFunctionTypeT = TypeVar("CIFunctionTypeT", bound="CIFunctionType[Any]")


@dataclass(frozen=True)
class LayerShape:
    """What a CI function knows of one decomposed layer.

    `d_in` is the width of the layer's input (an embedding's vocabulary); `token_input` says the
    input is a token index rather than a vector, as for an `nn.Embedding`.
    """

    d_in: int
    d_out: int
    C: int
    token_input: bool


class NoParams(StrictModel):
    """The `ci_fn_params` of a CI-function type without parameters of its own: `{}`."""


class CIFunctionType(ABC, Generic[ParamsT]):
    """A kind of CI function: what it reads, how it is built and how large it is (module doc)."""

    name: str
    params_model: type[ParamsT]
    reads: CIInput

    @abstractmethod
    def build(
        self, layers: Mapping[str, LayerShape], hidden_dims: Sequence[int], params: ParamsT
    ) -> nn.Module:
        """The CI functions of `layers` (by name, in the model's order), as one module mapping
        `{layer name: input}` to `{layer name: raw CI}`."""

    @abstractmethod
    def parameter_count(
        self, layers: Mapping[str, LayerShape], hidden_dims: Sequence[int], params: ParamsT
    ) -> int:
        """Trainable parameters of `build(layers, hidden_dims, params)`."""

    @abstractmethod
    def activation_elements(
        self,
        layers: Mapping[str, LayerShape],
        hidden_dims: Sequence[int],
        params: ParamsT,
        seq_len: int = 1,
    ) -> int:
        """Activation elements the built module keeps for the backward pass per input row (per
        token of sequences `seq_len` long: a type that mixes positions keeps more per token in
        longer sequences)."""


class LayerwiseCIFunctions(nn.ModuleDict):
    """One CI function per layer, keyed by `module_key(layer name)`; each maps its layer's input
    (... d) to raw CI (... C)."""

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Float[Tensor, "... C"]]:
        """Raw CI of each layer in `inputs`, from that layer's own CI function."""
        return {name: self[module_key(name)](x) for name, x in inputs.items()}


class LayerCIFunctionType(CIFunctionType[ParamsT]):
    """A CI-function type with one function per layer, on its inner activations or its input
    (`reads` is `inner_acts` or `module_input`)."""

    # Whether a `module_input` type also takes an embedding's input (a token index).
    reads_tokens: bool = False

    @abstractmethod
    def build_layer(
        self, shape: LayerShape, hidden_dims: Sequence[int], params: ParamsT
    ) -> nn.Module:
        """One layer's CI function: its input (`reads`) in, raw CI (... C) out."""

    @abstractmethod
    def layer_parameter_count(
        self, shape: LayerShape, hidden_dims: Sequence[int], params: ParamsT
    ) -> int:
        """Trainable parameters of `build_layer(shape, hidden_dims, params)`."""

    @abstractmethod
    def layer_activation_elements(
        self, shape: LayerShape, hidden_dims: Sequence[int], params: ParamsT
    ) -> int:
        """Activation elements one layer's function keeps per input row."""

    def build(
        self, layers: Mapping[str, LayerShape], hidden_dims: Sequence[int], params: ParamsT
    ) -> LayerwiseCIFunctions:
        """Each layer's function, built in the layers' order (which fixes the RNG draws)."""
        for name, shape in layers.items():
            if shape.token_input and self.reads == "module_input" and not self.reads_tokens:
                raise SPDUserError(
                    f"ci_fn_type '{self.name}' is not available for the embedding '{name}' (its "
                    "input is a token index); use ci_fn_type 'mlp' or 'shared_mlp'"
                )
        return LayerwiseCIFunctions(
            {
                module_key(name): self.build_layer(shape, hidden_dims, params)
                for name, shape in layers.items()
            }
        )

    def parameter_count(
        self, layers: Mapping[str, LayerShape], hidden_dims: Sequence[int], params: ParamsT
    ) -> int:
        return sum(self.layer_parameter_count(s, hidden_dims, params) for s in layers.values())

    def activation_elements(
        self,
        layers: Mapping[str, LayerShape],
        hidden_dims: Sequence[int],
        params: ParamsT,
        seq_len: int = 1,
    ) -> int:
        # Each position on its own: the sequence length does not matter.
        return sum(self.layer_activation_elements(s, hidden_dims, params) for s in layers.values())


def register_ci_function_type(ci_type: CIFunctionTypeT) -> CIFunctionTypeT:
    """Register `ci_type` in `CI_FNS` under its `name`; returns it."""
    CI_FNS.register(ci_type.name, ci_type)
    return ci_type


def ci_function_type(name: str) -> CIFunctionType[Any]:
    """The registered CI-function type `name`; an unknown name is an `SPDUserError` listing them."""
    try:
        ci_type = CI_FNS.get(name)
    except ValueError as err:
        raise SPDUserError(f"ci_fn_type: {err}") from None
    assert isinstance(ci_type, CIFunctionType), f"'{name}' is registered, but no CIFunctionType"
    return ci_type


def module_key(name: str) -> str:
    """A module name as a `ModuleDict` key, which cannot contain '.'."""
    return name.replace(".", "-")


def fan_in_std(fan_in: int, is_output: bool) -> float:
    """Initial std of a CI-function weight: gain √2 before a GELU, gain 1 for the output layer.

    The He-style √(2/fan_in) keeps the pre-GELU variance near 1 whatever the width; the output
    layer feeds no nonlinearity, so it takes 1/√fan_in, as the original implementation does
    (docs/method.md, 'Differences from the original implementation').
    """
    return math.sqrt((1.0 if is_output else 2.0) / fan_in)


def fan_in_normal(shape: tuple[int, ...], fan_in: int, is_output: bool) -> Tensor:
    """A weight of `shape` drawn from N(0, fan_in_std(fan_in, is_output)²)."""
    return torch.randn(shape) * fan_in_std(fan_in, is_output)
