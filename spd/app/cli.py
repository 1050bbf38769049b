"""`spd-app RUN_DIR…`: the local web app over one or more run directories.

    spd-app spd_out/<run dir> [more run dirs] --port 8000

It serves on 127.0.0.1 only, prints the address, and stops on Ctrl-C (or SIGTERM). Run
`spd-analyze RUN_DIR` first for the component browser and the clusters; the attribution graphs
and interventions need only the run's checkpoint.
"""

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from spd.errors import OneLineArgumentParser, SPDUserError, run_cli
from spd.persistence.run_dir import CONFIG_FILE


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="spd-app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0: any free one)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for path in args.run_dirs:
        if not (path / CONFIG_FILE).is_file():
            raise SPDUserError(
                f"no such run directory: {path}"
                if not path.is_dir()
                else f"{path} is not a run directory (no {CONFIG_FILE})"
            )
    # Imported once the arguments are known good: torch, transformers and flask take seconds.
    from spd.app.runs import load_run
    from spd.app.server import HOST, bind, create_app

    runs = [load_run(path) for path in args.run_dirs]
    for run in runs:
        if run.analysis_message:
            print(f"spd-app: {run.analysis_message}", flush=True)
    server = bind(create_app(runs), args.port)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever, which runs in this thread: end it from the loop.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"spd-app: serving {len(runs)} run(s) at http://{HOST}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("spd-app: stopped", file=sys.stderr, flush=True)
    finally:
        server.server_close()


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
