"""Running a launch's runs here (`spd-run --local`): one child process at a time, signals passed on;
and continuing a stopped run here (`spd-run --resume RUN_DIR --local`).

A scheduler or a user stopping `spd-run` with SIGTERM (or SIGUSR1) means "stop the run": the
signal goes to the running child, which checkpoints and exits with 75, and no further run starts.
`launcher_exit_code` is the one place that turns the children's exit codes into `spd-run`'s:
0 all finished, 75 stopped but resumable, 1 a run failed.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from types import FrameType
from typing import Literal

from spd.config.loading import read_yaml
from spd.errors import SPDUserError
from spd.experiments.tasks import get_task
from spd.launch.options import LaunchOptions
from spd.launch.plan import PlannedRun
from spd.launch.report import build_report, find_run_dir
from spd.launch.run_sources import DECOMPOSE_SCRIPT
from spd.persistence.preemption import PREEMPTED_EXIT_CODE, PREEMPTION_SIGNALS, StopOnSignal
from spd.persistence.resume import check_run_directory
from spd.persistence.run_dir import CONFIG_FILE

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


def run_locally(
    runs: list[PlannedRun], commands: list[list[str]], tree: Path, log_dir: Path | None, cpu: bool
) -> int:
    """Run one after another and return spd-run's exit code (see `launcher_exit_code`).

    SIGTERM/SIGUSR1 go to the running run, which checkpoints and stops; no later run starts.
    With `log_dir` (terse), each run's output goes to a file there.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
    }
    env.pop("SPD_OUT_DIR", None)  # each run's out_dir is on its command line
    codes: list[int | None] = [None] * len(runs)
    with SignalForwarder() as forwarder:
        for index, (run, command) in enumerate(zip(runs, commands, strict=True)):
            if forwarder.received is not None:
                break
            log = None
            if log_dir is None:
                print(f"spd-run: [{index + 1}/{len(runs)}] {run.name}", flush=True)
            else:
                log_dir.mkdir(parents=True, exist_ok=True)
                log = log_dir / f"{run.name}.log"
            codes[index] = forwarder.run(command, tree, env, log)
            if log is not None:
                print(f"spd-run: {run.name}: {outcome_of(codes[index])} (log {log})", flush=True)
    hints = {
        run.name: resume_hint(find_run_dir(run.out_dir, run.name), cpu)
        for run, code in zip(runs, codes, strict=True)
        if outcome_of(code) == "resumable"
    }
    return report_outcomes([run.name for run in runs], codes, hints)


def run_launch_here(
    options: LaunchOptions,
    runs: list[PlannedRun],
    commands: list[list[str]],
    tree: Path,
    launch_dir: Path,
    report_due: bool,
) -> None:
    """Run the launch on this machine; the report is written even when a run fails or stops."""
    try:
        logs = launch_dir / "logs" if options.terse else None
        code = run_locally(runs, commands, tree, logs, options.cpu)
    finally:
        if report_due:
            print(f"spd-run: report {build_report(launch_dir, options.report_title)}")
    if code != 0:
        raise SystemExit(code)


def resume_command(run_dir: Path, overrides: list[str], cpu: bool, no_progress: bool) -> list[str]:
    """The command line that continues the run in `run_dir` with its experiment's script."""
    check_run_directory(run_dir)
    task_config = read_yaml(run_dir / CONFIG_FILE).get("task_config")
    task = task_config.get("task_name") if isinstance(task_config, dict) else None
    if not isinstance(task, str):
        raise SPDUserError(f"cannot resume {run_dir}: its config names no task_config.task_name")
    get_task(task)
    cmd = [sys.executable, str(DECOMPOSE_SCRIPT), "--resume", str(run_dir)]
    for override in overrides:
        cmd += ["--override", override]
    if cpu:
        cmd += ["--override", "device=cpu"]
    if no_progress:
        cmd.append("--no-progress")
    return cmd


def resume_stopped_run(options: LaunchOptions, run_dir: Path) -> None:
    """Continue one stopped run here; passes the script's exit code on (75: stopped again)."""
    if options.experiments is not None or options.config is not None:
        raise SPDUserError("--resume continues the run it names; drop --experiments / --config")
    if not options.local:
        raise SPDUserError(
            "--resume runs here; add --local (a requeued SLURM task resumes by itself)"
        )
    if options.nodes != 1:
        raise SPDUserError("--resume continues a run on this machine alone; drop --nodes")
    cmd = resume_command(run_dir, options.override, options.cpu, options.no_progress)
    print(f"spd-run: resuming {run_dir}", flush=True)
    with SignalForwarder() as forwarder:
        code = forwarder.run(cmd, None, os.environ, None)
    name = run_dir.name
    code = report_outcomes([name], [code], {name: resume_hint(run_dir, options.cpu)})
    if code != 0:
        raise SystemExit(code)
