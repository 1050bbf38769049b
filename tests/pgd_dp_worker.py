"""One rank of the two-rank shared-source PGD test (tests/test_pgd_terms.py), under torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node=2 pgd_dp_worker.py OUT_DIR

Both ranks build the same model (seed 0); each then draws its own batch and its own random
sources (seed 100 + rank) and takes one shared-source PGD step of `pgd_recon` in a real gloo
process group. Saved to OUT_DIR/rank<r>.pt: the rank's own draw, the start the ascent used, the
rank's own gradient at that start, and the final sources.
"""

import sys
from pathlib import Path
from typing import Any

import torch

from spd.config.loss_registry import LOSS_TERMS
from spd.losses import adversarial_sources
from spd.losses.adversarial_sources import PGDParams, Sources, source_gradients, source_masks
from spd.losses.inputs import LossInputs
from spd.losses.term import LossTerm
from spd.losses.terms.recon import recon_loss
from spd.models.component_model import ComponentModel
from spd.train import distributed
from tests.toy_targets import TwoLinear

STEP_SIZE = 0.25
C = 3


def main() -> None:
    out_dir = Path(sys.argv[1])
    cpu = torch.device("cpu")
    distributed.setup(cpu)
    rank = distributed.rank_info().rank
    torch.manual_seed(0)
    model = ComponentModel(TwoLinear(), ["fc1", "fc2"], C=C)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p))
    torch.manual_seed(100 + rank)
    x = torch.randn(4, 2)
    ci = {name: torch.full((4, C), 0.3) for name in model.module_names}
    with torch.no_grad():
        target = model(x)
    inputs = LossInputs(model, x, target, {}, ci, ci, "mse", 1.0, None, True)
    calls: list[tuple[Sources, Sources]] = []
    original = adversarial_sources.signed_ascent

    def recorded(gradient: Any, sources: Sources, *args: Any) -> Sources:
        start = {n: s.clone() for n, s in sources.items()}
        final = original(gradient, sources, *args)
        calls.append((start, final))
        return final

    adversarial_sources.signed_ascent = recorded
    state = torch.get_rng_state()
    own = {name: torch.rand(C + 1) for name in ci}  # what init_sources draws on this rank
    torch.set_rng_state(state)
    term = LOSS_TERMS.get("pgd_recon")
    assert isinstance(term, LossTerm) and term.masks is not None
    params = PGDParams(init="random", step_size=STEP_SIZE, n_steps=1, scope="shared_across_batch")
    term.masks(inputs, params)
    start, final = calls[0]
    local = source_gradients(
        lambda live: recon_loss(model, x, target, source_masks(ci, live), "mse"), start
    )
    torch.save(
        {
            "own_draw": own,
            "start": start,
            "final": final,
            "local_grad": local,
            "step_size": STEP_SIZE,
        },
        out_dir / f"rank{rank}.pt",
    )
    distributed.teardown()


if __name__ == "__main__":
    main()
