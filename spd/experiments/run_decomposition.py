"""What every experiment's decomposition script shares: arguments, run directory, summary.

An experiment script supplies its data streams and its summary lines; this module loads the
config, builds the target, creates the run directory, calls `optimize()` and prints where the
results are.

    script.py CONFIG [--override k=v]...      a new run in a new timestamped directory
    script.py --resume RUN_DIR [--override steps=N]   continue a run from its newest checkpoint
    script.py CONFIG --run-dir DIR            a run in DIR, continued if DIR already holds one

Exit codes: 0 finished; 2 a user error or a non-finite loss (one line on stderr); 75 stopped on
SIGTERM/SIGUSR1 after checkpointing (`spd.persistence.preemption`); 130 interrupted.
"""

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from spd.config.bounded_yaml import load_bounded
from spd.config.device import resolve_device
from spd.config.environment import check_environment
from spd.config.schema import Config
from spd.errors import OneLineArgumentParser, SPDUserError
from spd.loading.run_config import load_run_config
from spd.loading.targets import load_target_model
from spd.models.tie_check import check_decomposition
from spd.persistence.atomic_files import atomic_write_text
from spd.persistence.checkpoint_check import newest_good_checkpoint
from spd.persistence.checkpoints import CHECKPOINT_GLOB
from spd.persistence.preemption import StopOnSignal, exit_preempted
from spd.persistence.resume import ResumePoint, check_run_directory, find_resume_point
from spd.persistence.run_dir import (
    CONFIG_FILE,
    RunDirectory,
    check_writable_directory,
    output_root,
)
from spd.persistence.run_lock import DirectoryLock, lock_run_directory
from spd.tracking.report import write_run_report
from spd.tracking.wandb_sink import wandb_tracking
from spd.train import distributed
from spd.train.data_shard import DataShard, data_shard
from spd.train.memory_estimate import check_memory, estimate_peak_memory
from spd.train.optimize import OptimizeResult, optimize
from spd.train.setup import term_states

# (config, target, device, this rank's share) -> (train micro-batches, eval batches) of the shard's sizes.
DataFactory = Callable[
    [Config, nn.Module, torch.device, DataShard], tuple[Iterator[Tensor], Iterator[Tensor]]
]
SummaryFn = Callable[[OptimizeResult], dict[str, float]]


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SPDUserError(f"--override '{text}' must look like key.path=value")
    try:
        return key, load_bounded(value)
    except yaml.YAMLError:
        raise SPDUserError(f"--override '{text}': the value is not valid YAML") from None


_HELP_EPILOG = """\
usage patterns:
  %(prog)s CONFIG [--override KEY=VALUE]...
      a new run in a new timestamped directory
  %(prog)s --resume RUN_DIR [--override steps=N]
      continue a run from its newest checkpoint
  %(prog)s CONFIG --run-dir DIR
      a run in DIR, continued if DIR holds one

exit codes: 0 finished; 2 bad input or a non-finite loss (one line on stderr); 75 stopped on
SIGTERM/SIGUSR1 after checkpointing (continue with --resume); 130 interrupted.
"""


def parse_args(description: str) -> tuple[Config, argparse.Namespace]:
    """The config and options of a decomposition script (`args.resume`, `args.run_dir` included).

    `--run-dir DIR` holding a run with a checkpoint becomes `--resume DIR`, so one command line
    both starts a run and continues it after a preemption.
    """
    parser = OneLineArgumentParser(
        description=description,
        epilog=_HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the examples on their lines
    )
    parser.add_argument(
        "config", type=Path, nargs="?", help="YAML config file (with --resume: the run's own)"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a (dotted) config key; repeatable",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="make every check of the run, print its config and memory estimate; write nothing",
    )
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR"
    )
    parser.add_argument(
        "--run-dir", type=Path, metavar="DIR", help="run in DIR; continue the run it holds, if any"
    )
    args = parser.parse_args()
    if args.resume is not None and args.run_dir is not None:
        raise SPDUserError("give either --resume or --run-dir, not both")
    if args.run_dir is not None and any((args.run_dir / "checkpoints").glob(CHECKPOINT_GLOB)):
        args.resume, args.run_dir = args.run_dir, None
    if args.resume is not None:
        check_run_directory(args.resume)
    config_path = args.config or (args.resume / CONFIG_FILE if args.resume is not None else None)
    if config_path is None:
        raise SPDUserError("give a config file, or --resume RUN_DIR to continue a run")
    overrides = dict(parse_override(o) for o in args.override)
    return load_run_config(config_path, overrides), args


@dataclass
class DecompositionRun:
    run_dir: RunDirectory | None  # None on data-parallel ranks other than 0
    result: OptimizeResult
    summary: dict[str, float]

    @property
    def path(self) -> Path:
        """The run directory's path (rank 0, or a single-process run)."""
        assert self.run_dir is not None, "only rank 0 has a run directory"
        return self.run_dir.path


def _fresh_run_dir(
    config: Config, experiment: str, path: Path | None
) -> tuple[RunDirectory, DirectoryLock]:
    """A new timestamped run directory, or `path` (restarting a run that never checkpointed),
    with its lock held."""
    if path is None:
        run_dir = RunDirectory.create(output_root(config.out_dir), config.run_name or experiment)
        return run_dir, lock_run_directory(run_dir.path)
    occupied = path.exists() and (not path.is_dir() or any(path.iterdir()))
    if occupied and not (path / CONFIG_FILE).is_file():
        raise SPDUserError(f"--run-dir {path} is neither an empty directory nor an spd run")
    path.mkdir(parents=True, exist_ok=True)
    lock = lock_run_directory(path)
    run_dir = RunDirectory(path)
    run_dir.discard_metrics_from(0)
    return run_dir, lock


def _checkpoint_note(run_dir: RunDirectory) -> str:
    try:
        checkpoint, _ = newest_good_checkpoint(run_dir.path, training_state=True)
        return f"last good checkpoint kept: {checkpoint}; continue with --resume {run_dir.path}"
    except SPDUserError:
        return "no checkpoint had been written"


@dataclass
class _PreparedRun:
    """What a run needs before its first step, every input already checked."""

    device: torch.device
    target: nn.Module
    train_batches: Iterator[Tensor]
    eval_batches: Iterator[Tensor]
    point: ResumePoint | None
    run_dir: RunDirectory | None  # None on data-parallel ranks other than 0
    lock: DirectoryLock | None  # the run directory's, held by rank 0 until the run ends


def run_decomposition(
    config: Config,
    experiment: str,
    make_data: DataFactory,
    summarize: SummaryFn,
    show_progress: bool = True,
    resume: Path | None = None,
    run_dir_path: Path | None = None,
) -> DecompositionRun:
    """Build the target, decompose it into a run directory, print and save a summary.

    `resume` continues the run in that directory; `run_dir_path` starts one there instead of in a
    new timestamped directory. On SIGTERM/SIGUSR1 the run checkpoints and exits with code 75.
    The run is tracked on W&B when the config sets `wandb_project` (see spd/tracking/wandb_sink.py);
    either way the run directory gets a report.html at the end (also after a failure).
    Under `torchrun` every rank trains (see `spd.train.distributed`); only rank 0 writes the run directory.
    """
    check_environment()
    with StopOnSignal() as stop:
        # --- data parallelism: the rank's GPU and process group; only rank 0 reports.
        device = distributed.device_for_rank(resolve_device(config.device))
        distributed.setup(device)
        # --- end data parallelism
        run = _prepare(config, experiment, make_data, device, resume, run_dir_path)
        try:
            result, summary = _train(run, config, experiment, summarize, show_progress, stop)
        finally:
            distributed.teardown()
            if run.lock is not None:
                run.lock.release()
    run_dir = run.run_dir
    if result.stopped_at is not None:
        reason = stop.received.name if stop.received is not None else "request"
        where = f"--resume {run_dir.path}" if run_dir is not None else "--resume"
        exit_preempted(
            f"stopped on {reason} at step {result.stopped_at} of {config.steps}, checkpointed; continue with {where}"
        )
    if run_dir is not None:
        print(f"spd: {experiment} finished (report.html inside); results in {run_dir.path}")
        for key, value in summary.items():
            print(f"  {key}: {value:.4f}")
    return DecompositionRun(run_dir=run_dir, result=result, summary=summary)


def _prepare(
    config: Config,
    experiment: str,
    make_data: DataFactory,
    device: torch.device,
    resume: Path | None,
    run_dir_path: Path | None,
) -> _PreparedRun:
    """Target, data, resume point and (rank 0) run directory, in an order that checks every input
    before the first write into a run directory."""
    is_main = distributed.is_main_process()
    # Each rank's share of the batches, once for every task; a batch that does not split fails here.
    shard = data_shard(config)
    # A stateful loss term's settings that do not fit this rank's batch fail here (e.g. persistent
    # PGD's N sources that do not divide it); the states themselves are built by set-up.
    term_states(config)
    if is_main and resume is None:
        # A wrong output root fails before the target is even loaded.
        if run_dir_path is None:
            check_writable_directory(output_root(config.out_dir), "output root")
        else:
            check_writable_directory(run_dir_path, "--run-dir")
    target = load_target_model(config).to(device)
    # Fail on bad patterns, C or ties before a run directory exists for a run that cannot start.
    check_decomposition(target, config)
    train_batches, eval_batches = make_data(config, target, device, shard)
    # A second writer on the same run is refused before it reads or writes anything there.
    lock = lock_run_directory(resume) if is_main and resume is not None else None
    point = find_resume_point(resume, config) if resume is not None else None
    # A batch that cannot fit fails here, with the estimate, not as a traceback mid-step.
    check_memory(estimate_peak_memory(config, target, device), device, announce=is_main)
    run_dir: RunDirectory | None = None
    if is_main:
        if point is not None:
            run_dir = point.run_dir
        else:
            run_dir, lock = _fresh_run_dir(config, experiment, run_dir_path)
        run_dir.write_config(config)
    return _PreparedRun(device, target, train_batches, eval_batches, point, run_dir, lock)


def _train(
    run: _PreparedRun,
    config: Config,
    experiment: str,
    summarize: SummaryFn,
    show_progress: bool,
    stop: StopOnSignal,
) -> tuple[OptimizeResult, dict[str, float]]:
    """`optimize()` with tracking, then (rank 0, finished runs) the summary and the report.

    The report is written after a failure too; a non-finite loss or a user error mid-run ends as
    one line that says where to go on from.
    """
    run_dir, point = run.run_dir, run.point
    tracking = (
        wandb_tracking(config, run_dir, config.run_name or experiment)
        if run_dir is not None
        else nullcontext(())
    )
    summary: dict[str, float] = {}
    with tracking as sinks:
        if run_dir is not None:
            print(f"spd: {experiment} on {run.device}; results in {run_dir.path}", flush=True)
            if point is not None:
                print(f"spd: resuming at step {point.step} of {config.steps}", flush=True)
        try:
            result = optimize(
                run.target,
                config,
                run.device,
                run.train_batches,
                run.eval_batches,
                run_dir=run_dir,
                sinks=sinks,
                show_progress=show_progress,
                resume_from=point.checkpoint if point is not None else None,
                should_stop=stop,
            )
            if run_dir is not None and result.stopped_at is None:
                summary = summarize(result)
                atomic_write_text(
                    run_dir.path / "summary.json", json.dumps(summary, indent=2) + "\n"
                )
                for sink in (run_dir, *sinks):
                    sink.log_metrics(config.steps, {f"final/{k}": v for k, v in summary.items()})
        except (FloatingPointError, SPDUserError) as err:
            # A non-finite loss, or e.g. a disk that filled up mid-run: the report is attempted,
            # but the line the user sees is this error and where to go on from.
            if run_dir is None:
                raise SPDUserError(str(err)) from None
            with suppress(SPDUserError):
                write_run_report(run_dir.path)
            raise SPDUserError(f"{err}; {_checkpoint_note(run_dir)}") from None
        except BaseException:
            if run_dir is not None:
                with suppress(SPDUserError):
                    write_run_report(run_dir.path)
            raise
        if run_dir is not None:
            write_run_report(run_dir.path)
    return result, summary
