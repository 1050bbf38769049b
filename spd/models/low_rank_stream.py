"""A wide activation held as a sum of low-rank products, so the layers that read it work in few dimensions.

In a residual network the stream every layer reads is a sum of what earlier maps wrote: in the
residual-MLP targets, a fixed embedding of 100 sparse features into 1000 dimensions plus each
MLP's output (through a 25–50-wide `mlp_out`, or through its C subcomponents). A layer that reads
the stream with a matrix M only needs `h @ M`, and

    h @ M = Σ_i coeffs_i @ (basis_i @ M)

where `coeffs_i` (rows × r_i) are what was written and `basis_i` (r_i × d) is the fixed or
trainable map it was written through. The products `basis_i @ M` cost the same for any number of
rows, so the per-row work lives in the r_i dimensions instead of d (docs/method.md, 'Exact
reformulations'). It is the same linear algebra, reassociated; results agree with the dense path
to float rounding, and gradients flow through every factor as usual.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor, nn

_SHARED: ContextVar[dict[tuple[object, ...], tuple[Tensor, Tensor, Tensor]] | None] = ContextVar(
    "low_rank_stream_shared_products", default=None
)


@contextmanager
def shared_products() -> Iterator[None]:
    """Within the block, each `basis @ matrix` product of the streams is formed once.

    One training step runs the target and several component passes over the same factors
    (e.g. W_E @ V of a layer in the CI and in every pass that replaces that layer); the reused
    product is one node of the autograd graph, so its backward also runs once. Use it around one
    forward computation whose graph is backpropagated at most once (one micro-batch's loss).
    """
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _identity(t: Tensor) -> tuple[object, ...]:
    # A transposed view (`weight.T`) is a new object every call: key by its base and layout.
    base = t if t._base is None else t._base  # pyright: ignore[reportPrivateUsage]
    return (id(base), base._version, tuple(t.shape), t.stride(), t.storage_offset())  # pyright: ignore[reportPrivateUsage]


def _product(basis: Float[Tensor, "r d"], matrix: Float[Tensor, "d k"]) -> Float[Tensor, "r k"]:
    # Checked before the ContextVar, which torch.compile cannot trace (a graph break per call).
    if torch.compiler.is_compiling():
        return basis @ matrix
    shared = _SHARED.get()
    if shared is None:
        return basis @ matrix
    # Grad mode is in the key: a product formed under no_grad must not stand in for one that
    # gradients flow through.
    key = (_identity(basis), _identity(matrix), torch.is_grad_enabled())
    if key not in shared:
        # The operands are kept alive with the product, so their ids cannot be reused meanwhile.
        shared[key] = (basis, matrix, basis @ matrix)
    return shared[key][2]


def _contract(
    coeffs: Float[Tensor, "N r"], basis: Float[Tensor, "r d"], matrix: Float[Tensor, "d k"]
) -> Float[Tensor, "N k"]:
    """coeffs @ basis @ matrix in the order with fewer multiplications."""
    n, r = coeffs.shape[0], coeffs.shape[1]
    d, k = matrix.shape
    small_first = r * d * k + n * r * k
    wide_first = n * r * d + n * d * k
    if small_first <= wide_first:
        return coeffs @ _product(basis, matrix)
    return (coeffs @ basis) @ matrix


@dataclass(frozen=True)
class LowRankStream:
    """Rows of a d-wide activation, Σ_i coeffs_i @ bases_i (+ a dense part, + one shared offset).

    coeffs_i: (N, r_i); bases_i: (r_i, d); dense: (N, d) for contributions with no small factor;
    offset: (d,) added to every row (e.g. a bias written into the stream).
    """

    terms: tuple[tuple[Tensor, Tensor], ...] = ()
    dense_part: Tensor | None = None
    offset: Tensor | None = None

    @staticmethod
    def of(coeffs: Float[Tensor, "N r"], basis: Float[Tensor, "r d"]) -> "LowRankStream":
        return LowRankStream(terms=((coeffs, basis),))

    def __add__(self, other: "LowRankStream") -> "LowRankStream":
        return LowRankStream(
            terms=self.terms + other.terms,
            dense_part=_sum_optional(self.dense_part, other.dense_part),
            offset=_sum_optional(self.offset, other.offset),
        )

    def project(self, matrix: Float[Tensor, "d k"]) -> Float[Tensor, "N k"]:
        """`self.dense() @ matrix`, computed through the small factors."""
        parts = [_contract(c, b, matrix) for c, b in self.terms]
        if self.dense_part is not None:
            parts.append(self.dense_part @ matrix)
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out if self.offset is None else out + self.offset @ matrix

    def dense(self) -> Float[Tensor, "N d"]:
        """The activation itself (d wide): for consumers that need every entry."""
        parts = [c @ b for c, b in self.terms]
        if self.dense_part is not None:
            parts.append(self.dense_part)
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out if self.offset is None else out + self.offset

    def take_rows(self, index: Tensor) -> "LowRankStream":
        return LowRankStream(
            terms=tuple((c.index_select(0, index), b) for c, b in self.terms),
            dense_part=None if self.dense_part is None else self.dense_part.index_select(0, index),
            offset=self.offset,
        )


def _sum_optional(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


@runtime_checkable
class StreamLayer(Protocol):
    """A layer that can read a `LowRankStream` and write its output as one (a decomposed layer)."""

    def read_stream(self, stream: LowRankStream) -> Tensor: ...

    def write_stream(self, x: Tensor) -> LowRankStream: ...


def read_stream(layer: nn.Module, stream: LowRankStream) -> Tensor:
    """`layer(stream.dense())`, through the stream's small factors where the layer is linear."""
    if isinstance(layer, StreamLayer):
        return layer.read_stream(stream)
    if isinstance(layer, nn.Linear):
        out = stream.project(layer.weight.T)
        return out if layer.bias is None else out + layer.bias
    return layer(stream.dense())


def write_stream(layer: nn.Module, x: Tensor) -> LowRankStream:
    """`layer(x)` as stream terms, without forming its (wide) output where the layer is linear."""
    if isinstance(layer, StreamLayer):
        return layer.write_stream(x)
    if isinstance(layer, nn.Linear):
        bias = layer.bias
        return LowRankStream(terms=((x, layer.weight.T),), offset=None if bias is None else bias)
    return LowRankStream(dense_part=layer(x))
