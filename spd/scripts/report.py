"""`spd-report`: one self-contained HTML page summarising a set of runs.

    spd-report spd_out/20250101-120000-tms spd_out/20250101-121500-tms --out summary.html
    spd-report spd_out/ --out summary.html     # every run directory under spd_out/, at any depth
    spd-report spd_out/<launch id>              # the runs of one launch (e.g. a sweep)

The page shows the final metrics side by side, the config keys that differ between the runs and
each run's latest figures (embedded), and links each run's own report.html.
"""

import argparse
from pathlib import Path

from spd.errors import OneLineArgumentParser, SPDUserError, run_cli
from spd.persistence.atomic_files import atomic_write_text
from spd.persistence.output_guard import check_output_file
from spd.persistence.run_dir import check_writable_directory
from spd.tracking.report import HTML_START, find_run_directories, read_run, render_summary


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="spd-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="run directories, or folders holding run directories",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("summary.html"),
        help="where to write the page (default: %(default)s in the current directory)",
    )
    parser.add_argument("--title", default="SPD runs", help="the page title")
    return parser


def expand_run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories as given, and every run directory below any other folder given (any depth:
    `spd-run` puts runs under `<output root>/<launch id>/`)."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise SPDUserError(f"no such directory: {path}")
        inside = find_run_directories(path)
        if not inside:
            raise SPDUserError(
                f"{path} is not a run directory and holds none (no final_config.yaml or metrics.jsonl)"
            )
        found.extend(inside)
    return list(dict.fromkeys(found))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out: Path = args.out
    if out.is_dir():
        raise SPDUserError(f"--out {out} is a directory; give the path of the HTML file to write")
    check_output_file(out, "--out", HTML_START)
    check_writable_directory(out.parent, "--out's folder")
    runs = [read_run(path) for path in expand_run_dirs(args.run_dirs)]
    atomic_write_text(out, render_summary(runs, out.resolve().parent, title=args.title))
    print(f"spd-report: {len(runs)} run(s) summarised in {out}")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
