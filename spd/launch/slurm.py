"""SLURM job arrays: one array per launch, each task picking its command by SLURM_ARRAY_TASK_ID."""

import math
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from spd.errors import SPDUserError
from spd.persistence.preemption import PREEMPTED_EXIT_CODE

LOG_DIR_ENV = "SPD_SLURM_LOG_DIR"
DEFAULT_LOG_DIR = "~/slurm_logs"
# The registry's expected runtime is an estimate; the limit leaves room for slower nodes.
TIME_LIMIT_FACTOR = 2.0
# SLURM warns the task this many seconds before its time limit (or on preemption) with SIGUSR1;
# the run checkpoints, exits with PREEMPTED_EXIT_CODE, and the task requeues itself.
SIGNAL_GRACE_SECONDS = 180


@dataclass(frozen=True)
class ArrayJob:
    """Everything the array script says: resources, where tasks run, one command per task."""

    job_name: str
    commands: list[list[str]]
    time_minutes: int
    log_dir: Path
    workdir: Path
    pythonpath: Path
    n_agents: int | None = None
    gpus_per_task: int = 1
    cpus_per_task: int = 1


def log_dir() -> Path:
    """$SPD_SLURM_LOG_DIR, else ~/slurm_logs."""
    return Path(os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR).expanduser().resolve()


def time_limit_minutes(expected_runtimes: list[int]) -> int:
    """The array's time limit: the longest expected runtime of its experiments, with a margin."""
    return max(1, math.ceil(max(expected_runtimes) * TIME_LIMIT_FACTOR))


def array_script(job: ArrayJob) -> str:
    """The sbatch script of a job array (`%N` limits how many tasks run at once)."""
    last = len(job.commands) - 1
    concurrency = f"%{job.n_agents}" if job.n_agents is not None else ""
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job.job_name}",
        f"#SBATCH --array=0-{last}{concurrency}",
        f"#SBATCH --time={job.time_minutes}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={job.cpus_per_task}",
        f"#SBATCH --output={job.log_dir}/slurm-%A_%a.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{SIGNAL_GRACE_SECONDS}",
    ]
    if job.gpus_per_task > 0:
        lines.append(f"#SBATCH --gres=gpu:{job.gpus_per_task}")
    lines += [
        "set -uo pipefail",
        "# Run the launch's code (a snapshot, unless disabled), not whatever is installed.",
        f"cd {shlex.quote(str(job.workdir))}",
        f'export PYTHONPATH={shlex.quote(str(job.pythonpath))}"${{PYTHONPATH:+:$PYTHONPATH}}"',
        "# Each run's out_dir is set on its command line; SPD_OUT_DIR would take precedence over it.",
        "unset SPD_OUT_DIR",
        'echo "spd-run: task ${SLURM_ARRAY_TASK_ID} of job ${SLURM_ARRAY_JOB_ID} started on'
        ' $(hostname) at $(date +%Y-%m-%dT%H:%M:%S.%3N%:z)"',
        'case "${SLURM_ARRAY_TASK_ID}" in',
    ]
    for index, command in enumerate(job.commands):
        lines.append(f"  {index}) cmd=({shlex.join(command)}) ;;")
    lines += [
        '  *) echo "spd-run: no command for array task ${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;',
        "esac",
        "# The run in the background, so that the warning signal reaches it through this shell.",
        '"${cmd[@]}" &',
        "child=$!",
        """trap 'kill -USR1 "${child}" 2>/dev/null' USR1 TERM""",
        'wait "${child}"',
        "status=$?",
        "# A trapped signal interrupts `wait`; wait again for the run's own exit status.",
        'while kill -0 "${child}" 2>/dev/null; do wait "${child}"; status=$?; done',
        f'if [ "${{status}}" -eq {PREEMPTED_EXIT_CODE} ]; then',
        '  echo "spd-run: task ${SLURM_ARRAY_TASK_ID} checkpointed on a signal; requeueing it"',
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        "fi",
        'echo "spd-run: task ${SLURM_ARRAY_TASK_ID} ended with status ${status} at'
        ' $(date +%Y-%m-%dT%H:%M:%S.%3N%:z)"',
        'exit "${status}"',
    ]
    return "\n".join(lines) + "\n"


def require_sbatch(n_runs: int) -> None:
    """Fail clearly, before anything else happens, when there is no SLURM here."""
    if shutil.which("sbatch") is None:
        raise SPDUserError(
            "sbatch was not found, so nothing can be submitted to SLURM; add --local to run "
            f"the {n_runs} run(s) here one after another"
        )


def sbatch(args: list[str]) -> str:
    """Run sbatch --parsable and return the job id it prints."""
    result = subprocess.run(
        ["sbatch", "--parsable", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SPDUserError(
            f"sbatch refused the job: {result.stderr.strip() or result.stdout.strip()}"
        )
    # --parsable prints "<job id>[;<cluster>]".
    return result.stdout.strip().split(";")[0]


def submit_array(job: ArrayJob, script_path: Path) -> str:
    """Write the array script and submit it; returns the array's job id."""
    job.log_dir.mkdir(parents=True, exist_ok=True)  # SLURM does not create it
    script_path.write_text(array_script(job))
    return sbatch([str(script_path)])


def submit_after(
    job_id: str, job_name: str, command: list[str], workdir: Path, pythonpath: Path
) -> str:
    """Submit a one-CPU job that runs `command` once every task of `job_id` has ended."""
    wrapped = f'export PYTHONPATH={shlex.quote(str(pythonpath))}"${{PYTHONPATH:+:$PYTHONPATH}}"; {shlex.join(command)}'
    return sbatch(
        [
            f"--dependency=afterany:{job_id}",
            f"--job-name={job_name}",
            "--ntasks=1",
            "--time=10",
            f"--output={log_dir()}/slurm-%j.out",
            f"--chdir={workdir}",
            f"--wrap={wrapped}",
        ]
    )


def watch_hints(job_id: str, job: ArrayJob) -> list[str]:
    """What to run to follow or stop the array."""
    return [
        f"  watch:  squeue -j {job_id}",
        f"  cancel: scancel {job_id}",
        f"  logs:   {job.log_dir}/slurm-{job_id}_<task>.out",
    ]
