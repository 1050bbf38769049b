"""Writing files so that a crash mid-write never leaves a half-written file in place."""

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_replace(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    _atomic_replace(path, lambda handle: handle.write(text.encode()))


def atomic_torch_save(obj: object, path: Path) -> None:
    """`torch.save` through a temporary file and a rename."""
    _atomic_replace(path, lambda handle: torch.save(obj, handle))
