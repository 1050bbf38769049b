"""Everything besides the parameters that a run needs to continue exactly where it stopped.

The training state of a checkpoint holds the optimiser state, every RNG state, the position of
each data stream, the alive tracker and the stateful loss terms' states; `spd.persistence.checkpoints.save_checkpoint` writes it next to the
decomposition and its config.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from spd.config.schema import Config
from spd.data.stream_state import TrackedStream
from spd.errors import SPDUserError
from spd.losses.inputs import TermState
from spd.models.component_model import ComponentModel
from spd.persistence.checkpoints import save_checkpoint
from spd.persistence.resume import check_checkpoint
from spd.persistence.rng_state import capture_rng_state, restore_rng_state
from spd.persistence.run_dir import RunDirectory
from spd.train.alive_tracker import AliveTracker


def capture_training_state(
    optimizer: torch.optim.Optimizer,
    alive: AliveTracker,
    streams: Mapping[str, TrackedStream],
    term_states: Mapping[str, TermState] | None = None,
) -> dict[str, Any]:
    """The training state as checkpoint entries ('optimizer', 'rng', 'data', 'alive', and
    'term_states' with each stateful loss term's state by name)."""
    state = {
        "optimizer": optimizer.state_dict(),
        "rng": capture_rng_state(),
        "data": {name: stream.state_dict() for name, stream in streams.items()},
        "alive": alive.state_dict(),
    }
    if term_states:
        state["term_states"] = {name: s.state_dict() for name, s in term_states.items()}
    return state


def restore_training_state(
    data: dict[str, Any],
    source: Path,
    config: Config,
    model: ComponentModel,
    optimizer: torch.optim.Optimizer,
    alive: AliveTracker,
    streams: Mapping[str, TrackedStream],
    term_states: Mapping[str, TermState] | None = None,
) -> int:
    """Load a checkpoint's parameters and training state (and the stateful loss terms' states);
    returns the step to continue at.

    The RNG states are restored last, after everything that might draw random numbers.
    """
    step = check_checkpoint(data, source, config)
    try:
        model.load_decomposition_state(data["decomposition"])
        optimizer.load_state_dict(data["optimizer"])
        alive.load_state_dict(data["alive"])
        for name, state in (term_states or {}).items():
            state.load_state_dict(data["term_states"][name])
    except (RuntimeError, KeyError, ValueError) as err:
        message = f"{source} does not match its config's architecture: {type(err).__name__}: {err}"
        raise SPDUserError(message.split("\n")[0]) from None
    for name, stream in streams.items():
        stream.load_state_dict(data["data"][name])
    restore_rng_state(data["rng"])
    return step


class Checkpointer:
    """Saves the decomposition with its full training state into a run directory (rank 0 only:
    other ranks, and library calls without a run directory, pass None and save nothing)."""

    def __init__(
        self,
        run_dir: RunDirectory | None,
        config: Config,
        model: ComponentModel,
        optimizer: torch.optim.Optimizer,
        alive: AliveTracker,
        streams: Mapping[str, TrackedStream],
        term_states: Mapping[str, TermState] | None = None,
    ) -> None:
        self.run_dir, self.config, self.model = run_dir, config, model
        self.optimizer, self.alive, self.streams = optimizer, alive, streams
        self.term_states = term_states or {}

    def save(self, step: int) -> None:
        """Checkpoint the state at the start of `step` (after `step` optimiser updates)."""
        if self.run_dir is not None:
            state = capture_training_state(
                self.optimizer, self.alive, self.streams, self.term_states
            )
            save_checkpoint(self.run_dir, step, self.model, self.config, state)
