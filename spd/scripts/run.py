"""`spd-run`: run registered experiments (and parameter sweeps) on SLURM or here.

    spd-run --list                                           # the registered experiments
    spd-run --experiments tms_5-2,tms_5-2-id                 # one SLURM job array, one GPU per task
    spd-run --experiments tms_5-2 --sweep --n-agents 4       # grid of spd/scripts/sweep_params.yaml
    spd-run --experiments tms_5-2 --dp 2                     # one task, 2 GPUs, torchrun
    spd-run --experiments tms_5-2 --dp 4 --nodes 2           # one task on 2 nodes of 4 GPUs each
    spd-run --experiments tms_5-2 --local --cpu --override steps=2000
    spd-run --config my_run.yaml [--config other.yaml] --local   # your own config file(s)
    spd-run --experiments tms_5-2 --local --dry-run          # checks, configs, memory; runs nothing

Every run's config is validated before anything is submitted. On SLURM, the tasks run from a git
snapshot of the working tree (branch spd-snapshot/<launch id>), write their run directories under
<output root>/<launch id>/, and log to $SPD_SLURM_LOG_DIR (default ~/slurm_logs).
    spd-run --resume spd_out/<launch id>/<run dir> --local   # continue a stopped run

Exit codes: 0 every run finished; 75 stopped (SIGTERM/SIGUSR1 are passed on to a local run,
which checkpoints), continue with --resume; 1 a run failed; 2 bad input, nothing launched.

"""

import argparse
from pathlib import Path

from spd.config.environment import check_environment
from spd.errors import OneLineArgumentParser, run_cli
from spd.experiments.registry import describe_experiments
from spd.launch import analysis_job
from spd.launch.options import LaunchOptions
from spd.launch.sweeps import DEFAULT_SWEEP_FILE


def build_parser() -> argparse.ArgumentParser:
    """spd-run's command line; each option becomes the `LaunchOptions` field of its name."""
    parser = OneLineArgumentParser(
        prog="spd-run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_selection_options(parser)
    _add_resource_options(parser)
    _add_output_options(parser)
    analysis_job.add_arguments(parser)
    return parser


def _add_selection_options(parser: argparse.ArgumentParser) -> None:
    """What runs: experiments or config files, and the sweep over them."""
    add = parser.add_argument
    add("--experiments", help="comma-separated names (required unless --config; see --list)")
    add("--list", action="store_true", help="list the registered experiments and exit")
    add(
        "--config",
        type=Path,
        action="append",
        metavar="FILE",
        help="run this YAML config (its task_config.task_name picks the task); repeatable",
    )
    add(
        "--time-minutes",
        type=int,
        help="expected runtime in minutes of each --config run (default 120); the SLURM time "
        "limit adds the same margin as for registered experiments",
    )
    sweep_help = (
        f"sweep over the grid in FILE (default {DEFAULT_SWEEP_FILE.name} beside this script)"
    )
    add("--sweep", nargs="?", type=Path, const=DEFAULT_SWEEP_FILE, metavar="FILE", help=sweep_help)
    add("--n-agents", type=int, help="at most this many SLURM tasks at once (needed with --sweep)")


def _add_resource_options(parser: argparse.ArgumentParser) -> None:
    """Where and on what the runs go: CPU or GPU, processes per run, here or on SLURM."""
    add = parser.add_argument
    add("--cpu", action="store_true", help="run on CPU (no GPU requested on SLURM)")
    add("--dp", type=int, default=1, metavar="N", help="N processes per run under torchrun")
    add(
        "--nodes",
        type=int,
        default=1,
        metavar="N",
        help="on SLURM: N machines per run, each running --dp processes (torchrun on every node "
        "through srun, meeting at a c10d rendezvous on the first node)",
    )
    add("--project", default="spd", help="W&B project (with --use-wandb)")
    add("--local", action="store_true", help="run here, one after another, instead of on SLURM")
    add("--job-suffix", help="appended to the SLURM job name and the launch id")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """What the launch writes and prints, overrides of every run, and resuming a stopped one."""
    add = parser.add_argument
    on_off = argparse.BooleanOptionalAction
    add(
        "--create-report",
        action=on_off,
        help="build a summary page comparing the launch's runs (default: when it has more than "
        "one run, e.g. a sweep)",
    )
    add("--report-title", help="title of that summary page")
    add(
        "--log-format",
        choices=["default", "terse"],
        default="default",
        help="terse: one line per run (local runs log to files in the launch directory) or per job",
    )
    add(
        "--create-snapshot",
        action=on_off,
        help="run from a git snapshot of the working tree (default: on SLURM yes, with --local no)",
    )
    add("--use-wandb", action=on_off, default=False, help="track runs in W&B (default: off)")
    add(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run; repeatable",
    )
    add("--no-progress", action="store_true", help="hide progress bars of local runs")
    dry_help = "check the launch, print each run's config, memory and the SLURM script; run nothing"
    add("--dry-run", action="store_true", help=dry_help)
    add(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the stopped run in RUN_DIR (with --local)",
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, then list the experiments, resume a run, or launch."""
    args = build_parser().parse_args(argv)
    check_environment()
    if args.list:
        print("\n".join(describe_experiments()))
        return
    options = LaunchOptions.from_namespace(args)
    # Imported here: the launcher loads torch, configs and targets; --help and --list stay fast.
    if options.resume is not None:
        from spd.launch.local_runs import resume_stopped_run

        resume_stopped_run(options, options.resume)
    else:
        from spd.launch.launcher import launch

        launch(options)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
