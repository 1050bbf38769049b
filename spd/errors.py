"""User-facing errors and the one place that turns them into a clean exit."""

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class SPDUserError(Exception):
    """A mistake in user input (config, paths, options). Reported as one line, exit code 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose complaints are `SPDUserError`s: one line, no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise SPDUserError(f"{self.prog}: {message} (see --help)")


def exit_with_error(message: str, code: int = 2) -> NoReturn:
    print(f"spd: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_cli(main: Callable[[], None]) -> None:
    """Run a command-line entry point, reporting user errors without a traceback."""
    try:
        main()
    except SPDUserError as err:
        exit_with_error(str(err))
    except KeyboardInterrupt:
        exit_with_error("interrupted", code=130)
