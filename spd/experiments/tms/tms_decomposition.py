"""Decompose a TMS target.

    python spd/experiments/tms/tms_decomposition.py spd/experiments/tms/tms_5_2_config.yaml

At the end, the ground-truth scores of `linear1` (MMCS, ML2R) and, for models with identity
hidden layers, the number of large subcomponents of each identity layer are printed, logged to
metrics.jsonl (as `final/…`) and written to summary.json.
"""

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from spd.config.schema import Config, TMSTaskConfig
from spd.data.sparse_features import SparseFeatureData
from spd.errors import SPDUserError, run_cli
from spd.eval.metrics import large_subcomponent_counts, mmcs_ml2r
from spd.experiments.run_decomposition import parse_args, run_decomposition
from spd.train import distributed
from spd.train.optimize import OptimizeResult

EVAL_SEED_OFFSET = 1_000_003


def make_data(
    config: Config, target: nn.Module, device: torch.device
) -> tuple[Iterator[Tensor], Iterator[Tensor]]:
    """Train and eval streams of sparse features, seeded independently from the config's seed.

    Under data parallelism each rank draws its share of every batch from its own streams.
    """
    task = config.task_config
    if not isinstance(task, TMSTaskConfig):
        raise SPDUserError(
            f"tms_decomposition.py needs task_config.task_name 'tms', got '{task.task_name}'"
        )
    linear1 = target.get_submodule("linear1")
    assert isinstance(linear1, nn.Linear), "a TMS target has an nn.Linear `linear1`"
    n_features = linear1.in_features

    def stream(seed: int, batch_size: int) -> Iterator[Tensor]:
        data = SparseFeatureData(
            n_features,
            task.feature_probability,
            device,
            task.data_generation_type,
            (0.0, 1.0),
            seed,
        )
        return data.batches(batch_size)

    seed = distributed.rank_seed(config.seed)
    return (
        stream(seed, distributed.per_rank_batch_size(config.microbatch_size)),
        stream(seed + EVAL_SEED_OFFSET, distributed.per_rank_batch_size(config.eval_batch_size)),
    )


def summarize(result: OptimizeResult) -> dict[str, float]:
    """MMCS/ML2R of linear1 and, for identity layers, the count of large subcomponents."""
    summary = mmcs_ml2r(result.model, layer="linear1")
    large = large_subcomponent_counts(result.model)
    summary.update({k: v for k, v in large.items() if "hidden_layers" in k})
    return summary


def main() -> None:
    config, args = parse_args(__doc__ or "")
    run_decomposition(
        config,
        "tms",
        make_data,
        summarize,
        show_progress=not args.no_progress,
        resume=args.resume,
        run_dir_path=args.run_dir,
    )


if __name__ == "__main__":
    run_cli(main)
