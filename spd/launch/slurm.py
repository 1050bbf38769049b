"""SLURM jobs: one description (`JobSpec`), one renderer (`job_script`), one submitter (`submit`).

Every job spd-run submits is a `JobSpec`: the launch's job array (each task picking its command by
SLURM_ARRAY_TASK_ID), the report job after it and the `--analyze` job. `job_script` turns a spec
into an sbatch script, with the directives and the preamble every job shares (run the launch's
code, not whatever is installed); `submit` writes that script and hands it to sbatch. To change
how spd-run's jobs are written, edit this module.
"""

import math
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from spd.errors import SPDUserError
from spd.persistence.preemption import PREEMPTED_EXIT_CODE

LOG_DIR_ENV = "SPD_SLURM_LOG_DIR"
DEFAULT_LOG_DIR = "~/slurm_logs"
# The registry's expected runtime is an estimate; the limit leaves room for slower nodes.
TIME_LIMIT_FACTOR = 2.0
# SLURM warns the task this many seconds before its time limit (or on preemption) with SIGUSR1;
# the run checkpoints, exits with PREEMPTED_EXIT_CODE, and the task requeues itself.
SIGNAL_GRACE_SECONDS = 180
_TIMESTAMP = "$(date +%Y-%m-%dT%H:%M:%S.%3N%:z)"
# A run on several nodes: torchrun's rendezvous backend, and the range its port is taken from
# (by job id, so that two jobs whose first node is the same machine do not clash).
RDZV_BACKEND = "c10d"
RDZV_PORT_BASE = 20000
RDZV_PORT_RANGE = 20000


@dataclass(frozen=True)
class Dependency:
    """Hold a job until another has ended: `afterok` (every task succeeded) or `afterany`."""

    kind: Literal["afterok", "afterany"]
    job_id: str


@dataclass(frozen=True)
class JobSpec:
    """Everything one sbatch script says.

    With `array`, each command is one array task (at most `max_running` at once); otherwise the
    job runs the commands one after another, every one of them, and fails if any failed.
    `preemptible` (array jobs only) asks for the USR1 warning SIGNAL_GRACE_SECONDS before the time
    limit, keeps the log across requeues, and has a task that exits with PREEMPTED_EXIT_CODE
    requeue itself. Every job runs in `source_tree`, with it first on PYTHONPATH.
    With `nodes` > 1 (array jobs only) each task gets that many machines and runs its command
    once on each through `srun` (a torchrun command: `rendezvous_lines` gives it the endpoint);
    `cpus_per_task` and `gpus_per_task` are then per node.
    """

    name: str
    commands: list[list[str]]
    time_minutes: int
    log_dir: Path
    source_tree: Path
    array: bool = False
    max_running: int | None = None
    preemptible: bool = False
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    after: Dependency | None = None
    nodes: int = 1

    def __post_init__(self) -> None:
        assert self.commands, "a job needs at least one command"
        assert self.nodes >= 1 and (self.array or self.nodes == 1), "nodes > 1 is for array jobs"
        assert self.array or (self.max_running is None and not self.preemptible), (
            "max_running and preemptible are properties of array jobs"
        )

    @property
    def log_pattern(self) -> str:
        """Where SLURM writes the log: one file per array task, else one per job."""
        return str(self.log_dir / ("slurm-%A_%a.out" if self.array else "slurm-%j.out"))


def log_dir() -> Path:
    """$SPD_SLURM_LOG_DIR, else ~/slurm_logs."""
    return Path(os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR).expanduser().resolve()


def time_limit_minutes(expected_runtimes: list[int]) -> int:
    """The array's time limit: the longest expected runtime of its experiments, with a margin."""
    return max(1, math.ceil(max(expected_runtimes) * TIME_LIMIT_FACTOR))


def directives(job: JobSpec) -> list[str]:
    """The `#SBATCH` lines of a job (`%N` on the array limits how many tasks run at once)."""
    lines = [f"#SBATCH --job-name={job.name}"]
    if job.array:
        concurrency = f"%{job.max_running}" if job.max_running is not None else ""
        lines.append(f"#SBATCH --array=0-{len(job.commands) - 1}{concurrency}")
    # One task per node: on each, srun starts the one torchrun that starts its processes.
    tasks = ["#SBATCH --ntasks=1"]
    if job.nodes > 1:
        tasks = [f"#SBATCH --nodes={job.nodes}", "#SBATCH --ntasks-per-node=1"]
    lines += [
        f"#SBATCH --time={job.time_minutes}",
        *tasks,
        f"#SBATCH --cpus-per-task={job.cpus_per_task}",
        f"#SBATCH --output={job.log_pattern}",
    ]
    if job.preemptible:
        lines += [
            "#SBATCH --open-mode=append",
            "#SBATCH --requeue",
            f"#SBATCH --signal=B:USR1@{SIGNAL_GRACE_SECONDS}",
        ]
    if job.gpus_per_task > 0:
        lines.append(f"#SBATCH --gres=gpu:{job.gpus_per_task}")
    if job.after is not None:
        lines.append(f"#SBATCH --dependency={job.after.kind}:{job.after.job_id}")
    return lines


def _preamble(job: JobSpec) -> list[str]:
    tree = shlex.quote(str(job.source_tree))
    return [
        "set -uo pipefail",
        "# Run the launch's code (a snapshot, unless disabled), not whatever is installed.",
        f"cd {tree}",
        f'export PYTHONPATH={tree}"${{PYTHONPATH:+:$PYTHONPATH}}"',
        "# Each run's out_dir is set on its command line; SPD_OUT_DIR would take precedence over it.",
        "unset SPD_OUT_DIR",
    ]


def rendezvous_lines(nodes: int, cpus_per_node: int) -> list[str]:
    """Shell lines that run the task's command (`cmd`, a torchrun command) once on each of the
    allocation's `nodes` machines, all meeting at a c10d rendezvous on its first node.

    torchrun reads its --rdzv-endpoint and --rdzv-id from PET_RDZV_ENDPOINT and PET_RDZV_ID, which
    srun passes on to every node with the rest of the environment. The CPUs are given to srun
    again: since SLURM 22.05 a step does not take the job's --cpus-per-task by itself.
    """
    port = f"$(({RDZV_PORT_BASE} + SLURM_JOB_ID % {RDZV_PORT_RANGE}))"
    return [
        f"# {nodes} nodes: one torchrun on each (srun), meeting at a rendezvous on the first node.",
        'rdzv_host=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)',
        f'export PET_RDZV_ENDPOINT="${{rdzv_host}}:{port}"',
        'export PET_RDZV_ID="spd-${SLURM_JOB_ID}"',
        'echo "spd-run: rendezvous of the task\'s nodes at ${PET_RDZV_ENDPOINT}"',
        f"cmd=(srun --nodes={nodes} --ntasks-per-node=1 --cpus-per-task={cpus_per_node}"
        ' --kill-on-bad-exit=1 "${cmd[@]}")',
    ]


def _array_body(job: JobSpec) -> list[str]:
    """Pick the task's command, run it with the warning signal passed on, requeue on exit 75."""
    lines = [
        'echo "spd-run: task ${SLURM_ARRAY_TASK_ID} of job ${SLURM_ARRAY_JOB_ID} started on'
        f' $(hostname) at {_TIMESTAMP}"',
        'case "${SLURM_ARRAY_TASK_ID}" in',
        *(f"  {index}) cmd=({shlex.join(cmd)}) ;;" for index, cmd in enumerate(job.commands)),
        '  *) echo "spd-run: no command for array task ${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;',
        "esac",
        *(rendezvous_lines(job.nodes, job.cpus_per_task) if job.nodes > 1 else []),
        "# The run in the background, so that the warning signal reaches it through this shell.",
        '"${cmd[@]}" &',
        "child=$!",
        """trap 'kill -USR1 "${child}" 2>/dev/null' USR1 TERM""",
        'wait "${child}"',
        "status=$?",
        "# A trapped signal interrupts `wait`; wait again for the run's own exit status.",
        'while kill -0 "${child}" 2>/dev/null; do wait "${child}"; status=$?; done',
    ]
    if job.preemptible:
        lines += [
            f'if [ "${{status}}" -eq {PREEMPTED_EXIT_CODE} ]; then',
            '  echo "spd-run: task ${SLURM_ARRAY_TASK_ID} checkpointed on a signal; requeueing it"',
            '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
            "fi",
        ]
    return [
        *lines,
        f'echo "spd-run: task ${{SLURM_ARRAY_TASK_ID}} ended with status ${{status}} at {_TIMESTAMP}"',
        'exit "${status}"',
    ]


def _sequence_body(job: JobSpec) -> list[str]:
    """Every command in turn; the job fails if any of them failed."""
    return [
        "status=0",
        *(f"{shlex.join(command)} || status=1" for command in job.commands),
        'exit "${status}"',
    ]


def job_script(job: JobSpec) -> str:
    """The sbatch script of `job`: directives, the shared preamble, then its commands."""
    body = _array_body(job) if job.array else _sequence_body(job)
    return "\n".join(["#!/bin/bash", *directives(job), *_preamble(job), *body]) + "\n"


def require_sbatch(n_runs: int, nodes: int = 1) -> None:
    """Fail clearly, before anything else happens, when there is no SLURM here."""
    if shutil.which("sbatch") is None and nodes > 1:
        raise SPDUserError(
            f"sbatch was not found, and --nodes {nodes} needs SLURM to get {nodes} machines per "
            "run; run on a SLURM login node, or drop --nodes and add --local to run here"
        )
    if shutil.which("sbatch") is None:
        raise SPDUserError(
            "sbatch was not found, so nothing can be submitted to SLURM; add --local to run "
            f"the {n_runs} run(s) here one after another"
        )


def submit(job: JobSpec, script_path: Path) -> str:
    """Write the job's script to `script_path`, submit it and return the job id sbatch prints."""
    job.log_dir.mkdir(parents=True, exist_ok=True)  # SLURM does not create it
    script_path.write_text(job_script(job))
    result = subprocess.run(
        ["sbatch", "--parsable", str(script_path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SPDUserError(
            f"sbatch refused the job: {result.stderr.strip() or result.stdout.strip()}"
        )
    # --parsable prints "<job id>[;<cluster>]".
    return result.stdout.strip().split(";")[0]


def watch_hints(job_id: str, job: JobSpec) -> list[str]:
    """What to run to follow or stop the array."""
    return [
        f"  watch:  squeue -j {job_id}",
        f"  cancel: scancel {job_id}",
        f"  logs:   {job.log_dir}/slurm-{job_id}_<task>.out",
    ]
