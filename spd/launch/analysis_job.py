"""`spd-run --analyze`: a SLURM job that runs `spd-analyze` and `spd-browse` on every run of a launch
once the whole job array has succeeded (`sbatch --dependency=afterok:<array id>`).

The job runs the launch's own code (the snapshot's checkout), one run after another, each with
`python -m spd.analysis.cli RUN_DIR --tokens N --browse`; a run's pass saves its state as it goes,
so a requeued or resubmitted job continues where it stopped.
"""

import argparse
import shlex
import sys
from pathlib import Path

from spd.errors import SPDUserError

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
        type=int,
        default=DEFAULT_TOKENS,
        metavar="N",
        help=f"tokens each analysis streams (default {DEFAULT_TOKENS})",
    )


def check_arguments(args: argparse.Namespace) -> None:
    if args.analyze and args.local:
        raise SPDUserError(
            "--analyze submits a SLURM job after the array; with --local run "
            "`spd-analyze RUN_DIR --browse` on the run directory afterwards"
        )
    if args.analyze_tokens < 1:
        raise SPDUserError(f"--analyze-tokens must be at least 1, got {args.analyze_tokens}")


def analysis_script(run_dirs: list[Path], n_tokens: int, cpu: bool) -> str:
    """The shell commands of the job: every run analysed, the job failing if any analysis fails."""
    device = ["--device", "cpu"] if cpu else []
    lines = ["status=0"]
    for run_dir in run_dirs:
        cmd = [sys.executable, "-m", "spd.analysis.cli", str(run_dir), "--tokens", str(n_tokens)]
        lines.append(f"{shlex.join([*cmd, *device, '--no-progress', '--browse'])} || status=1")
    lines.append("exit $status")
    return "\n".join(lines)


def submit_analysis(
    array_job_id: str,
    job_name: str,
    run_dirs: list[Path],
    n_tokens: int,
    tree: Path,
    cpu: bool,
) -> str:
    """Submit the analysis job, held until every task of `array_job_id` has succeeded."""
    # Here, not at the top: spd-run imports this module for its options, and --help stays light.
    from spd.launch import slurm

    wrapped = (
        f'export PYTHONPATH={shlex.quote(str(tree))}"${{PYTHONPATH:+:$PYTHONPATH}}"; unset SPD_OUT_DIR\n'
        + analysis_script(run_dirs, n_tokens, cpu)
    )
    args = [
        f"--dependency=afterok:{array_job_id}",
        f"--job-name={job_name}-analysis",
        "--ntasks=1",
        f"--time={TIME_LIMIT_MINUTES}",
        f"--output={slurm.log_dir()}/slurm-%j.out",
        f"--chdir={tree}",
        f"--wrap={wrapped}",
    ]
    if not cpu:
        args.insert(-1, "--gres=gpu:1")
    return slurm.sbatch(args)
