"""The streaming loop of an analysis pass: count batches until N tokens, saving a state to continue from.

The state (`analysis/state.pt`, written atomically every `save_every` batches, on Ctrl-C, on
SIGTERM/SIGUSR1 and at the end) holds the accumulated statistics, the number of batches done and
what the pass reads (`source`). A rerun with the same source and settings continues from it: the
data stream is deterministic, so the batches already counted are drawn again and skipped. A rerun
with a larger `--tokens` goes on from where the last one ended.
"""

from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from spd.analysis.accumulators import AnalysisAccumulator
from spd.errors import SPDUserError
from spd.loading.weights_only import load_weights_only
from spd.persistence.atomic_files import atomic_torch_save
from spd.persistence.preemption import StopOnSignal, exit_preempted

STATE_FILE = "state.pt"

# One batch of a pass: the token (or toy feature) of every position, and the model's input.
Batch = tuple[Int[Tensor, "batch seq"], Tensor]
CIFunction = Callable[[Tensor], dict[str, Float[Tensor, "batch seq C"]]]


def _is_state(state: Any) -> bool:
    return (
        isinstance(state, dict)
        and isinstance(state.get("source"), dict)
        and isinstance(state.get("accumulator"), dict)
        and isinstance(state["accumulator"].get("settings"), dict)
    )


def restore_state(acc: AnalysisAccumulator, path: Path, source: dict[str, Any]) -> bool:
    """Load a saved state into `acc` if there is one for the same source and settings."""
    if not path.exists():
        return False
    state = load_weights_only(path, "analysis state", "add --fresh to start the pass over")
    if not _is_state(state):
        raise SPDUserError(
            f"{path} is not an analysis state written by spd-analyze; add --fresh to start over"
        )
    saved = {"source": state["source"], "settings": state["accumulator"]["settings"]}
    wanted = {"source": source, "settings": asdict(acc.settings)}
    if saved != wanted:
        changed = sorted(
            f"{part}.{key}"
            for part in ("source", "settings")
            for key in set(saved[part]) | set(wanted[part])
            if saved[part].get(key) != wanted[part].get(key)
        )
        raise SPDUserError(
            f"{path} is a pass with other options ({', '.join(changed)} differ); rerun with the "
            "same options to continue it, or add --fresh to start over"
        )
    acc.load_state_dict(state["accumulator"])
    return True


def save_state(acc: AnalysisAccumulator, path: Path, source: dict[str, Any]) -> None:
    atomic_torch_save({"source": source, "accumulator": acc.state_dict()}, path)


def run_pass(
    acc: AnalysisAccumulator,
    batches: Iterator[Batch],
    ci_of: CIFunction,
    n_tokens: int,
    state_path: Path,
    source: dict[str, Any],
    save_every: int,
    show_progress: bool,
) -> None:
    """Count batches into `acc` until it has seen at least `n_tokens` tokens.

    Batches already counted by a restored state are drawn and skipped first.
    """
    for _ in range(acc.n_batches):
        next(batches)
    bar = tqdm(
        total=n_tokens,
        initial=min(acc.n_tokens, n_tokens),
        unit="tok",
        unit_scale=True,
        disable=not show_progress,
        desc="analysis",
    )
    since_save = 0
    try:
        with StopOnSignal() as should_stop:
            while acc.n_tokens < n_tokens:
                tokens, inputs = next(batches)
                with torch.no_grad():
                    ci = ci_of(inputs)
                acc.update(tokens, ci)
                bar.update(tokens.numel())
                since_save += 1
                if since_save >= save_every:
                    save_state(acc, state_path, source)
                    since_save = 0
                if should_stop():
                    save_state(acc, state_path, source)
                    exit_preempted(
                        f"analysis stopped after {acc.n_tokens} tokens; state saved to "
                        f"{state_path}, rerun the same command to continue"
                    )
    except KeyboardInterrupt:
        save_state(acc, state_path, source)
        raise
    finally:
        bar.close()
    save_state(acc, state_path, source)
