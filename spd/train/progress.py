"""Progress of a long loop: a live bar on a terminal, plain periodic lines anywhere else.

A bar redraws itself with carriage returns many times a second; written into a log file (stderr
redirected, a SLURM log, `spd-run --local --log-format terse`) that is megabytes of updates. When
stderr is not a terminal, `progress_bar` instead prints one ordinary line every
`LINE_INTERVAL_SECONDS` (and one at the end), with the same counts, rate and time left.
"""

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

# How often a log gets a progress line when stderr is not a terminal.
LINE_INTERVAL_SECONDS = 30.0


class LineProgress(tqdm):  # pyright: ignore[reportMissingTypeArgument]
    """A tqdm whose every refresh is one complete line (no carriage return, no cursor moves)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._printed_n: float | None = None
        # leave=False: closing prints nothing of tqdm's own; `close` prints the final line.
        super().__init__(*args, leave=False, **kwargs)

    # tqdm's stubs say None, but `close` uses the returned bool (whether anything was shown).
    def display(self, msg: str | None = None, pos: int | None = None) -> bool:  # pyright: ignore[reportIncompatibleMethodOverride]
        if msg == "":  # tqdm clearing its bar: there is no bar to clear
            return False
        self.fp.write((self.__str__() if msg is None else msg) + "\n")
        self.fp.flush()
        self._printed_n = self.n
        return True

    def close(self) -> None:
        if not self.disable and self._printed_n != self.n:
            self.display()
        super().close()


def progress_bar(iterable: Iterable[T], show: bool, **kwargs: Any) -> "tqdm[T]":
    """`tqdm(iterable, **kwargs)`: hidden unless `show`, a bar on a terminal, else periodic lines."""
    if show and not sys.stderr.isatty():
        return LineProgress(
            iterable, mininterval=LINE_INTERVAL_SECONDS, miniters=1, ascii=True, **kwargs
        )
    return tqdm(iterable, disable=not show, ncols=100, **kwargs)
