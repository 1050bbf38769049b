"""The environment variables spd reads that have a fixed form, checked before anything starts.

`check_environment()` runs at the start of every command that trains or launches (spd-run, the
decomposition scripts); each malformed or contradictory variable is one `SPDUserError` line
naming it and its accepted values. Without it a typo is silently ignored (`WANDB_MODE=ofline`
tracked nothing), an integer is parsed deep inside a launch (`SPD_MAX_GPUS_PER_NODE=eight`),
or variables left over from another launch make a plain run wait for peers that never come
(`RANK`/`WORLD_SIZE` without torchrun's `MASTER_ADDR`/`MASTER_PORT`).
"""

import os

from spd.errors import SPDUserError

MAX_GPUS_ENV = "SPD_MAX_GPUS_PER_NODE"
DEFAULT_MAX_GPUS = 8
WANDB_MODE_ENV = "WANDB_MODE"
# What wandb itself accepts; spd tracks online for online/run, offline for offline/dryrun.
WANDB_MODES = ("online", "run", "offline", "dryrun", "disabled")
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT")


def env_int(name: str, default: int, minimum: int) -> int:
    """The integer in environment variable `name` (`default` when unset or empty)."""
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SPDUserError(
            f"environment variable {name}={raw!r} must be an integer (at least {minimum})"
        ) from None
    if value < minimum:
        raise SPDUserError(f"environment variable {name}={value} must be at least {minimum}")
    return value


def max_gpus_per_node() -> int:
    """`SPD_MAX_GPUS_PER_NODE`: the most GPUs a SLURM node offers one run (default 8)."""
    return env_int(MAX_GPUS_ENV, DEFAULT_MAX_GPUS, minimum=1)


def check_rank_variables() -> None:
    """RANK/WORLD_SIZE/LOCAL_RANK are integers, set together and with torchrun's rendezvous."""
    present = [name for name in RANK_VARIABLES[:2] if os.environ.get(name, "").strip()]
    if not present:
        return
    rank, world = env_int("RANK", 0, minimum=0), env_int("WORLD_SIZE", 1, minimum=1)
    env_int("LOCAL_RANK", 0, minimum=0)
    missing = [
        name for name in (*RANK_VARIABLES[:2], *RENDEZVOUS_VARIABLES) if name not in os.environ
    ]
    if missing:
        raise SPDUserError(
            f"{'/'.join(present)} set in the environment without {', '.join(missing)}: left over "
            "from another launch? unset them, or start data-parallel runs with spd-run --dp N "
            "(torchrun sets all of them)"
        )
    if rank >= world:
        raise SPDUserError(f"environment variable RANK={rank} must be below WORLD_SIZE={world}")


def check_wandb_mode() -> None:
    """`WANDB_MODE`, when set, is one of wandb's modes."""
    mode = os.environ.get(WANDB_MODE_ENV, "").strip().lower()
    if mode and mode not in WANDB_MODES:
        raise SPDUserError(
            f"environment variable {WANDB_MODE_ENV}={os.environ[WANDB_MODE_ENV]!r} is not a W&B "
            f"mode; use one of {', '.join(WANDB_MODES)} (or unset it)"
        )


def check_environment() -> None:
    """Every check above; raises `SPDUserError` for the first variable that is wrong."""
    max_gpus_per_node()
    check_rank_variables()
    check_wandb_mode()
