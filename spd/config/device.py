"""Device selection (`device: auto` picks CUDA when present)."""

import re

import torch

from spd.errors import SPDUserError

# The device strings a run accepts; anything else torch would either reject with a traceback or
# accept with a meaning no run supports (e.g. 'meta').
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d{1,3})?|mps")
DEVICE_HINT = "use 'auto', 'cpu', 'cuda' or 'cuda:N'"


def check_device_string(device: str) -> None:
    """Raise ValueError for a device string that names no device a run can use (config check)."""
    if not _DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"unknown device {device!r}; {DEVICE_HINT}")


def resolve_device(device: str) -> torch.device:
    """Map a config's `device` string to a torch device, failing clearly if it is unavailable."""
    try:
        check_device_string(device)
    except ValueError as err:
        raise SPDUserError(str(err)) from None
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SPDUserError(
                f"device '{device}' was requested but CUDA is not available here; "
                "use `device: auto` or `device: cpu`"
            )
        resolved = torch.device(device)
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise SPDUserError(
                f"device '{device}' does not exist: this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
        return resolved
    if device == "mps" and not torch.backends.mps.is_available():
        raise SPDUserError(f"device '{device}' is not available here; {DEVICE_HINT}")
    return torch.device(device)
