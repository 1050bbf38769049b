"""The generated SLURM array script: its directives, and its task selection run by bash."""

import dataclasses
import subprocess
from pathlib import Path

from spd.launch.slurm import JobSpec, job_script, time_limit_minutes


def make_job(tmp_path: Path, **changes: object) -> JobSpec:
    job = JobSpec(
        name="spd-nightly",
        commands=[["echo", "zero"], ["echo", "one two", "it's"], ["sh", "-c", "exit 3"]],
        time_minutes=30,
        log_dir=tmp_path / "logs",
        source_tree=tmp_path / "snapshot dir",
        array=True,
        max_running=2,
        preemptible=True,
        gpus_per_task=1,
        cpus_per_task=1,
    )
    return dataclasses.replace(job, **changes)  # pyright: ignore[reportArgumentType]


def test_directives(tmp_path: Path) -> None:
    script = job_script(make_job(tmp_path))
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=spd-nightly",
        "#SBATCH --array=0-2%2",
        "#SBATCH --time=30",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=1",
        f"#SBATCH --output={tmp_path}/logs/slurm-%A_%a.out",
        # Preemption: a warning signal 180 s ahead, the log kept across requeues.
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@180",
        "#SBATCH --gres=gpu:1",
    ]
    assert script.startswith("#!/bin/bash\n")
    assert "unset SPD_OUT_DIR" in script


def test_cpu_and_data_parallel_resources(tmp_path: Path) -> None:
    cpu = job_script(make_job(tmp_path, gpus_per_task=0, max_running=None))
    assert "--gres" not in cpu
    assert "#SBATCH --array=0-2\n" in cpu
    dp = job_script(make_job(tmp_path, gpus_per_task=4, cpus_per_task=4))
    assert "#SBATCH --gres=gpu:4" in dp and "#SBATCH --cpus-per-task=4" in dp


def run_task(script: Path, task: int) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": "77"}
    return subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, check=False
    )


def test_each_task_runs_its_own_command(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    job.source_tree.mkdir()
    script = tmp_path / "array.sh"
    script.write_text(job_script(job))
    first, second, failing, unknown = (run_task(script, i) for i in (0, 1, 2, 9))
    assert first.returncode == 0 and "zero" in first.stdout and "one two" not in first.stdout
    assert second.returncode == 0 and "one two it's" in second.stdout
    assert (
        "task 1 of job 77 started" in second.stdout
        and "task 1 ended with status 0" in second.stdout
    )
    assert failing.returncode == 3 and "task 2 ended with status 3" in failing.stdout
    assert unknown.returncode == 2 and "no command for array task 9" in unknown.stderr


def test_time_limit_follows_the_longest_expected_runtime() -> None:
    assert time_limit_minutes([10, 15]) == 30
    assert time_limit_minutes([60]) == 120
