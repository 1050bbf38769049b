"""The decomposition tasks, as far as a config needs to know them: each task's name and its block.

A task (`spd.experiments.tasks.Task`) is one folder under `spd/experiments/`: its config block, data
streams, analysis source, launch hooks and summary. Its `task.py` registers it into `TASKS`
when imported; `Config` validates `task_config` with the block of the task that its `task_name`
names. The built-in tasks are named here by module path and imported on the first lookup, so
that this stage never imports the experiments stage. Adding a built-in task is its folder plus
one line in `BUILTIN_TASK_MODULES`; a user's task registers itself (`register_task`) from a
module imported before its config is validated.
"""

from typing import Protocol

from pydantic import BaseModel

from spd.config.plugin_registry import PluginRegistry


class TaskPlugin(Protocol):
    """What the config stage needs of a task: its name and the model of its `task_config` block
    (a `spd.config.schema.TaskConfig` subclass whose `task_name: Literal[name]` selects it)."""

    @property
    def name(self) -> str: ...

    @property
    def config_class(self) -> type[BaseModel]: ...


# The one registration line per built-in task.
BUILTIN_TASK_MODULES = (
    "spd.experiments.tms.task",
    "spd.experiments.resid_mlp.task",
    "spd.experiments.lm.task",
    "spd.experiments.generic.task",
)

TASKS: PluginRegistry[TaskPlugin] = PluginRegistry("task", BUILTIN_TASK_MODULES)
