"""Which rows of a sparse toy batch a training step needs to compute on.

For a target that declares `independent_rows = True` (it processes each batch row on its own,
like the toy models), a row whose input to every decomposed layer is exactly zero is *inert*:
components fed zero output the layer's bias, as the original layer does, so each later layer
sees its target-pass input and every masked output equals the target's. Such a row adds exactly
zero to every reconstruction loss and its gradient, and all inert rows share one CI vector (the
CI functions at inner activation 0). So a step can keep the live rows plus one inert row that
stands for all of them, weighted by their number, and still compute the full batch's losses and
gradients. Most rows of a sparse toy batch are inert (77 % for tms_5-2).

CPU only: on CUDA the work per row is not the bottleneck, and finding the rows would cost a
synchronisation per step.

The promise is the target's, and a wrong one would silently give wrong gradients, so the first
batch that is cut checks it once (`check_independent_rows`): the target run on the kept rows
alone must give what the full batch gave for them.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from spd.errors import SPDUserError
from spd.models.component_model import ComponentModel
from spd.models.low_rank_stream import LowRankStream

# Cut the batch only when the inert rows are a sizeable share of it; otherwise the gathers
# cost more than they save.
LIVE_ROW_SHARE_MAX = 0.75


@dataclass(frozen=True)
class RowSelection:
    """The live rows of a batch, then one inert row that stands for all `n_rows − live` inert ones."""

    index: Int[Tensor, " kept"]
    # 1 for each live row; the number of inert rows for the last (representative) row.
    weights: Float[Tensor, " kept"]
    n_rows: int

    @property
    def share(self) -> float:
        """Kept rows over all rows: scales a mean over the kept rows to the full batch's mean
        when the rows left out contribute zero (reconstruction losses)."""
        return self.index.numel() / self.n_rows

    def take(self, t: Tensor) -> Tensor:
        return t.index_select(0, self.index)

    def mean(self, per_row: Float[Tensor, " kept"]) -> Tensor:
        """The full batch's mean of a per-row quantity that is the same on every inert row."""
        return (per_row * self.weights).sum() / self.n_rows


def select_rows(
    model: ComponentModel,
    pre_acts: Mapping[str, Tensor],
    streams: Mapping[str, LowRankStream] | None = None,
) -> RowSelection | None:
    """The rows a training step must compute on, or None (keep every row; see the module doc).

    A layer input given as a `LowRankStream` counts as zero on a row where all its factors are.
    """
    acts = list(pre_acts.values())
    for stream in (streams or {}).values():
        if stream.offset is not None:
            return None
        acts += [c for c, _ in stream.terms]
        acts += [] if stream.dense_part is None else [stream.dense_part]
    if not getattr(model.target, "independent_rows", False) or acts[0].device.type != "cpu":
        return None
    n = acts[0].shape[0]
    if any(a.dim() != 2 or a.shape[0] != n or not a.is_floating_point() for a in acts):
        return None
    # Σ|a| over a row is zero exactly when the row is; summing is the cheapest such reduction.
    is_live = torch.stack([a.abs().sum(-1) for a in acts]).sum(0) != 0
    live = is_live.nonzero().squeeze(-1)
    n_live = live.numel()
    if n_live > LIVE_ROW_SHARE_MAX * n:
        return None
    representative = (~is_live).nonzero()[0]
    weights = torch.ones(n_live + 1, dtype=acts[0].dtype)
    weights[-1] = n - n_live
    return RowSelection(index=torch.cat([live, representative]), weights=weights, n_rows=n)


def check_independent_rows(
    model: ComponentModel, batch: Tensor, target_out: Tensor, rows: RowSelection
) -> None:
    """Refuse a target whose `independent_rows = True` is wrong, on the first cut batch only.

    Two extra target passes, once: the output and the input of every decomposed layer on the
    kept rows alone must equal the full batch's on those rows.
    """
    if model.independent_rows_checked:
        return
    with torch.no_grad():
        _, pre_acts = model.forward_with_pre_acts(batch)
        out, acts = model.forward_with_pre_acts(rows.take(batch))
    full = {"the output": rows.take(target_out)} | {
        f"the input of '{name}'": rows.take(a) for name, a in pre_acts.items()
    }
    alone = {"the output": out} | {f"the input of '{name}'": a for name, a in acts.items()}
    for what, expected in full.items():
        if not torch.allclose(alone[what], expected, rtol=1e-4, atol=1e-6):
            diff = float((alone[what] - expected).abs().max())
            raise SPDUserError(
                f"{type(model.target).__name__} sets independent_rows = True, but {what} of a "
                f"row changes with the other rows of the batch (by up to {diff:.3g} on the first "
                "batch), so leaving out inert rows would give wrong gradients; remove "
                "independent_rows from the target class"
            )
    model.independent_rows_checked = True
