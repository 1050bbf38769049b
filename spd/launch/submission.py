"""A launch on SLURM: its job array, the report job after it and the `--analyze` job.

Each is a `spd.launch.slurm.JobSpec`, written beside the launch's manifest and submitted by
`slurm.submit`; the manifest records every job id as soon as sbatch returns it.
"""

import sys
from pathlib import Path
from typing import Any

from spd.launch import analysis_job, slurm
from spd.launch.options import LaunchOptions
from spd.launch.plan import PlannedRun
from spd.launch.report import write_manifest

ARRAY_SCRIPT = "slurm_array.sh"
REPORT_SCRIPT = "slurm_report.sh"
ANALYSIS_SCRIPT = "slurm_analysis.sh"
REPORT_TIME_MINUTES = 10


def array_job(
    options: LaunchOptions, runs: list[PlannedRun], commands: list[list[str]], tree: Path
) -> slurm.JobSpec:
    """One array task per run, each given --dp CPUs (and as many GPUs unless --cpu) on each of
    its --nodes machines."""
    return slurm.JobSpec(
        name=options.job_name,
        commands=commands,
        time_minutes=slurm.time_limit_minutes([run.source.expected_runtime for run in runs]),
        log_dir=slurm.log_dir(),
        source_tree=tree,
        array=True,
        max_running=options.n_agents,
        preemptible=True,
        cpus_per_task=options.dp,
        gpus_per_task=0 if options.cpu else options.dp,
        nodes=options.nodes,
    )


def report_job(
    array_job_id: str, options: LaunchOptions, launch_dir: Path, tree: Path
) -> slurm.JobSpec:
    """The job that writes the launch's summary page once every array task has ended."""
    command = [sys.executable, "-m", "spd.launch.report", str(launch_dir)]
    command += ["--title", options.report_title] if options.report_title else []
    return slurm.JobSpec(
        name=f"{options.job_name}-report",
        commands=[command],
        time_minutes=REPORT_TIME_MINUTES,
        log_dir=slurm.log_dir(),
        source_tree=tree,
        after=slurm.Dependency("afterany", array_job_id),
    )


def submit_launch(
    options: LaunchOptions,
    runs: list[PlannedRun],
    commands: list[list[str]],
    run_dirs: list[Path],
    tree: Path,
    launch_dir: Path,
    manifest: dict[str, Any],
    report_due: bool,
) -> None:
    """Submit the launch as one job array, then the jobs that wait for it (report, analysis).

    `run_dirs[i]` is the fixed run directory of `commands[i]`, which the analysis job reads.
    """
    job = array_job(options, runs, commands, tree)
    job_id = slurm.submit(job, launch_dir / ARRAY_SCRIPT)
    manifest["slurm"] = {"job_id": job_id, "script": str(launch_dir / ARRAY_SCRIPT)}
    write_manifest(launch_dir, manifest)
    limit = f", at most {options.n_agents} at a time" if options.n_agents else ""
    print(f"spd-run: submitted job array {job_id} ({len(commands)} task(s){limit})")
    if not options.terse:
        print("\n".join(slurm.watch_hints(job_id, job)))
    if report_due:
        report = slurm.submit(
            report_job(job_id, options, launch_dir, tree), launch_dir / REPORT_SCRIPT
        )
        manifest["slurm"]["report_job_id"] = report
        write_manifest(launch_dir, manifest)
        print(f"spd-run: report job {report} writes {launch_dir / 'report.html'} after the array")
    if options.analyze:
        analysis = analysis_job.analysis_job(
            job_id, options.job_name, run_dirs, options.analyze_tokens, tree, options.cpu
        )
        analysis_id = slurm.submit(analysis, launch_dir / ANALYSIS_SCRIPT)
        manifest["slurm"]["analysis_job_id"] = analysis_id
        write_manifest(launch_dir, manifest)
        print(f"spd-run: analysis job {analysis_id} runs spd-analyze on each run after the array")
