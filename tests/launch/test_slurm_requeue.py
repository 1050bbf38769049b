"""A SLURM task warned of its time limit checkpoints, requeues itself and finishes from there."""

import re
import subprocess
import time
from pathlib import Path

import pytest
from launch_helpers import spd_run, spd_run_env
from slurm_cluster import SlurmCluster

from spd.persistence.run_dir import read_metrics

STEPS = 3000


@pytest.mark.slow
def test_signalled_task_is_requeued_and_resumes(
    slurm_cluster: SlurmCluster, spd_repo: Path, tmp_path: Path
) -> None:
    env = spd_run_env(spd_repo, tmp_path, slurm_cluster)
    overrides = [f"steps={STEPS}", "batch_size=32", "eval_batch_size=32", "train_log_freq=25",
                 "eval_freq=1000", "slow_eval_freq=100000", "figures=[]"]  # fmt: skip
    args = ["--experiments", "tms_5-2", "--cpu", "--no-create-snapshot"]
    result = spd_run(spd_repo, env, *args, *[a for o in overrides for a in ("--override", o)])
    assert result.returncode == 0, result.stderr
    match = re.search(r"submitted job array (\d+)", result.stdout)
    assert match, result.stdout
    job = match.group(1)
    # Wait until the run is training, then send the warning signal SLURM sends before a limit.
    deadline = time.monotonic() + 300
    metrics: list[Path] = []
    while time.monotonic() < deadline:
        metrics = list((tmp_path / "out").glob("*/*/metrics.jsonl"))
        if metrics and len(read_metrics(metrics[0])) >= 5:
            break
        time.sleep(0.5)
    assert metrics, "the task never started training"
    subprocess.run(
        ["scancel", "--batch", "--signal=USR1", f"{job}_0"], env=env, check=True, timeout=30
    )
    slurm_cluster.wait_until_done(job, timeout=600)

    log = (tmp_path / "slurm_logs" / f"slurm-{job}_0.out").read_text()
    assert "checkpointed on a signal; requeueing it" in log, log[-3000:]
    resumed = re.search(r"resuming at step (\d+)", log)
    assert resumed and 0 < int(resumed.group(1)) < STEPS, log[-3000:]
    statuses = re.findall(r"ended with status (\d+)", log)
    assert statuses == ["75", "0"], log[-3000:]  # stopped on the signal, then finished
    run_dir = metrics[0].parent
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows if "train/loss/total" in r]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no step logged twice
    assert (run_dir / "summary.json").is_file()
