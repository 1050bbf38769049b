"""`spd-run`: run registered experiments (and parameter sweeps) on SLURM or here.

    spd-run --list                                           # the registered experiments
    spd-run --experiments tms_5-2,tms_5-2-id                 # one SLURM job array, one GPU per task
    spd-run --experiments tms_5-2 --sweep --n-agents 4       # grid of spd/scripts/sweep_params.yaml
    spd-run --experiments tms_5-2 --dp 2                     # one task, 2 GPUs, torchrun
    spd-run --experiments tms_5-2 --local --cpu --override steps=2000
    spd-run --config my_run.yaml [--config other.yaml] --local   # your own config file(s)

Every run's config is validated before anything is submitted. On SLURM, the tasks run from a git
snapshot of the working tree (branch spd-snapshot/<launch id>), write their run directories under
<output root>/<launch id>/, and log to $SPD_SLURM_LOG_DIR (default ~/slurm_logs).
    spd-run --resume spd_out/<launch id>/<run dir> --local   # continue a stopped run

Exit codes: 0 every run finished; 75 stopped (SIGTERM/SIGUSR1 are passed on to a local run,
which checkpoints), continue with --resume; 1 a run failed; 2 bad input, nothing launched.

"""

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spd.errors import OneLineArgumentParser, SPDUserError, run_cli
from spd.experiments.registry import EXPERIMENT_REGISTRY, describe_experiments, get_experiment
from spd.launch import analysis_job
from spd.launch.arguments import comma_list
from spd.launch.sweeps import DEFAULT_SWEEP_FILE
from spd.loading.run_paths import REPO_ROOT

# The rest of the launcher (configs, torch, the target models) is imported where it is used, so
# that `spd-run --help` and `--list` answer at once.
if TYPE_CHECKING:
    from spd.launch import git_snapshot
    from spd.launch.plan import PlannedRun

SUFFIX_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
MAX_GPUS_ENV = "SPD_MAX_GPUS_PER_NODE"
DEFAULT_MAX_GPUS = 8


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="spd-run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--experiments",
        default=None,
        help="comma-separated names (required unless --config; see --list)",
    )
    add(
        "--list",
        action="store_true",
        help="list the registered experiments (expected runtime, network needs) and exit",
    )
    add(
        "--config",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="run this YAML config (its task_config.task_name picks the task); repeatable",
    )
    add(
        "--time-minutes",
        type=int,
        default=None,
        help="expected runtime in minutes of each --config run (default 120); the SLURM time "
        "limit adds the same margin as for registered experiments",
    )
    add(
        "--sweep",
        nargs="?",
        type=Path,
        const=DEFAULT_SWEEP_FILE,
        default=None,
        metavar="FILE",
        help=f"sweep over the grid in FILE (default {DEFAULT_SWEEP_FILE.name} beside this script)",
    )
    add(
        "--n-agents",
        type=int,
        default=None,
        help="at most this many SLURM tasks at once (needed with --sweep)",
    )
    add("--cpu", action="store_true", help="run on CPU (no GPU requested on SLURM)")
    add(
        "--dp",
        type=int,
        default=1,
        metavar="N",
        help="data parallelism: N processes per run under torchrun",
    )
    add("--project", default="spd", help="W&B project (with --use-wandb)")
    add("--local", action="store_true", help="run here, one after another, instead of on SLURM")
    add("--job-suffix", default=None, help="appended to the SLURM job name and the launch id")
    add(
        "--create-report",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="build a summary page comparing the launch's runs (default: when it has more than "
        "one run, e.g. a sweep)",
    )
    add("--report-title", default=None, help="title of that summary page")
    add(
        "--log-format",
        choices=["default", "terse"],
        default="default",
        help="terse: one line per run (local runs log to files in the launch directory) or per job",
    )
    add(
        "--create-snapshot",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run from a git snapshot of the working tree (default: on SLURM yes, with --local no)",
    )
    add(
        "--use-wandb",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="track runs in W&B (default: off)",
    )
    add(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run; repeatable",
    )
    add("--no-progress", action="store_true", help="hide progress bars of local runs")
    add(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the stopped run in RUN_DIR (with --local)",
    )
    analysis_job.add_arguments(parser)
    return parser


def resume_command(run_dir: Path, overrides: list[str], cpu: bool, no_progress: bool) -> list[str]:
    """The command line that continues the run in `run_dir` with its experiment's script."""
    from spd.config.loading import read_yaml
    from spd.experiments.tasks import get_task
    from spd.launch.run_sources import DECOMPOSE_SCRIPT
    from spd.persistence.resume import check_run_directory
    from spd.persistence.run_dir import CONFIG_FILE

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


def selected_experiments(names: str | None) -> list[str]:
    """The experiments named by --experiments; none named is an error listing the choices."""
    if names is None:
        listing = ", ".join(
            f"{name} (~{spec.expected_runtime} min{', needs the network' * spec.needs_network})"
            for name, spec in EXPERIMENT_REGISTRY.items()
        )
        raise SPDUserError(
            f"choose what to run with --experiments NAME[,NAME…]; registered: {listing}"
        )
    chosen = comma_list(names, "--experiments")
    for name in chosen:
        get_experiment(name)
    return chosen


def check_options(args: argparse.Namespace) -> None:
    """Options that are wrong whatever the configs say."""
    if args.job_suffix is not None and not SUFFIX_PATTERN.fullmatch(args.job_suffix):
        raise SPDUserError(
            f"--job-suffix '{args.job_suffix}' may only use letters, digits, '.', '_' and '-'"
        )
    if args.n_agents is not None and args.n_agents < 1:
        raise SPDUserError(f"--n-agents must be at least 1, got {args.n_agents}")
    if args.sweep is not None and not args.local and args.n_agents is None:
        raise SPDUserError(
            "--n-agents is required with --sweep on SLURM (how many runs may run at once)"
        )
    if args.dp < 1:
        raise SPDUserError(f"--dp must be at least 1, got {args.dp}")
    if args.dp == 1:
        return
    if args.cpu:
        cores = os.cpu_count() or 1
        if args.local and args.dp > cores:
            raise SPDUserError(
                f"--dp {args.dp} --cpu needs {args.dp} processes but this machine has {cores} cores"
            )
    elif args.local:
        import torch

        gpus = torch.cuda.device_count()
        if args.dp > gpus:
            raise SPDUserError(
                f"--dp {args.dp} needs {args.dp} GPUs but this machine has {gpus}; "
                f"add --cpu to run {args.dp} CPU processes (gloo)"
            )
    else:
        limit = int(os.environ.get(MAX_GPUS_ENV) or DEFAULT_MAX_GPUS)
        if args.dp > limit:
            raise SPDUserError(
                f"--dp {args.dp} asks for more GPUs than a node has ({limit}; set {MAX_GPUS_ENV} if yours has more)"
            )


def source_tree(
    launch_id: str, create_snapshot: bool
) -> tuple[Path, "git_snapshot.Snapshot | None"]:
    """The copy of the code the runs use: a fresh snapshot export, or the working tree itself."""
    if not create_snapshot:
        return REPO_ROOT, None
    from spd.launch import git_snapshot

    repo = git_snapshot.repo_root(REPO_ROOT)
    snapshot = git_snapshot.create_snapshot(repo, launch_id)
    export = git_snapshot.export_snapshot(snapshot, git_snapshot.snapshot_base_dir() / launch_id)
    return export / REPO_ROOT.resolve().relative_to(repo.resolve()), snapshot


def run_locally(
    runs: list["PlannedRun"], commands: list[list[str]], tree: Path, log_dir: Path | None, cpu: bool
) -> int:
    """Run one after another and return spd-run's exit code (see `spd.launch.local_runs`).

    SIGTERM/SIGUSR1 go to the running run, which checkpoints and stops; no later run starts.
    With `log_dir` (terse), each run's output goes to a file there.
    """
    from spd.launch.local_runs import SignalForwarder, outcome_of, report_outcomes, resume_hint
    from spd.launch.report import find_run_dir

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


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.list:
        print("\n".join(describe_experiments()))
    elif args.resume is not None:
        resume(args)
    else:
        launch(args)


def launch(args: argparse.Namespace) -> None:
    """Validate every run of the launch, then run them here or submit them to SLURM."""
    from spd.launch import slurm
    from spd.launch.commands import run_command
    from spd.launch.report import write_manifest

    runs, launch_id = plan_launch(args)
    if not args.local:
        slurm.require_sbatch(len(runs))
    # Everything is valid: from here on the launch has effects (snapshot, files, jobs).
    create_snapshot = not args.local if args.create_snapshot is None else args.create_snapshot
    tree, snapshot = source_tree(launch_id, create_snapshot)
    no_progress = args.no_progress or not args.local or args.log_format == "terse"
    # On SLURM each run gets a fixed directory, so a requeued task continues it by itself.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dirs = (
        [None] * len(runs) if args.local else [run.out_dir / f"{stamp}-{run.name}" for run in runs]
    )
    commands = [
        run_command(run, REPO_ROOT, tree, args.dp, no_progress, run_dir=run_dir)
        for run, run_dir in zip(runs, run_dirs, strict=True)
    ]
    launch_dir = runs[0].out_dir
    manifest = launch_manifest(launch_id, tree, snapshot, args.report_title, runs, commands)
    write_manifest(launch_dir, manifest)
    if args.log_format != "terse":
        print(f"spd-run: launch {launch_id}: {len(runs)} run(s); outputs under {launch_dir}")
        if snapshot is not None:
            print(f"  code: {snapshot.branch} ({snapshot.commit[:10]}), checked out in {tree}")
        for i, run in enumerate(runs):
            print(f"  [{i}] {run.name}")
    # A launch of several runs (several experiments, or a sweep) is there to compare them.
    report_due = args.create_report if args.create_report is not None else len(runs) > 1
    if args.local:
        run_launch_here(args, runs, commands, tree, launch_dir, report_due)
        return
    submit(args, runs, commands, tree, launch_dir, manifest, report_due)
    if args.analyze:
        analysis = analysis_job.submit_analysis(
            manifest["slurm"]["job_id"],
            f"spd-{args.job_suffix}" if args.job_suffix else "spd",
            [run_dir for run_dir in run_dirs if run_dir is not None],
            args.analyze_tokens,
            tree,
            args.cpu,
        )
        manifest["slurm"]["analysis_job_id"] = analysis
        write_manifest(launch_dir, manifest)
        print(f"spd-run: analysis job {analysis} runs spd-analyze on each run after the array")


def plan_launch(args: argparse.Namespace) -> tuple[list["PlannedRun"], str]:
    """The launch's runs (each config validated, sweeps expanded) and its id; nothing is written."""
    from spd.experiments.run_decomposition import parse_override
    from spd.launch.plan import LaunchSettings, new_launch_id, plan_runs
    from spd.launch.run_sources import config_sources, experiment_source
    from spd.launch.sweeps import load_sweep

    if args.config is not None and args.experiments is not None:
        raise SPDUserError("give --experiments or --config, not both")
    if args.time_minutes is not None and args.config is None:
        raise SPDUserError(
            "--time-minutes is for --config runs; experiments use their registry time"
        )
    experiments = (
        config_sources(args.config, args.time_minutes)
        if args.config is not None
        else [experiment_source(n) for n in selected_experiments(args.experiments)]
    )
    check_options(args)
    analysis_job.check_arguments(args)
    names = [source.name for source in experiments]
    sweep = load_sweep(args.sweep, names) if args.sweep is not None else None
    launch_id = new_launch_id(args.job_suffix)
    settings = LaunchSettings(
        launch_id=launch_id,
        cpu=args.cpu,
        dp=args.dp,
        use_wandb=args.use_wandb,
        project=args.project,
    )
    user_overrides: dict[str, Any] = dict(parse_override(o) for o in args.override)
    return plan_runs(experiments, user_overrides, sweep, settings), launch_id


def launch_manifest(
    launch_id: str,
    tree: Path,
    snapshot: "git_snapshot.Snapshot | None",
    report_title: str | None,
    runs: list["PlannedRun"],
    commands: list[list[str]],
) -> dict[str, Any]:
    """What `launch.json` records: the code the runs use and each run's name, place and command."""
    return {
        "launch_id": launch_id,
        "source_tree": str(tree),
        "snapshot": {"branch": snapshot.branch, "commit": snapshot.commit} if snapshot else None,
        "report_title": report_title,
        "runs": [
            {
                "index": i,
                "name": r.name,
                "experiment": r.experiment,
                "out_dir": str(r.out_dir),
                "swept": r.swept,
                "command": c,
            }
            for i, (r, c) in enumerate(zip(runs, commands, strict=True))
        ],
    }


def run_launch_here(
    args: argparse.Namespace,
    runs: list["PlannedRun"],
    commands: list[list[str]],
    tree: Path,
    launch_dir: Path,
    report_due: bool,
) -> None:
    """Run the launch on this machine; the report is written even when a run fails or stops."""
    from spd.launch.report import build_report

    terse = args.log_format == "terse"
    try:
        code = run_locally(runs, commands, tree, launch_dir / "logs" if terse else None, args.cpu)
    finally:
        if report_due:
            print(f"spd-run: report {build_report(launch_dir, args.report_title)}")
    if code != 0:
        raise SystemExit(code)


def resume(args: argparse.Namespace) -> None:
    """Continue one stopped run here; passes the script's exit code on (75: stopped again)."""
    if args.experiments is not None or args.config is not None:
        raise SPDUserError("--resume continues the run it names; drop --experiments / --config")
    if not args.local:
        raise SPDUserError(
            "--resume runs here; add --local (a requeued SLURM task resumes by itself)"
        )
    from spd.launch.local_runs import SignalForwarder, report_outcomes, resume_hint

    cmd = resume_command(args.resume, args.override, args.cpu, args.no_progress)
    print(f"spd-run: resuming {args.resume}", flush=True)
    with SignalForwarder() as forwarder:
        code = forwarder.run(cmd, None, os.environ, None)
    name = args.resume.name
    code = report_outcomes([name], [code], {name: resume_hint(args.resume, args.cpu)})
    if code != 0:
        raise SystemExit(code)


def submit(
    args: argparse.Namespace,
    runs: list["PlannedRun"],
    commands: list[list[str]],
    tree: Path,
    launch_dir: Path,
    manifest: dict[str, Any],
    report_due: bool,
) -> None:
    """Submit the launch as one job array (and its report as a job that waits for it)."""
    from spd.launch import slurm
    from spd.launch.report import write_manifest

    job_name = f"spd-{args.job_suffix}" if args.job_suffix else "spd"
    job = slurm.ArrayJob(
        job_name=job_name,
        commands=commands,
        time_minutes=slurm.time_limit_minutes([r.source.expected_runtime for r in runs]),
        log_dir=slurm.log_dir(),
        workdir=tree,
        pythonpath=tree,
        n_agents=args.n_agents,
        gpus_per_task=0 if args.cpu else args.dp,
        cpus_per_task=args.dp,
    )
    job_id = slurm.submit_array(job, launch_dir / "slurm_array.sh")
    manifest["slurm"] = {"job_id": job_id, "script": str(launch_dir / "slurm_array.sh")}
    limit = f", at most {args.n_agents} at a time" if args.n_agents else ""
    print(f"spd-run: submitted job array {job_id} ({len(commands)} task(s){limit})")
    if args.log_format != "terse":
        print("\n".join(slurm.watch_hints(job_id, job)))
    if report_due:
        report_cmd = [sys.executable, "-m", "spd.launch.report", str(launch_dir)]
        report_cmd += ["--title", args.report_title] if args.report_title else []
        report_job = slurm.submit_after(job_id, f"{job_name}-report", report_cmd, tree, tree)
        manifest["slurm"]["report_job_id"] = report_job
        print(
            f"spd-run: report job {report_job} writes {launch_dir / 'report.html'} after the array"
        )
    write_manifest(launch_dir, manifest)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
