"""Tracks which subcomponents have fired recently (docs/method.md, 'Optimisation': alive).

With several data-parallel ranks the tracker counts the global batch, as the original
implementation does: a subcomponent fired if it fired on any rank, and the examples seen are
summed over ranks, so every rank holds the same counters.
"""

from collections.abc import Mapping

import torch
from torch import Tensor

from spd.train import distributed


class AliveTracker:
    """A subcomponent is alive if its CI exceeded `threshold` within the last `n_examples` examples."""

    def __init__(
        self,
        module_C: Mapping[str, int],
        threshold: float,
        n_examples: int,
        device: torch.device,
    ) -> None:
        self.threshold = threshold
        self.n_examples = n_examples
        self.examples_since_fired = {
            n: torch.zeros(C, dtype=torch.long, device=device) for n, C in module_C.items()
        }

    @torch.no_grad()
    def update(self, ci: dict[str, Tensor], n_examples: int | None = None) -> None:
        """Count the examples (and positions) of `ci`, or `n_examples` when `ci` holds fewer rows
        than the batch because the rows left out share one CI vector with a row it holds
        (`spd.losses.row_selection`)."""
        names = list(ci)
        n_in_batch = (
            next(iter(ci.values())).shape[:-1].numel() if n_examples is None else n_examples
        )
        # One flat vector for one collective; the layers' C may differ (per-module C).
        fired = torch.cat([ci[name].flatten(0, -2).amax(dim=0) > self.threshold for name in names])
        any_fired, n_in_batch = distributed.combine_firing(fired, n_in_batch)
        widths = [ci[name].shape[-1] for name in names]
        for name, fired_here in zip(names, any_fired.split(widths), strict=True):
            self.examples_since_fired[name].add_(n_in_batch).masked_fill_(fired_here, 0)

    def n_alive(self) -> dict[str, int]:
        return {n: int((c < self.n_examples).sum()) for n, c in self.examples_since_fired.items()}

    def state_dict(self) -> dict[str, Tensor]:
        return {n: c.clone() for n, c in self.examples_since_fired.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for n, c in state.items():
            self.examples_since_fired[n].copy_(c)
