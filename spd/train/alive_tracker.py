"""Tracks which subcomponents have fired recently (spec §5: 'alive' subcomponents)."""

import torch
from torch import Tensor


class AliveTracker:
    """A subcomponent is alive if its CI exceeded `threshold` within the last `n_examples` examples."""

    def __init__(
        self,
        module_names: list[str],
        C: int,
        threshold: float,
        n_examples: int,
        device: torch.device,
    ) -> None:
        self.threshold = threshold
        self.n_examples = n_examples
        self.examples_since_fired = {
            n: torch.zeros(C, dtype=torch.long, device=device) for n in module_names
        }

    @torch.no_grad()
    def update(self, ci: dict[str, Tensor], n_examples: int | None = None) -> None:
        """Count the examples (and positions) of `ci`, or `n_examples` when `ci` holds fewer rows
        than the batch because the rows left out share one CI vector with a row it holds
        (`spd.losses.row_selection`)."""
        for name, g in ci.items():
            n_in_batch = g.shape[:-1].numel() if n_examples is None else n_examples
            fired = g.flatten(0, -2).amax(dim=0) > self.threshold
            counter = self.examples_since_fired[name]
            counter.add_(n_in_batch).masked_fill_(fired, 0)

    def n_alive(self) -> dict[str, int]:
        return {n: int((c < self.n_examples).sum()) for n, c in self.examples_since_fired.items()}

    def state_dict(self) -> dict[str, Tensor]:
        return {n: c.clone() for n, c in self.examples_since_fired.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for n, c in state.items():
            self.examples_since_fired[n].copy_(c)
