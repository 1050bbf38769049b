"""An exclusive lock on a directory one process writes: a run directory, or a run's analysis.

A training run (fresh or resumed) holds its run directory's lock from before its first write
until it ends; a second writer (a second `--resume` of the same run, a restart into the same
`--run-dir`) is refused with one line naming the process that holds it, instead of interleaving
metrics rows and pruning the other's checkpoints. The lock is an advisory `flock` on
`<dir>/.spd.lock`: the kernel drops it when the holder exits, however it exits, so a killed
run never leaves a stale lock behind. The file keeps the holder's PID for the message.
"""

import fcntl
import os
from pathlib import Path
from types import TracebackType

from spd.errors import SPDUserError, write_guard

LOCK_FILE = ".spd.lock"


class DirectoryLock:
    """The exclusive lock on `directory`, taken by `acquire` and given up by `release`."""

    def __init__(self, directory: Path, what: str) -> None:
        self.directory = directory
        self.what = what
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        """Take the lock, or raise `SPDUserError` naming the PID that holds it."""
        fix = f"{self.what} {self.directory} must be writable; copy it somewhere you can write"
        with write_guard(f"the lock of {self.what}", self.path, fix):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SPDUserError(
                f"{self.what} {self.directory} is in use by process {holder} (another spd process "
                "writes it); wait for it to end or stop it, then run this again"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (a no-op when it is not held)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_run_directory(path: Path) -> DirectoryLock:
    """The held lock of the run directory `path` (see the module docstring)."""
    return DirectoryLock(path, "run directory").acquire()
