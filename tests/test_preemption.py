"""Preemption: a real decomposition process signalled mid-run checkpoints, exits 75, and the
resumed run ends exactly where an uninterrupted one does."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spd.persistence.checkpoints import latest_checkpoint
from spd.persistence.preemption import PREEMPTED_EXIT_CODE
from spd.persistence.run_dir import read_metrics
from tests.resumable_runs import (
    TMS_CONFIG,
    TMS_SCRIPT,
    assert_bitwise_equal,
    decomposition_tensors,
    override_args,
    run_tms,
    script_env,
)

STEPS = 300
ARGS = [str(TMS_CONFIG), *override_args(steps=STEPS, save_freq=100), "--no-progress"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_tms([*ARGS, "--run-dir", str(run_dir)], run_dir.parent)
    assert result.returncode == 0, result.stderr
    return run_dir


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen[str]) -> None:
    """Block until the run has logged `step` (the process is then mid-run)."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it was signalled"
        if metrics.exists() and any(row["step"] >= step for row in read_metrics(metrics)):
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach step {step}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signalled_run_resumes_to_the_uninterrupted_result(
    uninterrupted: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(TMS_SCRIPT), *ARGS, "--run-dir", str(run_dir)],
        env=script_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(run_dir, 20, process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == PREEMPTED_EXIT_CODE, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and f"stopped on {sig.name}" in lines[0], stderr
    stopped = latest_checkpoint(run_dir)
    stopped_step = int(stopped.stem.split("_")[1])
    assert 20 < stopped_step < STEPS and f"at step {stopped_step} of {STEPS}" in lines[0]
    assert not (run_dir / "summary.json").exists()

    if sig == signal.SIGTERM:
        resumed = subprocess.run(
            [
                sys.executable,
                "-m",
                "spd.scripts.run",
                "--resume",
                str(run_dir),
                "--local",
                "--no-progress",
            ],
            env=script_env(tmp_path),
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
    else:
        # What a requeued SLURM task runs: the very same command line as the first attempt.
        resumed = run_tms([*ARGS, "--run-dir", str(run_dir)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {stopped_step} of {STEPS}" in resumed.stdout

    assert_bitwise_equal(
        decomposition_tensors(latest_checkpoint(run_dir)),
        decomposition_tensors(latest_checkpoint(uninterrupted)),
    )
    assert read_metrics(run_dir) == read_metrics(uninterrupted)
    assert (run_dir / "summary.json").read_text() == (uninterrupted / "summary.json").read_text()
