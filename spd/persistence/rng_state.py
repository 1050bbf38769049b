"""Capturing and restoring every random-number generator a run draws from.

A resumed run must draw exactly the numbers the uninterrupted run would have drawn, so the
checkpoint holds the state of Python's `random`, NumPy's global generator, torch's CPU generator
and (when CUDA is available) every CUDA device's generator. States are stored as tensors and
plain Python values only, so checkpoints stay loadable with `torch.load(weights_only=True)`.
"""

import random
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """The current state of every global generator."""
    # `legacy=False` gives a dict; its key array is stored as a tensor because
    # `weights_only` loading refuses NumPy arrays.
    numpy_state = np.random.get_state(legacy=False)
    key = numpy_state["state"]["key"]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every global generator back into a state from `capture_rng_state`.

    CUDA states are restored for the devices both the saved run and this process have; a run
    saved without CUDA leaves the CUDA generators untouched.
    """
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {
                "key": numpy_state["key"].numpy().astype(np.uint32),
                "pos": numpy_state["pos"],
            },
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        for index in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[index], device=index)
