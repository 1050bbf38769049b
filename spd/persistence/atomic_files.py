"""Writing files so that a crash mid-write never leaves a half-written file in place.

Every file is created with the mode `open()` would give it (0o666 less the user's umask), so a
run's outputs are as readable to colleagues on a shared machine as any other file the user writes.
"""

import os
import secrets
from pathlib import Path
from typing import Any

import torch

from spd.errors import write_guard

# What `open(path, "w")` asks for; the kernel then clears the bits the umask names.
_FILE_MODE = 0o666


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty file beside `path`, created with the umask's mode (unlike `tempfile.mkstemp`,
    which makes it owner-only and so would leave the renamed file owner-only too)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def _atomic_replace(path: Path, write: Any) -> None:
    # A full disk or a read-only directory leaves the earlier file (e.g. the last complete
    # checkpoint) in place and becomes one line naming the file (`write_guard`).
    with write_guard("the file", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
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
