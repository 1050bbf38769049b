"""One process of the data-parallel tests: run alone, or as one rank under torchrun.

    python dp_worker.py OUT_DIR MODE        # MODE: exact | stochastic

Decomposes the shipped tms_5-2 target through `run_decomposition` in float64 (so that summing a
batch in two halves or at once agrees to ~1e-15), on data this script controls: every step has one
global batch drawn from a fixed seed. In `exact` mode each rank takes its slice of that batch and
no loss term draws random masks; in `stochastic` mode every rank takes the whole batch and the
stochastic reconstruction term is on, so the ranks differ only in the masks they draw. Each rank
saves its final trained parameters and the first masks it drew to OUT_DIR/rank<r>.pt.
"""

import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from spd.config.loading import config_from_dict
from spd.config.schema import Config
from spd.experiments.run_decomposition import run_decomposition
from spd.loading.run_paths import REPO_ROOT
from spd.losses import term as loss_term
from spd.train import distributed
from spd.train.data_shard import DataShard

GLOBAL_BATCH = 64
N_FEATURES = 5


def global_batches(seed: int, sliced: bool) -> Iterator[Tensor]:
    """The same global batches on every rank; with `sliced`, this rank's contiguous share."""
    generator = torch.Generator().manual_seed(seed)
    rank = distributed.rank_info()
    share = GLOBAL_BATCH // rank.world_size if sliced else GLOBAL_BATCH
    start = rank.rank * share if sliced else 0
    while True:
        values = torch.rand(GLOBAL_BATCH, N_FEATURES, generator=generator)
        active = torch.rand(GLOBAL_BATCH, N_FEATURES, generator=generator) < 0.3
        yield (values * active)[start : start + share]


def make_config(out_dir: Path, mode: str) -> Config:
    return config_from_dict(
        {
            "seed": 0,
            "device": "cpu",
            "run_name": mode,
            "out_dir": str(out_dir / "runs"),
            "C": 8,
            "target_module_patterns": ["linear1", "linear2"],
            "losses": [
                {"name": "faithfulness", "coeff": 1.0},
                {"name": "recon", "coeff": 1.0},
                {"name": "stochastic_recon", "coeff": 1.0 if mode == "stochastic" else None},
                {"name": "importance_minimality", "coeff": 1e-2},
            ],
            "lr": 1e-2,
            "steps": 4,
            "batch_size": GLOBAL_BATCH,
            "eval_batch_size": GLOBAL_BATCH,
            "train_log_freq": 1,
            "eval_freq": 2,
            "slow_eval_on_first_step": False,
            "figures": [],
            "pretrained_model_class": "spd.experiments.tms.models.TMSModel",
            "pretrained_model_path": str(REPO_ROOT / "spd/experiments/tms/targets/tms_5-2"),
            "task_config": {"task_name": "tms"},
        }
    )


def main() -> None:
    out_dir, mode = Path(sys.argv[1]), sys.argv[2]
    torch.set_default_dtype(torch.float64)
    first_masks: list[dict[str, Tensor]] = []
    draw_masks = loss_term.stochastic_masks

    def recording_masks(ci: dict[str, Tensor]) -> dict[str, Tensor]:
        masks = draw_masks(ci)
        if not first_masks:
            first_masks.append({name: m.detach().clone() for name, m in masks.items()})
        return masks

    # draw_stochastic_masks looks it up in its module at call time
    loss_term.stochastic_masks = recording_masks

    def make_data(
        config: Config, target: nn.Module, device: torch.device, shard: DataShard
    ) -> tuple[Iterator[Tensor], Iterator[Tensor]]:
        return global_batches(1, sliced=mode == "exact"), global_batches(2, sliced=mode == "exact")

    rank = distributed.rank_info()
    run = run_decomposition(
        make_config(out_dir, mode), "dp_test", make_data, lambda _: {}, show_progress=False
    )
    torch.save(
        {
            "state": run.result.model.decomposition_state(),
            "masks": first_masks,
            "world_size": rank.world_size,
        },
        out_dir / f"rank{rank.rank}.pt",
    )


if __name__ == "__main__":
    main()
