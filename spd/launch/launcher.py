"""A launch from start to end: every run planned and validated, then (only then) the code snapshot,
each run's command line and the manifest, and the runs started here or submitted to SLURM.
"""

import time
from pathlib import Path
from typing import Any

from spd.errors import SPDUserError
from spd.experiments.run_decomposition import parse_override
from spd.launch import analysis_job, git_snapshot, slurm
from spd.launch.commands import run_command
from spd.launch.local_runs import run_launch_here
from spd.launch.options import LaunchOptions, check_options, selected_experiments
from spd.launch.plan import LaunchSettings, PlannedRun, new_launch_id, plan_runs
from spd.launch.report import write_manifest
from spd.launch.run_sources import config_sources, experiment_source
from spd.launch.submission import submit_launch
from spd.launch.sweeps import load_sweep
from spd.loading.run_paths import REPO_ROOT


def launch(options: LaunchOptions) -> None:
    """Validate every run of the launch, then run them here or submit them to SLURM."""
    runs, launch_id = plan_launch(options)
    if options.dry_run:
        from spd.launch.dry_run import show_launch

        show_launch(options, runs, launch_id)
        return
    if not options.local:
        slurm.require_sbatch(len(runs), options.nodes)
    # Everything is valid: from here on the launch has effects (snapshot, files, jobs).
    create_snapshot = (
        not options.local if options.create_snapshot is None else options.create_snapshot
    )
    tree, snapshot = source_tree(launch_id, create_snapshot)
    no_progress = options.no_progress or not options.local or options.terse
    # On SLURM each run gets a fixed directory, so a requeued task continues it by itself.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dirs = [None if options.local else run.out_dir / f"{stamp}-{run.name}" for run in runs]
    commands = [
        run_command(run, REPO_ROOT, tree, options.dp, no_progress, run_dir, options.nodes)
        for run, run_dir in zip(runs, run_dirs, strict=True)
    ]
    launch_dir = runs[0].out_dir
    manifest = launch_manifest(launch_id, tree, snapshot, options.report_title, runs, commands)
    write_manifest(launch_dir, manifest)
    if not options.terse:
        print(f"spd-run: launch {launch_id}: {len(runs)} run(s); outputs under {launch_dir}")
        if snapshot is not None:
            print(f"  code: {snapshot.branch} ({snapshot.commit[:10]}), checked out in {tree}")
        for i, run in enumerate(runs):
            print(f"  [{i}] {run.name}")
    # A launch of several runs (several experiments, or a sweep) is there to compare them.
    report_due = options.create_report if options.create_report is not None else len(runs) > 1
    if options.local:
        run_launch_here(options, runs, commands, tree, launch_dir, report_due)
        return
    fixed_dirs = [run_dir for run_dir in run_dirs if run_dir is not None]
    submit_launch(options, runs, commands, fixed_dirs, tree, launch_dir, manifest, report_due)


def plan_launch(options: LaunchOptions) -> tuple[list[PlannedRun], str]:
    """The launch's runs (each config validated, sweeps expanded) and its id; nothing is written."""
    if options.config is not None and options.experiments is not None:
        raise SPDUserError("give --experiments or --config, not both")
    if options.time_minutes is not None and options.config is None:
        raise SPDUserError(
            "--time-minutes is for --config runs; experiments use their registry time"
        )
    experiments = (
        config_sources(options.config, options.time_minutes)
        if options.config is not None
        else [experiment_source(n) for n in selected_experiments(options.experiments)]
    )
    check_options(options)
    analysis_job.check_arguments(options)
    names = [source.name for source in experiments]
    sweep = load_sweep(options.sweep, names) if options.sweep is not None else None
    launch_id = new_launch_id(options.job_suffix)
    settings = LaunchSettings(
        launch_id=launch_id,
        cpu=options.cpu,
        dp=options.dp,
        nodes=options.nodes,
        use_wandb=options.use_wandb,
        project=options.project,
    )
    user_overrides: dict[str, Any] = dict(parse_override(o) for o in options.override)
    return plan_runs(experiments, user_overrides, sweep, settings), launch_id


def source_tree(launch_id: str, create_snapshot: bool) -> tuple[Path, git_snapshot.Snapshot | None]:
    """The copy of the code the runs use: a fresh snapshot export, or the working tree itself."""
    if not create_snapshot:
        return REPO_ROOT, None
    repo = git_snapshot.repo_root(REPO_ROOT)
    snapshot = git_snapshot.create_snapshot(repo, launch_id)
    export = git_snapshot.export_snapshot(snapshot, git_snapshot.snapshot_base_dir() / launch_id)
    return export / REPO_ROOT.resolve().relative_to(repo.resolve()), snapshot


def launch_manifest(
    launch_id: str,
    tree: Path,
    snapshot: git_snapshot.Snapshot | None,
    report_title: str | None,
    runs: list[PlannedRun],
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
