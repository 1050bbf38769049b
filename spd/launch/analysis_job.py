"""`spd-run --analyze`: a SLURM job that runs `spd-analyze` and `spd-browse` on every run of a launch
once the whole job array has succeeded (`sbatch --dependency=afterok:<array id>`).

The job runs the launch's own code (the snapshot's checkout), one run after another, each with
`python -m spd.analysis.cli RUN_DIR --tokens N --browse`; a run's pass saves its state as it goes,
so a requeued or resubmitted job continues where it stopped.
"""

import argparse
import sys
from pathlib import Path

from spd.config.option_types import positive_int
from spd.errors import SPDUserError
from spd.launch.options import LaunchOptions
from spd.launch.slurm import Dependency, JobSpec, log_dir

DEFAULT_TOKENS = 100_000
TIME_LIMIT_MINUTES = 120


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--analyze` options of spd-run."""
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="after the job array succeeds, run spd-analyze and spd-browse on every run "
        "(a dependent SLURM job)",
    )
    parser.add_argument(
        "--analyze-tokens",
        type=positive_int,
        default=DEFAULT_TOKENS,
        metavar="N",
        help=f"tokens each analysis streams (default {DEFAULT_TOKENS})",
    )


def check_arguments(options: LaunchOptions) -> None:
    """The `--analyze` options must fit the rest of the command line."""
    if options.analyze and options.local:
        raise SPDUserError(
            "--analyze submits a SLURM job after the array; with --local run "
            "`spd-analyze RUN_DIR --browse` on the run directory afterwards"
        )


def analysis_commands(run_dirs: list[Path], n_tokens: int, cpu: bool) -> list[list[str]]:
    """One `spd.analysis.cli … --browse` command line per run directory."""
    options = ["--tokens", str(n_tokens), *(["--device", "cpu"] if cpu else [])]
    return [
        [
            sys.executable,
            "-m",
            "spd.analysis.cli",
            str(run_dir),
            *options,
            "--no-progress",
            "--browse",
        ]
        for run_dir in run_dirs
    ]


def analysis_job(
    array_job_id: str, array_name: str, run_dirs: list[Path], n_tokens: int, tree: Path, cpu: bool
) -> JobSpec:
    """The analysis job of a launch: held until every task of `array_job_id` has succeeded, then
    every run analysed in turn, the job failing if any analysis fails."""
    return JobSpec(
        name=f"{array_name}-analysis",
        commands=analysis_commands(run_dirs, n_tokens, cpu),
        time_minutes=TIME_LIMIT_MINUTES,
        log_dir=log_dir(),
        source_tree=tree,
        gpus_per_task=0 if cpu else 1,
        after=Dependency("afterok", array_job_id),
    )
