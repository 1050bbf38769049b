"""A full disk mid-run: one clear line, exit code 2, and the last complete checkpoint resumes to
exactly the result of a run that never failed.

The disk fills through the file-size limit (RLIMIT_FSIZE) of a real decomposition process, with
SIGXFSZ ignored so that a write past the limit fails with EFBIG instead of killing the process
(what ENOSPC does on a full disk). Metrics logging fails by a limit set at the start (the metrics
file outgrows it). For a checkpoint write the limit must fall between two checkpoints of the same
size, so the process lowers it itself right after its first checkpoint is complete (a wrapper,
`FILL_DISK_AFTER_FIRST_CHECKPOINT`, that runs the real script; nothing of spd is replaced):
from then on no checkpoint fits, exactly as if the disk had filled up at that moment.
"""

import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from spd.persistence.checkpoints import CHECKPOINT_GLOB, latest_checkpoint, read_checkpoint
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

METRICS_ARGS = [
    str(TMS_CONFIG),
    *override_args(steps=200, save_freq=40, train_log_freq=1),
    "--no-progress",
]
CHECKPOINT_ARGS = [
    str(TMS_CONFIG),
    *override_args(steps=200, save_freq=20, train_log_freq=100, eval_freq=100),
    "--no-progress",
]

# argv: LIMIT SCRIPT ARGS...; runs SCRIPT as __main__ and sets the file-size limit to LIMIT
# bytes once the first checkpoint has been written (and pruned: the end of `save_checkpoint`).
FILL_DISK_AFTER_FIRST_CHECKPOINT = """
import resource, runpy, sys
import spd.persistence.checkpoints as checkpoints

limit = int(sys.argv[1])
prune = checkpoints.prune_checkpoints

def prune_then_fill_disk(*args, **kwargs):
    prune(*args, **kwargs)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

checkpoints.prune_checkpoints = prune_then_fill_disk
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def file_size_limit(limit: int | None) -> Callable[[], None]:
    """A preexec_fn: ignore SIGXFSZ (a write past the limit then fails with EFBIG) and, if
    given, limit the size of every file the process writes to `limit` bytes."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def uninterrupted_run(base: Path, args: list[str]) -> Path:
    run_dir = base / "run"
    result = run_tms([*args, "--run-dir", str(run_dir)], base)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted_metrics_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return uninterrupted_run(tmp_path_factory.mktemp("uninterrupted_metrics"), METRICS_ARGS)


@pytest.fixture(scope="module")
def uninterrupted_checkpoint_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return uninterrupted_run(tmp_path_factory.mktemp("uninterrupted_checkpoint"), CHECKPOINT_ARGS)


def assert_one_clean_line(result_code: int, stderr: str, *fragments: str) -> str:
    lines = stderr.strip().splitlines()
    assert result_code == 2, stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def resume_and_compare(run_dir: Path, uninterrupted: Path, args: list[str]) -> None:
    """Continue the failed run with the same command line, no limit; compare with `uninterrupted`."""
    resumed = run_tms([*args, "--run-dir", str(run_dir)], run_dir.parent)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step" in resumed.stdout
    assert_bitwise_equal(
        decomposition_tensors(latest_checkpoint(run_dir)),
        decomposition_tensors(latest_checkpoint(uninterrupted)),
    )
    assert read_metrics(run_dir) == read_metrics(uninterrupted)
    assert (run_dir / "summary.json").read_text() == (uninterrupted / "summary.json").read_text()


def test_disk_full_while_logging_metrics_resumes_exactly(
    uninterrupted_metrics_run: Path, tmp_path: Path
) -> None:
    checkpoint_size = latest_checkpoint(uninterrupted_metrics_run).stat().st_size
    metrics_size = (uninterrupted_metrics_run / "metrics.jsonl").stat().st_size
    # The limit lets every checkpoint through but not the whole metrics file.
    limit = checkpoint_size + 2048
    assert metrics_size > limit + 4096, "the metrics file must outgrow the checkpoints"

    run_dir = tmp_path / "run"
    failed = subprocess.run(
        [sys.executable, str(TMS_SCRIPT), *METRICS_ARGS, "--run-dir", str(run_dir)],
        env=script_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=file_size_limit(limit),
    )
    line = assert_one_clean_line(
        failed.returncode,
        failed.stderr,
        "metrics line",
        "file-size limit",
        "last good checkpoint kept",
    )
    kept = latest_checkpoint(run_dir)
    assert str(kept) in line
    assert read_checkpoint(kept)["step"] < 200  # the run stopped midway
    assert not (run_dir / "summary.json").exists()

    resume_and_compare(run_dir, uninterrupted_metrics_run, METRICS_ARGS)


def test_disk_full_while_writing_a_checkpoint_resumes_exactly(
    uninterrupted_checkpoint_run: Path, tmp_path: Path
) -> None:
    checkpoint_size = latest_checkpoint(uninterrupted_checkpoint_run).stat().st_size
    metrics_size = (uninterrupted_checkpoint_run / "metrics.jsonl").stat().st_size
    # Far below any checkpoint (their sizes differ by a few bytes from run to run: pickled
    # numbers and paths), far above the metrics file.
    limit = checkpoint_size // 2
    assert metrics_size < limit, "only the checkpoints may outgrow the limit"

    run_dir = tmp_path / "run"
    failed = subprocess.run(
        [
            sys.executable,
            "-c",
            FILL_DISK_AFTER_FIRST_CHECKPOINT,
            str(limit),
            str(TMS_SCRIPT),
            *CHECKPOINT_ARGS,
            "--run-dir",
            str(run_dir),
        ],
        env=script_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=file_size_limit(None),
    )
    line = assert_one_clean_line(
        failed.returncode,
        failed.stderr,
        "model_00000040.pth",
        "file-size limit",
        "last good checkpoint kept",
    )
    kept = latest_checkpoint(run_dir)
    assert str(kept) in line
    assert read_checkpoint(kept)["step"] == 20
    # The failed write left no partial file behind, only complete checkpoints.
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    for checkpoint in (run_dir / "checkpoints").glob(CHECKPOINT_GLOB):
        read_checkpoint(checkpoint)

    resume_and_compare(run_dir, uninterrupted_checkpoint_run, CHECKPOINT_ARGS)
