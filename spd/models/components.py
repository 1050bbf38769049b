"""Rank-one subcomponents of one weight matrix.

Orientation (the one place it is defined): every decomposed matrix is stored as two factors
    V: (d_in, C)   — column c reads the input  (docs/method.md: row V^l_{c,:})
    U: (C, d_out)  — row c writes the output   (docs/method.md: column U^l_{:,c})
so the layer computes  y = ((x @ V) ⊙ mask) @ U + bias,  the same product for a `Linear`, a
GPT-2 `Conv1D` and (with the input a token index, `x @ V` becoming a row lookup) an `Embedding`.
The equivalent weight is `V @ U` in (d_in, d_out) layout; a `Linear` stores its transpose.
"""

from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from spd.config.schema import TiedWeightsMode
from spd.models.low_rank_stream import LowRankStream

WeightLayout = Literal["out_in", "in_out"]


class Components(nn.Module):
    """C rank-one subcomponents V[:, c] ⊗ U[c, :] of one matrix, with the target's bias kept.

    `weight_layout` says how the target stores its matrix: `out_in` for `nn.Linear`
    (d_out × d_in), `in_out` for GPT-2 `Conv1D` and `nn.Embedding` (d_in × d_out).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        C: int,
        weight_layout: WeightLayout,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.d_in, self.d_out, self.C = d_in, d_out, C
        self.weight_layout: WeightLayout = weight_layout
        # Zeros, not `torch.empty`: an unset factor must never hold stray memory (NaN).
        # `init_from_target` (called by `optimize`) or a checkpoint fills them.
        self._V = nn.Parameter(torch.zeros(d_in, C))
        self._U = nn.Parameter(torch.zeros(C, d_out))
        self.bias: Tensor | None
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        # Set by `tie_to`: this matrix is the transpose of another's, so its factors are the
        # other's factors swapped and transposed. Held in a tuple so it is not a submodule.
        self._tied_source: tuple[Components, ...] = ()
        self.tied_mode: TiedWeightsMode | None = None

    @property
    def V(self) -> Float[Tensor, "d_in C"]:
        if self.tied_mode == "single_parameter":
            return self._tied_source[0].U.T
        return self._V

    @property
    def U(self) -> Float[Tensor, "C d_out"]:
        if self.tied_mode == "single_parameter":
            return self._tied_source[0].V.T
        return self._U

    def tie_to(self, source: "Components", mode: TiedWeightsMode) -> None:
        """Make this matrix the transpose of `source`'s: V = source.U.T and U = source.V.T.

        `single_parameter`: this module owns no parameters and reads the source's transposed, so
        the optimiser sees one parameter per factor with the two modules' gradients summed.
        `shared_storage` (the original implementation's form): this module keeps parameters of
        its own that are transposed views of the source's storage, so each gets its own gradient
        and its own AdamW update, and both updates land on the same numbers.
        """
        if (source.d_in, source.d_out, source.C) != (self.d_out, self.d_in, self.C):
            raise ValueError("tied matrices must be transposes of each other with the same C")
        if source.is_tied:
            raise ValueError("a tied matrix cannot itself be the source of a tie")
        del self._V, self._U
        self._tied_source = (source,)
        self.tied_mode = mode
        if mode == "shared_storage":
            self._V = nn.Parameter(source._U.detach().T)
            self._U = nn.Parameter(source._V.detach().T)

    def retie(self) -> None:
        """Point a `shared_storage` tie's parameters at the source's storage again.

        Needed after `Module.to`/`_apply`, which moves each parameter to a tensor of its own.
        """
        if self.tied_mode == "shared_storage":
            source = self._tied_source[0]
            self._V.data = source._U.data.T
            self._U.data = source._V.data.T

    @property
    def is_tied(self) -> bool:
        return bool(self._tied_source)

    def init_from_target(
        self, target_weight: Tensor, generator: torch.Generator | None = None
    ) -> None:
        """Random unit-norm factors, each U row scaled by the target's projection on its direction."""
        if self.is_tied:
            return
        w = self.as_in_out(target_weight).detach()
        with torch.no_grad():
            V = torch.randn(self.d_in, self.C, generator=generator, device="cpu").to(w.device)
            U = torch.randn(self.C, self.d_out, generator=generator, device="cpu").to(w.device)
            V /= V.norm(dim=0, keepdim=True)
            U /= U.norm(dim=1, keepdim=True)
            # Projection of W (d_in × d_out) onto the rank-one direction v_c u_c^T.
            scale = torch.einsum("ic,io,co->c", V, w, U)
            self._V.copy_(V)
            self._U.copy_(U * scale[:, None])

    def as_in_out(self, weight: Tensor) -> Float[Tensor, "d_in d_out"]:
        return weight.T if self.weight_layout == "out_in" else weight

    @property
    def weight(self) -> Tensor:
        """The summed subcomponents in the target's own weight layout."""
        w = self.V @ self.U
        return w.T if self.weight_layout == "out_in" else w

    def subcomponent_weights(self) -> Float[Tensor, "C d_in d_out"]:
        """Each rank-one subcomponent as a (d_in, d_out) matrix."""
        return torch.einsum("ic,co->cio", self.V, self.U)

    def inner_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... C"]:
        return x @ self.V

    def forward(
        self, x: Float[Tensor, "... d_in"], mask: Float[Tensor, "... C"] | None = None
    ) -> Float[Tensor, "... d_out"]:
        return self.output(self.inner_acts(x), mask)

    def output(
        self, inner_acts: Float[Tensor, "... C"], mask: Float[Tensor, "... C"] | None = None
    ) -> Float[Tensor, "... d_out"]:
        """The layer's output from its inner activations: ((inner ⊙ mask) @ U) + bias."""
        acts = inner_acts if mask is None else inner_acts * mask
        out = acts @ self.U
        return out if self.bias is None else out + self.bias

    def delta_output(
        self, x: Float[Tensor, "... d_in"], target_weight: Tensor
    ) -> Float[Tensor, "... d_out"]:
        """Δ x with Δ = W − V U (the target's weight, in its own layout, minus the summed
        subcomponents), recomputed from the current factors so that gradients reach them."""
        return x @ (self.as_in_out(target_weight) - self.V @ self.U)

    def write_stream(
        self, x: Float[Tensor, "N d_in"], mask: Float[Tensor, "N C"] | None = None
    ) -> LowRankStream:
        """The output as stream terms: the masked inner activations through U (C wide, not d_out)."""
        acts = self.inner_acts(x)
        acts = acts if mask is None else acts * mask
        return LowRankStream(terms=((acts, self.U),), offset=self.bias)


class EmbeddingComponents(Components):
    """Components of an `nn.Embedding` (vocab × d): a token's inner activations are V[token]."""

    def __init__(self, vocab_size: int, embedding_dim: int, C: int) -> None:
        super().__init__(vocab_size, embedding_dim, C, weight_layout="in_out", bias=None)

    def inner_acts(self, x: Int[Tensor, "..."]) -> Float[Tensor, "... C"]:  # pyright: ignore[reportIncompatibleMethodOverride]
        return self.V[x]

    def delta_output(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, x: Int[Tensor, "..."], target_weight: Tensor
    ) -> Float[Tensor, "... d_out"]:
        """Δ's rows for the tokens `x`: W[x] − V[x] U, without forming the vocab-wide Δ."""
        return target_weight[x] - self.V[x] @ self.U
