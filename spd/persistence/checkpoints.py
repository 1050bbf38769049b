"""Saving a decomposition run's checkpoints and loading them back.

A checkpoint `checkpoints/model_<step>.pth` is written at the start of optimisation step `step`,
after `step` optimiser updates. Besides 'config' and 'decomposition' (all that
`ComponentModel.from_pretrained` needs), a checkpoint written by `optimize()` holds the training
state (see `spd.train.training_state`), from which the run continues at exactly that step.
"""

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from spd.config.loading import config_from_dict
from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.loading.weights_only import load_weights_only
from spd.persistence.atomic_files import atomic_torch_save
from spd.persistence.run_dir import RunDirectory


class Decomposition(Protocol):
    """What a checkpoint stores of a model: its decomposition state (a `ComponentModel`)."""

    def decomposition_state(self) -> dict[str, dict[str, Tensor]]: ...


CHECKPOINT_GLOB = "model_*.pth"
_CHECKPOINT_NAME = re.compile(r"model_(\d+)\.pth")


def checkpoint_path(run_dir: RunDirectory, step: int) -> Path:
    return run_dir.checkpoints / f"model_{step:08d}.pth"


def save_checkpoint(
    run_dir: RunDirectory,
    step: int,
    model: Decomposition,
    config: Config,
    training_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write the decomposition, its config and (optionally) the training state for `step`.

    Refuses (FloatingPointError) to write non-finite parameters, so the newest checkpoint on disk
    is always a usable one; afterwards only the newest `config.keep_last_checkpoints` checkpoints
    and the one of the final step are kept.
    """
    decomposition = model.decomposition_state()
    for part, tensors in decomposition.items():
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise FloatingPointError(
                    f"non-finite values in {part} '{name}' at step {step}; checkpoint not written"
                )
    path = checkpoint_path(run_dir, step)
    atomic_torch_save(
        {
            "step": step,
            "config": config.model_dump(mode="json"),
            "decomposition": decomposition,
            **(training_state or {}),
        },
        path,
    )
    prune_checkpoints(run_dir.checkpoints, config.keep_last_checkpoints, final_step=config.steps)
    return path


def prune_checkpoints(directory: Path, keep: int, final_step: int) -> None:
    """Delete all but the newest `keep` checkpoints (never the final step's) and stale temp files.

    Runs right after a checkpoint was renamed into place, so nothing else is writing here: any
    temporary file left is from a process killed mid-write.
    """
    found = sorted(directory.glob(CHECKPOINT_GLOB))
    for path in found[:-keep]:
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match is not None and int(match.group(1)) != final_step:
            path.unlink(missing_ok=True)
    for stale in directory.glob(".model_*.tmp"):
        stale.unlink(missing_ok=True)


def latest_checkpoint(run_dir: Path) -> Path:
    """The checkpoint with the highest step in a run directory."""
    found = sorted((run_dir / "checkpoints").glob(CHECKPOINT_GLOB))
    if not found:
        raise SPDUserError(
            f"no checkpoint (checkpoints/{CHECKPOINT_GLOB}) in run directory {run_dir}"
        )
    return found[-1]


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint file, turning a truncated or foreign file into a clear error."""
    data = load_weights_only(path, "checkpoint")
    if not isinstance(data, dict) or not {"config", "decomposition"} <= data.keys():
        raise SPDUserError(f"{path} is not an spd checkpoint (no 'config'/'decomposition' entries)")
    return data


def checkpoint_config(data: Mapping[str, Any], source: Path) -> Config:
    """The config a checkpoint was written under.

    A checkpoint from before `tied_weights_mode` existed trained its tied matrices as one
    parameter, so its config is read as `single_parameter` (not today's default): resuming it
    under the other mode is then refused by name instead of mixing optimiser states.
    """
    raw = dict(data["config"])
    if raw.get("tied_weights") and "tied_weights_mode" not in raw:
        raw["tied_weights_mode"] = "single_parameter"
    return config_from_dict(raw, source=str(source))
