"""Which checkpoints of a run can be trusted: readable, complete and finite.

A run resumes from, and reports as its "last good" checkpoint, only one that passes
`checkpoint_problem`; a damaged newest one (truncated by a crash, non-finite after a bad step,
overwritten by something else) is passed over for the newest older one that is good.
"""

import sys
from pathlib import Path
from typing import Any

import torch

from spd.errors import SPDUserError
from spd.persistence.checkpoints import CHECKPOINT_GLOB, read_checkpoint

TRAINING_STATE_KEYS = ("optimizer", "rng", "data", "alive")


def _non_finite_entry(data: Any, where: str) -> str | None:
    """The dotted name of the first floating-point tensor in `data` with a NaN or inf."""
    if isinstance(data, torch.Tensor):
        finite = not data.is_floating_point() or bool(torch.isfinite(data).all())
        return None if finite else where
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list | tuple):
        items = enumerate(data)
    else:
        return None
    for key, value in items:
        found = _non_finite_entry(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def checkpoint_problem(data: dict[str, Any], training_state: bool) -> str | None:
    """Why a read checkpoint cannot be resumed from (None: it can).

    `training_state`: the optimiser, RNG, data and alive-tracker state must be there too.
    """
    missing = [key for key in TRAINING_STATE_KEYS if key not in data] if training_state else []
    if missing:
        return f"it holds no training state ({', '.join(missing)} missing), only a model"
    if not isinstance(data.get("step"), int):
        return "its 'step' entry is not an integer"
    bad = _non_finite_entry({k: data[k] for k in ("decomposition", "optimizer") if k in data}, "")
    if bad is not None:
        return f"non-finite values in {bad}"
    return None


def newest_good_checkpoint(run_dir: Path, training_state: bool) -> tuple[Path, dict[str, Any]]:
    """The newest good checkpoint of a run and its content; `SPDUserError` when there is none.

    Each newer one passed over is reported on stderr with its reason, so the user knows why a run
    continues from an older step.
    """
    skipped: list[str] = []
    for path in sorted((run_dir / "checkpoints").glob(CHECKPOINT_GLOB), reverse=True):
        try:
            data = read_checkpoint(path)
        except SPDUserError as err:
            skipped.append(str(err))  # it names the file
            continue
        problem = checkpoint_problem(data, training_state)
        if problem is None:
            for reason in skipped:
                print(
                    f"spd: warning: {reason}; using the older {path.name} instead", file=sys.stderr
                )
            return path, data
        skipped.append(f"{path}: {problem}")
    if not skipped:
        raise SPDUserError(
            f"no checkpoint (checkpoints/{CHECKPOINT_GLOB}) in run directory {run_dir}"
        )
    raise SPDUserError(
        f"no usable checkpoint in run directory {run_dir} ({len(skipped)} damaged; newest: "
        f"{skipped[0]}); start the run afresh"
    )
