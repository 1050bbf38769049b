"""The `generic` task: decompose any target on batches from a data source named in the config.

    task_config:
      task_name: generic
      data_source: mypkg.data:make_batches     # called as make_batches(batch_size=, seed=, **data_params)
      data_params: {n_features: 8}

Run it with `python spd/experiments/decompose.py CONFIG` or `spd-run --config CONFIG`. The end
of-run summary is the last evaluation's metrics (those the config selects).
"""

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from spd.config.schema import Config, TaskConfig
from spd.errors import SPDUserError
from spd.experiments.generic.data_source import (
    check_target_takes,
    import_data_source,
    source_batches,
)
from spd.experiments.tasks import InputSource, Task, register_task
from spd.train.data_shard import DataShard

if TYPE_CHECKING:
    from spd.train.optimize import OptimizeResult

EVAL_SEED_OFFSET = 1_000_003


class GenericTaskConfig(TaskConfig):
    """Input batches for any target, from a function or class named by import path
    (`spd/experiments/generic/data_source.py` states the contract)."""

    task_name: Literal["generic"] = Field(default="generic", description="Selects this task")
    data_source: str = Field(
        description="Import path 'package.module:name' of a function or class called as "
        "name(batch_size=..., seed=..., **data_params) that yields input batches"
    )
    data_params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the data source"
    )
    eval_data_params: dict[str, Any] | None = Field(
        default=None,
        description="Keyword arguments for the eval stream instead of data_params (null: the "
        "same); the eval stream is seeded differently either way",
    )


def _task(config: Config) -> GenericTaskConfig:
    task = config.task_config
    if not isinstance(task, GenericTaskConfig):
        raise SPDUserError(f"the generic task needs task_name 'generic', got '{task.task_name}'")
    return task


def check(config: Config) -> None:
    """The data source can be imported (before anything is loaded or launched)."""
    import_data_source(_task(config).data_source)


def make_data(
    config: Config, target: nn.Module, device: torch.device, shard: DataShard
) -> tuple[Iterator[Tensor], Iterator[Tensor]]:
    """The source's train and eval streams (each rank draws its own share, seeded apart); the
    first train batch is checked against the target before the run starts."""
    task = _task(config)
    train = source_batches(
        task.data_source, shard.microbatch_size, shard.seed, task.data_params, device
    )
    first = next(train)
    check_target_takes(target, first, task.data_source)
    evals = source_batches(
        task.data_source,
        shard.eval_batch_size,
        shard.seed + EVAL_SEED_OFFSET,
        task.eval_data_params if task.eval_data_params is not None else task.data_params,
        device,
    )
    return itertools.chain([first], train), evals


def analysis_batches(
    config: Config, split: str, batch_size: int, seed: int, device: torch.device
) -> Iterator[Tensor]:
    """Input batches of the source for `spd-analyze`, with the eval parameters for 'eval'."""
    task = _task(config)
    params = task.data_params
    if split == "eval" and task.eval_data_params is not None:
        params = task.eval_data_params
    return source_batches(task.data_source, batch_size, seed, params, device)


def summarize(result: "OptimizeResult", config: Config) -> dict[str, float]:
    """The metrics of the last evaluation, without their `eval/` prefix."""
    return {
        key.removeprefix("eval/"): value
        for key, value in result.final_metrics.items()
        if key.startswith("eval/")
    }


TASK = register_task(
    Task(
        name="generic",
        config_class=GenericTaskConfig,
        make_data=make_data,
        summarize=summarize,
        analysis_source=InputSource(batches=analysis_batches),
        check=check,
    )
)
