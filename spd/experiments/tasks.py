"""Decomposition tasks as plug-ins, keyed by `task_config.task_name`.

A task is what a decomposition needs beyond the config: the data streams (`make_data`) and the
end-of-run scores (`summarize`), plus two optional hooks. One script, `spd/experiments/decompose.py`,
runs a config of any task by looking its task up here, so `spd-run --config FILE` needs nothing
else on the command line.

The built-in tasks are listed in `BUILTIN_TASKS` as `module:attribute` (imported on first use, so
that looking a task up does not import every experiment; an experiment script run as `__main__`
thus gets its task from the module proper). Another module registers its own task with
`register_task(Task(...))`; its name must also be the `task_name` of a task config in
`spd.config.schema.TaskConfig`. For a model and data of your own no new task is needed: the
`generic` task takes a data source by import path.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.experiments.run_decomposition import DataFactory, DecompositionRun
from spd.train.optimize import OptimizeResult

TaskSummary = Callable[[OptimizeResult, Config], dict[str, float]]


@dataclass(frozen=True)
class Task:
    """One decomposition task.

    `make_data(config, target, device)` returns the (train, eval) batch streams: micro-batches of
    `config.microbatch_size` and eval batches of `config.eval_batch_size` (each rank's share under
    data parallelism). `summarize(result, config)` returns the end-of-run scores written to
    summary.json. `prepare(config)` (optional) may rewrite the config before anything is loaded,
    e.g. to point at local copies of hub data; `check(config)` (optional) raises `SPDUserError` for
    a config the task cannot run, cheaply, so that a launcher can call it before starting anything.
    `finish(run, config)` (optional) runs after a finished run (rank 0), e.g. to print a verdict.
    """

    name: str
    make_data: DataFactory
    summarize: TaskSummary
    prepare: Callable[[Config], Config] | None = None
    check: Callable[[Config], None] | None = None
    finish: Callable[[DecompositionRun, Config], None] | None = None


# task_name -> `module:attribute` of its `Task`.
BUILTIN_TASKS: dict[str, str] = {
    "tms": "spd.experiments.tms.tms_decomposition:TASK",
    "resid_mlp": "spd.experiments.resid_mlp.resid_mlp_decomposition:TASK",
    "lm": "spd.experiments.lm.lm_decomposition:TASK",
    "generic": "spd.experiments.generic.generic_task:TASK",
}

_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make `task` runnable by `decompose.py` and `spd-run --config` under its name."""
    registered = _TASKS.get(task.name)
    if registered is not None and registered is not task:
        raise ValueError(f"task '{task.name}' is registered twice")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task registered under `name`, importing its built-in module on first use."""
    if name not in _TASKS and name in BUILTIN_TASKS:
        module, _, attribute = BUILTIN_TASKS[name].partition(":")
        _TASKS[name] = getattr(importlib.import_module(module), attribute)
    if name not in _TASKS:
        known = sorted({*BUILTIN_TASKS, *_TASKS})
        raise SPDUserError(
            f"task_config.task_name '{name}' names no runnable task; runnable: {', '.join(known)}"
        )
    return _TASKS[name]
