"""User-facing errors and the one place that turns them into a clean exit.

Every command-line entry point runs its `main` through `run_cli` (or, in tests, through
`cli_exit_code`, the same boundary without leaving the process). The split is by cause:

- the user's input (config, paths, options, a machine too small for the run, a full or read-only
  disk) is an `SPDUserError`: one line on stderr naming the input, the problem and the fix, exit
  code 2, no traceback;
- anything else is a bug in spd: its traceback is printed, then one line saying so and where to
  report it, exit code 1.

Code that knows a failure is the user's raises `SPDUserError` where it knows it (e.g. the config
loader, `write_guard` for writes to the output directory); the boundary never guesses from an
exception's type alone.
"""

import argparse
import errno
import io
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import NoReturn

USER_ERROR_EXIT_CODE = 2
BUG_EXIT_CODE = 1
BUG_REPORT_HINT = (
    "this is a bug in spd, not a problem with your input; please report it with the traceback "
    "above and the command you ran to the spd maintainers (the repository's issue tracker)"
)

# Errors of a write that the machine, not the program, caused: the disk or quota is full, the
# file-size limit was hit, or the file system or directory does not accept writes.
_WRITE_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file-size limit was reached",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
}


class SPDUserError(Exception):
    """A mistake in user input (config, paths, options). Reported as one line, exit code 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose complaints are `SPDUserError`s: one line, no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise SPDUserError(f"{self.prog}: {message} (see --help)")


def one_line(text: str) -> str:
    """`text` with its line breaks folded, so that an error message stays one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def exit_with_error(message: str, code: int = USER_ERROR_EXIT_CODE) -> NoReturn:
    print(f"spd: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(code)


def _write_environment_cause(err: BaseException) -> str | None:
    """What about the machine made a write fail, if anything: `err` or an error it was raised
    from (torch.save reports a failed write as a RuntimeError raised while handling it)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _WRITE_ENVIRONMENT_ERRNOS:
            return _WRITE_ENVIRONMENT_ERRNOS[current.errno]
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def write_guard(what: str, path: Path | str, fix: str = "") -> Iterator[None]:
    """Turn a write that fails because of the machine (disk full, read-only, no permission)
    into an `SPDUserError` naming `what` was being written to `path`; `fix` is appended.

    Any other failure is left alone (it is a bug, and keeps its traceback)."""
    try:
        yield
    except Exception as err:
        cause = _write_environment_cause(err)
        if cause is None:
            raise
        advice = fix or "free space or choose a writable output directory (out_dir / SPD_OUT_DIR)"
        raise SPDUserError(f"cannot write {what} {path}: {cause}; {advice}") from None


def run_cli(main: Callable[[], None]) -> None:
    """Run a command-line entry point: a user error is one line and exit code 2, a bug keeps its
    traceback and adds one line saying it is a bug (exit code 1)."""
    try:
        main()
    except SPDUserError as err:
        exit_with_error(str(err))
    except KeyboardInterrupt:
        exit_with_error("interrupted", code=130)
    except Exception:
        traceback.print_exc()
        print(f"spd: internal error: {BUG_REPORT_HINT}", file=sys.stderr)
        raise SystemExit(BUG_EXIT_CODE) from None


def cli_exit_code(main: Callable[[], None]) -> tuple[int, str]:
    """Run `main` through the same boundary as `run_cli`, in this process.

    Returns the exit code and everything written to stderr; used by the input fuzzer to try many
    inputs without starting a process for each.
    """
    captured = io.StringIO()
    code = 0
    with redirect_stderr(captured):
        try:
            run_cli(main)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, captured.getvalue()
