"""One rank of the persistent-PGD data-parallel test (tests/test_persistent_pgd.py), under torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node=2 ppgd_dp_worker.py OUT_DIR

Decomposes the shipped tms_5-2 target for a few steps through `run_decomposition`, each rank on
its own data (the TMS task's per-rank streams), with two persistent terms: `persistent_pgd_recon`
with shared sources (repeat_across_batch) and `persistent_pgd_recon_subset` with per-position
ones, both from random sources. Each rank saves its terms' initial sources and final states to
OUT_DIR/rank<r>.pt.
"""

import sys
from pathlib import Path

import torch
from torch import Tensor

from spd.config.loading import load_config
from spd.config.schema import Config
from spd.experiments.run_decomposition import run_decomposition
from spd.experiments.tms.task import make_data
from spd.losses.inputs import LossInputs, TermState
from spd.losses.persistent_pgd import PersistentSources
from spd.train import distributed, setup
from tests.paths import TMS_5_2_CONFIG
from tests.resumable_runs import TINY

STEPS = 4


def main() -> None:
    out_dir = Path(sys.argv[1])
    sign = {"type": "sign", "step_size": 0.05}
    config = load_config(
        TMS_5_2_CONFIG,
        {
            **TINY,
            "steps": STEPS,
            "out_dir": str(out_dir / "runs"),
            "use_delta_component": True,
            "losses": [
                {"name": "faithfulness", "coeff": 1.0},
                {"name": "importance_minimality", "coeff": 3e-3, "params": {"pnorm": 1.0}},
                {
                    "name": "persistent_pgd_recon",
                    "coeff": 1.0,
                    "params": {
                        "optimizer": sign,
                        "scope": {"type": "repeat_across_batch", "n_sources": 4},
                    },
                },
                {
                    "name": "persistent_pgd_recon_subset",
                    "coeff": 1.0,
                    "params": {
                        "optimizer": sign,
                        "scope": {"type": "per_position"},
                    },
                },
            ],
        },
    )
    built: list[dict[str, TermState]] = []
    build = setup.term_states

    def recording(run_config: Config) -> dict[str, TermState]:
        states = build(run_config)
        built.append(states)
        return states

    setup.term_states = recording  # set_up_training looks it up in its module at call time
    initial: dict[str, dict[str, Tensor]] = {}
    create = PersistentSources.create

    def recording_create(self: PersistentSources, inputs: LossInputs) -> dict[str, Tensor]:
        sources = create(self, inputs)
        initial[self.context.name] = {k: v.detach().clone() for k, v in sources.items()}
        return sources

    PersistentSources.create = recording_create
    rank = distributed.rank_info()
    run_decomposition(config, "ppgd_dp", make_data, lambda _: {}, show_progress=False)
    (states,) = built
    torch.save(
        {
            "world_size": rank.world_size,
            "steps": STEPS,
            "initial": initial,
            "states": {name: state.state_dict() for name, state in states.items()},
        },
        out_dir / f"rank{rank.rank}.pt",
    )


if __name__ == "__main__":
    main()
