"""Stopping a run cleanly when a scheduler asks: SIGTERM or SIGUSR1 → checkpoint and exit 75.

SLURM sends SIGTERM before killing a preempted or timed-out job, and the signal chosen with
`--signal` (e.g. `--signal=B:USR1@120`) ahead of the time limit. The scripts install
`StopOnSignal` around `optimize()` and pass it as `should_stop`: the step in progress finishes,
the next step's state is checkpointed and the process exits with `PREEMPTED_EXIT_CODE`, so a
wrapper can tell "stopped, continue me with --resume" apart from success (0), a user or
numerical error (2) and an interrupt (130).
"""

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any, NoReturn, Self

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# EX_TEMPFAIL from sysexits.h: a temporary failure; running the command again will continue it.
PREEMPTED_EXIT_CODE = 75


class StopOnSignal:
    """A `should_stop` callback that returns True once one of `signals` has arrived.

    As a context manager it installs its handler on entry (main thread only: Python delivers
    signals there) and puts the previous handlers back on exit.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        # Only a flag is set: the handler may run between any two bytecodes, so the run stops
        # at the next step boundary, where its state is consistent.
        self.received = signal.Signals(signum)

    def __call__(self) -> bool:
        return self.received is not None

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def exit_preempted(message: str) -> NoReturn:
    """Report a run that stopped on a signal after checkpointing, and exit with code 75."""
    print(f"spd: {message}", file=sys.stderr, flush=True)
    raise SystemExit(PREEMPTED_EXIT_CODE)
