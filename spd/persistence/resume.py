"""Whether and where a run can continue: run-directory checks and config compatibility.

A run continues from the newest checkpoint in its directory. Its config may differ from the
checkpoint's only in `RESUMABLE_FIELDS` (bookkeeping, the number of steps, the learning-rate
schedule); anything that changes what is decomposed, how it is scored or how a step draws its
data is refused, naming the field.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.persistence.checkpoint_check import TRAINING_STATE_KEYS, newest_good_checkpoint
from spd.persistence.checkpoints import checkpoint_config
from spd.persistence.run_dir import CONFIG_FILE, RunDirectory

RESUMABLE_FIELDS = frozenset(
    {
        "device",
        "compile",
        "run_name",
        "wandb_project",
        "wandb_entity",
        "wandb_run_name",
        "wandb_run_name_prefix",
        "wandb_group",
        "wandb_tags",
        "out_dir",
        "steps",
        "lr",
        "lr_schedule",
        "lr_warmup_pct",
        "lr_exponential_halflife",
        "train_log_freq",
        "eval_freq",
        "slow_eval_freq",
        "slow_eval_on_first_step",
        "eval_batch_size",
        "n_eval_steps",
        "save_freq",
        "keep_last_checkpoints",
        "metrics",
        "figures",
    }
)


@dataclass(frozen=True)
class ResumePoint:
    """The run directory to continue, its newest checkpoint and the step it starts at."""

    run_dir: RunDirectory
    checkpoint: Path
    step: int


def check_run_directory(path: Path) -> Path:
    """`path` if it is a run directory (holding final_config.yaml), else a clear error."""
    if not path.exists():
        raise SPDUserError(f"cannot resume {path}: no such directory")
    if not path.is_dir():
        raise SPDUserError(f"cannot resume {path}: not a directory; give the run's directory")
    if not (path / CONFIG_FILE).is_file():
        raise SPDUserError(f"cannot resume {path}: not an spd run directory (no {CONFIG_FILE})")
    return path


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    # `losses:` entries by their term's name, so that a refusal names e.g.
    # `losses.importance_minimality.coeff` rather than printing both lists.
    if isinstance(data, list) and all(isinstance(e, dict) and "name" in e for e in data):
        data = {entry["name"]: entry for entry in data} if data else data
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def check_resumable(saved: Config, new: Config, source: Path) -> None:
    """Refuse a config that changes anything outside `RESUMABLE_FIELDS`, naming the fields."""
    old_flat, new_flat = (
        _flatten(saved.model_dump(mode="json")),
        _flatten(new.model_dump(mode="json")),
    )
    changed = [
        f"{key} ({old_flat.get(key)!r} -> {new_flat.get(key)!r})"
        for key in dict.fromkeys([*old_flat, *new_flat])
        if key.split(".")[0] not in RESUMABLE_FIELDS and old_flat.get(key) != new_flat.get(key)
    ]
    if changed:
        raise SPDUserError(
            f"cannot resume from {source}: the config changes {', '.join(changed)}; a resumed run "
            "may change only steps, the lr schedule and bookkeeping (spd.persistence.resume.RESUMABLE_FIELDS)"
        )


def check_checkpoint(data: dict[str, Any], source: Path, config: Config) -> int:
    """The step a checkpoint resumes at, after checking it holds a training state `config` accepts."""
    missing = [key for key in TRAINING_STATE_KEYS if key not in data]
    if missing:
        raise SPDUserError(
            f"cannot resume from {source}: it holds no training state ({', '.join(missing)} "
            "missing), only a model"
        )
    check_resumable(checkpoint_config(data, source), config, source)
    step = int(data["step"])
    if step > config.steps:
        raise SPDUserError(
            f"cannot resume from {source}: it is at step {step}, beyond steps={config.steps}; "
            f"set steps to at least {step}"
        )
    return step


def find_resume_point(path: Path, config: Config) -> ResumePoint:
    """Check that the run at `path` can continue under `config`, before anything is written.

    It continues from the newest good checkpoint (`newest_good_checkpoint`: readable, complete,
    finite), saying which newer ones it passed over; the config must be compatible with it.
    """
    check_run_directory(path)
    checkpoint, data = newest_good_checkpoint(path, training_state=True)
    step = check_checkpoint(data, checkpoint, config)
    return ResumePoint(run_dir=RunDirectory(path), checkpoint=checkpoint, step=step)
