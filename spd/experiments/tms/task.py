"""The `tms` task: sparse feature vectors for a toy model of superposition, scored against the
ground truth (MMCS/ML2R) at the end.

At the end, the ground-truth scores (MMCS, ML2R) of the layers the config's
`ground_truth_recovery` metrics name (else of the first decomposed layer) and, for models with
identity hidden layers, the number of large subcomponents of each identity layer are the
summary (printed, logged to metrics.jsonl as `final/…`, written to summary.json).
"""

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from spd.config.schema import (
    DATA_GENERATION_DESCRIPTION,
    Config,
    DataGeneration,
    Probability,
    TaskConfig,
)
from spd.data.sparse_features import SparseFeatureData
from spd.errors import SPDUserError
from spd.eval.metrics import large_subcomponent_counts, mmcs_ml2r
from spd.experiments.tasks import FeatureSource, Task, register_task
from spd.train.data_shard import DataShard

if TYPE_CHECKING:
    from spd.train.optimize import OptimizeResult

EVAL_SEED_OFFSET = 1_000_003
VALUE_RANGE = (0.0, 1.0)
ONE_HOT_VALUE = 1.0


class TMSTaskConfig(TaskConfig):
    """Data of the toy-model-of-superposition experiments."""

    task_name: Literal["tms"] = Field(default="tms", description="Selects this task")
    feature_probability: Probability = Field(
        default=0.05, description="Chance that each feature is active in an example"
    )
    data_generation_type: DataGeneration = Field(
        default="at_least_zero_active", description=DATA_GENERATION_DESCRIPTION
    )

    @property
    def one_hot_value(self) -> float:
        """Features are drawn from [0, 1], so 1 is a full feature (as the analysis uses)."""
        return ONE_HOT_VALUE


def _task(config: Config) -> TMSTaskConfig:
    task = config.task_config
    if not isinstance(task, TMSTaskConfig):
        raise SPDUserError(
            f"the tms task needs task_config.task_name 'tms', got '{task.task_name}'"
        )
    return task


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
            "nn.Linear to read their width from; use the generic task with a data_source of your own"
        )
    return first.in_features


def feature_batches(
    config: Config, n_features: int, batch_size: int, seed: int, device: torch.device
) -> Iterator[Tensor]:
    """Endless (batch_size, n_features) sparse feature vectors in U[0, 1], from `seed`."""
    task = _task(config)
    data = SparseFeatureData(
        n_features,
        task.feature_probability,
        device,
        task.data_generation_type,
        VALUE_RANGE,
        seed,
    )
    return data.batches(batch_size)


def make_data(
    config: Config, target: nn.Module, device: torch.device, shard: DataShard
) -> tuple[Iterator[Tensor], Iterator[Tensor]]:
    """Train and eval streams of sparse features, seeded independently from the rank's seed.

    Under data parallelism each rank draws its share of every batch from its own streams.
    """
    n_features = input_features(target)
    return (
        feature_batches(config, n_features, shard.microbatch_size, shard.seed, device),
        feature_batches(
            config, n_features, shard.eval_batch_size, shard.seed + EVAL_SEED_OFFSET, device
        ),
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


def summarize(result: "OptimizeResult", config: Config | None = None) -> dict[str, float]:
    """MMCS/ML2R of the ground-truth layers and, for identity layers, the count of large
    subcomponents."""
    summary: dict[str, float] = {}
    for layer in ground_truth_layers(config, result.model.module_names):
        summary.update(mmcs_ml2r(result.model, layer=layer))
    large = large_subcomponent_counts(result.model)
    summary.update({k: v for k, v in large.items() if "hidden_layers" in k})
    return summary


TASK = register_task(
    Task(
        name="tms",
        config_class=TMSTaskConfig,
        make_data=make_data,
        summarize=summarize,
        analysis_source=FeatureSource(one_hot_value=ONE_HOT_VALUE, batches=feature_batches),
    )
)
