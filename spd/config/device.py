"""Device selection (`device: auto` picks CUDA when present)."""

import torch

from spd.errors import SPDUserError


def resolve_device(device: str) -> torch.device:
    """Map a config's `device` string to a torch device, failing clearly if it is unavailable."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SPDUserError(
            f"device '{device}' was requested but CUDA is not available here; "
            "use `device: auto` or `device: cpu`"
        )
    return torch.device(device)
