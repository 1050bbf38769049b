"""Planning a launch: every run's name and overrides, each validated as a full config up front.

Overrides apply in this order (later wins): the experiment's YAML config, `--override`, the sweep
values, then what the launcher itself sets (run name, output directory, `--cpu`, W&B settings).
Nothing is submitted unless every run's config is valid and every layer pattern matches a module of
its target (checked by building the target on the CPU when it is on disk; a hub model is checked
by the run itself).
"""

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.experiments.tasks import get_task
from spd.launch.run_sources import RunSource, experiment_source, user_path_overrides
from spd.launch.sweeps import Sweep, expand_grid, run_label, unique_names
from spd.loading.run_config import load_run_config
from spd.loading.run_paths import is_wandb_path
from spd.loading.targets import load_target_model
from spd.models.tie_check import check_decomposition
from spd.persistence.run_dir import check_writable_directory, output_root
from spd.train.data_shard import data_shard
from spd.train.distributed import RankInfo

# The W&B fields of `Config` the launcher fills in with --use-wandb (runs of one launch share a
# group: the launch id).
WANDB_PROJECT_KEY = "wandb_project"
WANDB_GROUP_KEY = "wandb_group"


@dataclass(frozen=True)
class LaunchSettings:
    """What the command line decides for every run of a launch."""

    launch_id: str
    cpu: bool = False
    dp: int = 1
    use_wandb: bool = False
    nodes: int = 1
    project: str = "spd"


@dataclass(frozen=True)
class PlannedRun:
    """One run of a launch: its overrides (in the order they are passed) and validated config;
    `swept` holds the values its sweep chose (empty without a sweep). `experiment` is the name of
    its source (a registered experiment or a `--config` file)."""

    experiment: str
    name: str
    overrides: dict[str, Any]
    config: Config
    swept: dict[str, Any]
    source: RunSource

    @property
    def out_dir(self) -> Path:
        """The directory its run directory is created in (one per launch and output root)."""
        return Path(str(self.config.out_dir))


def new_launch_id(suffix: str | None = None) -> str:
    """A launch id that sorts by time and does not repeat, e.g. `20250101-120000-3fa2c1`."""
    launch_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    return f"{launch_id}-{suffix}" if suffix else launch_id


def _validated(source: RunSource, name: str, overrides: dict[str, Any]) -> Config:
    try:
        config = load_run_config(source.config_path, overrides)
        # The task must be runnable (e.g. a data source importable) before anything starts.
        task = get_task(config.task_config.task_name)
        if task.check is not None:
            task.check(config)
        return config
    except SPDUserError as err:
        raise SPDUserError(f"run '{name}' is invalid, nothing was launched: {err}") from None


def _check_dp(name: str, config: Config, dp: int, nodes: int) -> None:
    """Every rank (--dp per node, on --nodes nodes) must get an equal share of each micro-batch
    and eval batch (the run's own split, `data_shard`, checked here before anything is launched)."""
    try:
        data_shard(config, RankInfo(rank=0, world_size=dp * nodes, local_rank=0))
    except SPDUserError as err:
        where = f"--dp {dp} --nodes {nodes}" if nodes > 1 else f"--dp {dp}"
        raise SPDUserError(f"run '{name}' under {where}: {err}") from None


def _check_cpu(name: str, overrides: dict[str, Any]) -> None:
    device = overrides.get("device")
    if isinstance(device, str) and device.startswith("cuda"):
        raise SPDUserError(
            f"run '{name}': --cpu conflicts with device={device} set for it; drop one of them"
        )


def _target_on_disk(config: Config) -> bool:
    """Whether the target loads from a local path (not a `wandb:` run or a hub id)."""
    if config.pretrained_model_path is not None:
        # A missing local target counts too: loading it then fails, for this run, before any
        # run of the launch starts, with its class's hint on how to train it.
        return not is_wandb_path(str(config.pretrained_model_path))
    name = config.pretrained_model_name_hf
    return name is not None and Path(name).is_absolute() and Path(name).exists()


def _check_patterns(name: str, config: Config, targets: dict[tuple[str, str], nn.Module]) -> None:
    """Every layer pattern must match a module of the target, each decomposed module one C and
    every tie two matching matrices (the target built once per launch, on the CPU)."""
    if not _target_on_disk(config):
        return
    key = (
        config.pretrained_model_class,
        str(config.pretrained_model_path or config.pretrained_model_name_hf),
    )
    try:
        if key not in targets:
            targets[key] = load_target_model(config)
        check_decomposition(targets[key], config)
    except SPDUserError as err:
        raise SPDUserError(f"run '{name}' is invalid, nothing was launched: {err}") from None


def plan_runs(
    experiments: list[str] | list[RunSource],
    user_overrides: dict[str, Any],
    sweep: Sweep | None,
    settings: LaunchSettings,
) -> list[PlannedRun]:
    """Every run of the launch, each config validated; raises naming the first invalid run.

    `experiments` are registered experiment names or sources (`--config` files).
    """
    runs: list[PlannedRun] = []
    targets: dict[tuple[str, str], nn.Module] = {}
    for entry in experiments:
        source = experiment_source(entry) if isinstance(entry, str) else entry
        experiment = source.name
        combos = expand_grid(sweep.params_for(experiment)) if sweep is not None else [{}]
        labels = unique_names([run_label(combo) for combo in combos])
        for combo, label in zip(combos, labels, strict=True):
            overrides = {**user_overrides, **combo}
            provisional = f"{experiment}-{label}" if label else experiment
            base = _validated(source, provisional, overrides)
            # Nothing is written until every run is planned; a wrong output root fails here.
            check_writable_directory(output_root(base.out_dir), "output root")
            name = (
                f"{base.run_name or experiment}-{label}" if label else (base.run_name or experiment)
            )
            if settings.cpu:
                _check_cpu(name, overrides)
            task = get_task(base.task_config.task_name)
            launcher = {
                **(task.launch_overrides(base) if task.launch_overrides is not None else {}),
                **user_path_overrides(source, base),
                "run_name": name,
                "out_dir": str(output_root(base.out_dir).resolve() / settings.launch_id),
                **({"device": "cpu"} if settings.cpu else {}),
                **(
                    {WANDB_PROJECT_KEY: settings.project, WANDB_GROUP_KEY: settings.launch_id}
                    if settings.use_wandb
                    else {}
                ),
            }
            overrides = {**overrides, **launcher}
            config = _validated(source, name, overrides)
            _check_dp(name, config, settings.dp, settings.nodes)
            _check_patterns(name, config, targets)
            runs.append(
                PlannedRun(
                    experiment=experiment,
                    name=name,
                    overrides=overrides,
                    config=config,
                    swept=combo,
                    source=source,
                )
            )
    return runs
