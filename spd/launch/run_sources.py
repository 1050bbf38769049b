"""What one launch entry runs: a registered experiment or a config file given with `--config`.

Both come down to a script, a config file and a SLURM time estimate. A config file runs through
`spd/experiments/decompose.py`, which picks the task from the config's `task_config.task_name`.
"""

from dataclasses import dataclass
from pathlib import Path

from spd.config.loading import read_yaml
from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.experiments.registry import EXPERIMENTS_DIR, get_experiment

DECOMPOSE_SCRIPT = EXPERIMENTS_DIR / "decompose.py"
# Expected runtime (minutes) of a config file's run unless --time-minutes says otherwise; the
# SLURM time limit adds the launcher's margin to it, as for a registered experiment.
DEFAULT_CONFIG_RUNTIME = 120


@dataclass(frozen=True)
class RunSource:
    """A launch entry: its name (the sweep block and default run name), script, config file and
    expected runtime in minutes."""

    name: str
    script: Path
    config_path: Path
    expected_runtime: int


def experiment_source(name: str) -> RunSource:
    """A registered experiment (an unknown name lists the registered ones)."""
    spec = get_experiment(name)
    return RunSource(name, spec.decomp_script, spec.config_path, spec.expected_runtime)


def config_sources(paths: list[Path], minutes: int | None) -> list[RunSource]:
    """One source per `--config` file, named after its `run_name` or else the file name.

    Files are read here (a missing file or bad YAML fails before anything starts); two files of
    the same name get numbered names.
    """
    if minutes is not None and minutes < 1:
        raise SPDUserError(f"--time-minutes must be at least 1, got {minutes}")
    sources: list[RunSource] = []
    taken: set[str] = set()
    for path in paths:
        data = read_yaml(path)
        run_name = data.get("run_name")
        base = run_name if isinstance(run_name, str) and run_name else path.stem
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        sources.append(
            RunSource(name, DECOMPOSE_SCRIPT, path.resolve(), minutes or DEFAULT_CONFIG_RUNTIME)
        )
    if not sources:
        raise SPDUserError("--config needs a YAML file")
    return sources


def user_path_overrides(source: RunSource, config: Config) -> dict[str, str]:
    """A `--config` file's relative target path, made absolute from where spd-run was started.

    Runs start in the code's directory (or a snapshot of it), so a path the user wrote relative
    to their own working directory would otherwise not be found.
    """
    path = config.pretrained_model_path
    if source.script != DECOMPOSE_SCRIPT or path is None or path.startswith("wandb:"):
        return {}
    local = Path(path).expanduser()
    if local.is_absolute() or not local.exists():
        return {}
    return {"pretrained_model_path": str(local.resolve())}
