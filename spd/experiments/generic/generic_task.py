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

import torch
from torch import Tensor, nn

from spd.config.schema import Config, GenericTaskConfig
from spd.errors import SPDUserError
from spd.experiments.generic.data_source import (
    check_target_takes,
    import_data_source,
    source_batches,
)
from spd.experiments.tasks import Task
from spd.train import distributed
from spd.train.optimize import OptimizeResult

EVAL_SEED_OFFSET = 1_000_003


def _task(config: Config) -> GenericTaskConfig:
    task = config.task_config
    if not isinstance(task, GenericTaskConfig):
        raise SPDUserError(f"the generic task needs task_name 'generic', got '{task.task_name}'")
    return task


def check(config: Config) -> None:
    """The data source can be imported (before anything is loaded or launched)."""
    import_data_source(_task(config).data_source)


def make_data(
    config: Config, target: nn.Module, device: torch.device
) -> tuple[Iterator[Tensor], Iterator[Tensor]]:
    """The source's train and eval streams (each rank draws its own share, seeded apart); the
    first train batch is checked against the target before the run starts."""
    task = _task(config)
    seed = distributed.rank_seed(config.seed)
    train = source_batches(
        task.data_source,
        distributed.per_rank_batch_size(config.microbatch_size),
        seed,
        task.data_params,
        device,
    )
    first = next(train)
    check_target_takes(target, first, task.data_source)
    evals = source_batches(
        task.data_source,
        distributed.per_rank_batch_size(config.eval_batch_size),
        seed + EVAL_SEED_OFFSET,
        task.eval_data_params if task.eval_data_params is not None else task.data_params,
        device,
    )
    return itertools.chain([first], train), evals


def summarize(result: OptimizeResult, config: Config) -> dict[str, float]:
    """The metrics of the last evaluation, without their `eval/` prefix."""
    return {
        key.removeprefix("eval/"): value
        for key, value in result.final_metrics.items()
        if key.startswith("eval/")
    }


TASK = Task(name="generic", make_data=make_data, summarize=summarize, check=check)
