"""Decompose a TMS target.

    python spd/experiments/tms/tms_decomposition.py spd/experiments/tms/tms_5_2_config.yaml

At the end, the ground-truth scores (MMCS, ML2R) of the layers the config's
`ground_truth_recovery` metrics name (else of the first decomposed layer) and, for models with
identity hidden layers, the number of large subcomponents of each identity layer are printed,
logged to metrics.jsonl (as `final/…`) and written to summary.json. The same runs through
`spd/experiments/decompose.py` (task `tms`).
"""

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from spd.config.schema import Config, TMSTaskConfig
from spd.data.sparse_features import SparseFeatureData
from spd.errors import SPDUserError, run_cli
from spd.eval.metrics import large_subcomponent_counts, mmcs_ml2r
from spd.experiments.decompose import decompose_main
from spd.experiments.tasks import Task
from spd.train import distributed
from spd.train.optimize import OptimizeResult

EVAL_SEED_OFFSET = 1_000_003


def input_features(target: nn.Module) -> int:
    """The number of input features: the target's `config.n_features`, else the input width of
    its first `nn.Linear` (whatever that layer is called)."""
    n_features = getattr(getattr(target, "config", None), "n_features", None)
    if isinstance(n_features, int):
        return n_features
    first = next((m for m in target.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise SPDUserError(
            f"task 'tms' feeds sparse feature vectors, but {type(target).__name__} has no "
            "nn.Linear to read their width from; use task_name 'generic' with your own data_source"
        )
    return first.in_features


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
    n_features = input_features(target)

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


def ground_truth_layers(config: Config | None, decomposed: list[str]) -> list[str]:
    """The layers scored against the ground truth: those the config's `ground_truth_recovery`
    metrics name, else the first decomposed layer (the features' input layer of a TMS)."""
    named = [
        str(spec.params["layer"])
        for spec in (config.metrics if config is not None else [])
        if spec.name == "ground_truth_recovery" and "layer" in spec.params
    ]
    return named or decomposed[:1]


def summarize(result: OptimizeResult, config: Config | None = None) -> dict[str, float]:
    """MMCS/ML2R of the ground-truth layers and, for identity layers, the count of large
    subcomponents."""
    summary: dict[str, float] = {}
    for layer in ground_truth_layers(config, result.model.module_names):
        summary.update(mmcs_ml2r(result.model, layer=layer))
    large = large_subcomponent_counts(result.model)
    summary.update({k: v for k, v in large.items() if "hidden_layers" in k})
    return summary


TASK = Task(name="tms", make_data=make_data, summarize=summarize)


def main() -> None:
    decompose_main(__doc__ or "", script_task="tms")


if __name__ == "__main__":
    run_cli(main)
