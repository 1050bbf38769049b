"""Running a launch's runs here (`spd-run --local`): one child process at a time, signals passed on.

A scheduler or a user stopping `spd-run` with SIGTERM (or SIGUSR1) means "stop the run": the
signal goes to the running child, which checkpoints and exits with 75, and no further run starts.
`launcher_exit_code` is the one place that turns the children's exit codes into `spd-run`'s:
0 all finished, 75 stopped but resumable, 1 a run failed.
"""

import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from types import FrameType
from typing import Literal

from spd.persistence.preemption import PREEMPTED_EXIT_CODE, PREEMPTION_SIGNALS, StopOnSignal

FAILED_EXIT_CODE = 1
Outcome = Literal["finished", "resumable", "failed", "not started"]


def outcome_of(exit_code: int | None) -> Outcome:
    """What a child's exit code means for its run (None: it never started)."""
    if exit_code is None:
        return "not started"
    if exit_code == 0:
        return "finished"
    if exit_code == PREEMPTED_EXIT_CODE:
        return "resumable"
    return "failed"


def launcher_exit_code(exit_codes: Sequence[int | None]) -> int:
    """`spd-run`'s exit code for its runs' codes: 0 all finished; 75 every unfinished run stopped
    resumably (running `--resume` continues it); 1 otherwise (a run failed, or never started)."""
    outcomes = {outcome_of(code) for code in exit_codes} - {"finished"}
    if not outcomes:
        return 0
    if outcomes == {"resumable"}:
        return PREEMPTED_EXIT_CODE
    return FAILED_EXIT_CODE


class SignalForwarder(StopOnSignal):
    """While active, SIGTERM and SIGUSR1 are passed on to the running child (see `run`) and
    recorded in `received`, so the caller starts no further run."""

    def __init__(self) -> None:
        super().__init__(PREEMPTION_SIGNALS)
        self._child: subprocess.Popen[bytes] | None = None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        super()._handle(signum, _frame)
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signum)

    def run(
        self, command: list[str], cwd: Path | None, env: Mapping[str, str], log: Path | None
    ) -> int:
        """Run `command` to its end, passing signals on; returns its exit code."""
        with log.open("w") if log is not None else nullcontext() as handle:
            child = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT if handle is not None else None,
            )
            self._child = child
            if self.received is not None:
                child.send_signal(self.received)  # it arrived while the child was being started
            try:
                return child.wait()
            except KeyboardInterrupt:
                # spd-run alone was interrupted: let the child checkpoint and stop, not orphan it.
                child.send_signal(signal.SIGTERM)
                child.wait()
                raise
            finally:
                self._child = None


def resume_hint(run_dir: Path | None, cpu: bool) -> str:
    """The command that continues a stopped local run."""
    where = str(run_dir) if run_dir is not None else "<its run directory>"
    return f"spd-run --resume {where} --local" + (" --cpu" if cpu else "")


def report_outcomes(
    names: Sequence[str], exit_codes: Sequence[int | None], hints: Mapping[str, str]
) -> int:
    """Print what became of each unfinished run (with `hints` for resumable ones) and return the
    launcher's exit code."""
    for name, code in zip(names, exit_codes, strict=True):
        outcome = outcome_of(code)
        if outcome == "resumable":
            print(
                f"spd-run: {name}: stopped, resumable (exit {code}); continue with: {hints[name]}",
                file=sys.stderr,
                flush=True,
            )
        elif outcome == "failed":
            print(f"spd-run: {name}: FAILED (exit {code}; see the output above)", file=sys.stderr)
        elif outcome == "not started":
            print(f"spd-run: {name}: not started (spd-run was stopped)", file=sys.stderr)
    return launcher_exit_code(exit_codes)
