"""The `resid_mlp` task: sparse feature vectors in U[-1, 1] for a residual-MLP target, scored at
the end by its CI pattern on one-hot inputs (`scores.py`), with a one-line verdict."""

from collections.abc import Iterator
from typing import Literal

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
from spd.experiments.resid_mlp.scores import ONE_HOT_VALUE, finish, resid_mlp_target, summarize
from spd.experiments.tasks import FeatureSource, Task, register_task
from spd.train.data_shard import DataShard

EVAL_SEED_OFFSET = 1_000_003
VALUE_RANGE = (-1.0, 1.0)


class ResidMLPTaskConfig(TaskConfig):
    """Data of the residual-MLP experiments."""

    task_name: Literal["resid_mlp"] = Field(default="resid_mlp", description="Selects this task")
    feature_probability: Probability = Field(
        default=0.01, description="Chance that each feature is active in an example"
    )
    data_generation_type: DataGeneration = Field(
        default="at_least_zero_active", description=DATA_GENERATION_DESCRIPTION
    )

    @property
    def one_hot_value(self) -> float:
        """The value the CI-pattern scores use (`spd.experiments.resid_mlp.scores`)."""
        return ONE_HOT_VALUE


def feature_batches(
    config: Config, n_features: int, batch_size: int, seed: int, device: torch.device
) -> Iterator[Tensor]:
    """Endless (batch_size, n_features) sparse feature vectors in U[-1, 1], from `seed`."""
    task = config.task_config
    if not isinstance(task, ResidMLPTaskConfig):
        raise SPDUserError(
            f"the resid_mlp task needs task_config.task_name 'resid_mlp', got '{task.task_name}'"
        )
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
    """Train and eval streams of sparse features in U[-1, 1], seeded independently (the rank's
    share of each batch, from its own seeds)."""
    n_features = resid_mlp_target(target).config.n_features
    return (
        feature_batches(config, n_features, shard.microbatch_size, shard.seed, device),
        feature_batches(
            config, n_features, shard.eval_batch_size, shard.seed + EVAL_SEED_OFFSET, device
        ),
    )


TASK = register_task(
    Task(
        name="resid_mlp",
        config_class=ResidMLPTaskConfig,
        make_data=make_data,
        summarize=summarize,
        analysis_source=FeatureSource(one_hot_value=ONE_HOT_VALUE, batches=feature_batches),
        finish=finish,
    )
)
