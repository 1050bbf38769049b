"""Decomposition tasks as plug-ins, keyed by `task_config.task_name`.

A task is everything a decomposition needs beyond the config, in one folder under
`spd/experiments/`: the model of its `task_config` block, its data streams (`make_data`), its
end-of-run scores (`summarize`), how `spd-analyze` reads its runs, and optional hooks for the
launcher and the run. Its `task.py` builds a `Task` and registers it (`register_task`); the
config stage finds the built-in ones through `spd.config.task_registry.BUILTIN_TASK_MODULES`, so
adding a task is its folder plus one line there. `spd/experiments/decompose.py` runs a config of
any task through its `Task`. For a model and data of your own no new task is needed: the
`generic` task takes a data source by import path.

A task module is imported whenever a config is validated, so it keeps its imports light (no
training stack, no `datasets`/`transformers` at import time).
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

import torch
from torch import Tensor, nn

from spd.config.schema import Config, TaskConfig
from spd.config.task_registry import TASKS
from spd.errors import SPDUserError

if TYPE_CHECKING:
    from spd.experiments.run_decomposition import DataFactory, DecompositionRun
    from spd.train.optimize import OptimizeResult

TaskSummary = Callable[["OptimizeResult", Config], dict[str, float]]


@dataclass(frozen=True)
class TokenSource:
    """How `spd-analyze` reads a language-model task's run: token sequences of its dataset.

    `prepare_target(target)` sets the loaded target up in place; `tokenizer_name(config)` names
    the tokenizer whose strings label the tokens; `max_seq_len(config)` is the run's sequence
    length (the longest prompt the app offers the model); `batches(config, split, batch_size, seed)`
    returns endless (batch, seq) token batches of that split ('train' or 'eval': the run's
    training data or its held-out data) and a description of them (e.g. the dataset and split
    names) for the analysis' metadata.
    """

    prepare_target: Callable[[nn.Module], None]
    tokenizer_name: Callable[[Config], str]
    max_seq_len: Callable[[Config], int]
    batches: Callable[[Config, str, int, int], tuple[Iterator[Tensor], dict[str, str]]]


@dataclass(frozen=True)
class FeatureSource:
    """How `spd-analyze` reads a toy task's run: sparse feature vectors, as the task draws them.

    `batches(config, n_features, batch_size, seed, device)` returns endless (batch, n_features)
    feature vectors; CI is also scored on one-hot inputs of `one_hot_value`.
    """

    one_hot_value: float
    batches: Callable[[Config, int, int, int, torch.device], Iterator[Tensor]]


@dataclass(frozen=True)
class InputSource:
    """How `spd-analyze` reads a run whose inputs are whatever the task's data source yields (the
    `generic` task): `batches(config, split, batch_size, seed, device)` returns endless input
    batches of that split ('train' or 'eval')."""

    batches: Callable[[Config, str, int, int, torch.device], Iterator[Tensor]]


@dataclass(frozen=True)
class Task:
    """One decomposition task.

    `config_class` is the model of its `task_config` block (a `TaskConfig` whose
    `task_name: Literal[name]` selects it). `make_data(config, target, device, shard)` returns
    the (train, eval) batch streams of the rank's `DataShard`: micro-batches of
    `shard.microbatch_size` and eval batches of `shard.eval_batch_size`, drawn from the shard's
    seed (or, for a stream of records, the shard's share of them). `summarize(result, config)`
    returns the end-of-run scores written to summary.json. `analysis_source` says how
    `spd-analyze` reads the task's runs (None: it cannot).

    Optional hooks: `prepare(config)` may rewrite the config before anything is loaded, e.g. to
    point at local copies of hub data; `check(config)` raises `SPDUserError` for a config the
    task cannot run, cheaply, so that a launcher can call it before starting anything;
    `launch_overrides(config)` returns dotted-key overrides the launcher applies before it moves
    the run's output root (e.g. pinning names found under the user's output root to absolute
    paths); `finish(run, config)` runs after a finished run (rank 0), e.g. to print a verdict.
    """

    name: str
    config_class: type[TaskConfig]
    make_data: "DataFactory"
    summarize: TaskSummary
    analysis_source: TokenSource | FeatureSource | InputSource | None = None
    prepare: Callable[[Config], Config] | None = None
    check: Callable[[Config], None] | None = None
    launch_overrides: Callable[[Config], dict[str, Any]] | None = None
    finish: Callable[["DecompositionRun", Config], None] | None = None


def register_task(task: Task) -> Task:
    """Make `task` known to the config and runnable by `decompose.py` and `spd-run --config`.

    Its block must select it: `config_class.task_name` is `Literal[task.name]` (a bug otherwise).
    """
    field = task.config_class.model_fields.get("task_name")
    if field is None or get_args(field.annotation) != (task.name,):
        raise ValueError(
            f"task '{task.name}': {task.config_class.__name__}.task_name must be "
            f"Literal['{task.name}']"
        )
    TASKS.register(task.name, task)
    return task


def get_task(name: str) -> Task:
    """The task registered under `name` (built-in tasks are imported on first use)."""
    if name not in TASKS:
        raise SPDUserError(
            f"task_config.task_name '{name}' names no runnable task; "
            f"runnable: {', '.join(TASKS.names())}"
        )
    task = TASKS.get(name)
    assert isinstance(task, Task), f"task '{name}' is registered as a {type(task).__name__}"
    return task
