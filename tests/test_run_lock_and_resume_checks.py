"""Two writers on one run are refused, and a resume trusts only a good checkpoint.

The runs are real tiny TMS runs, started as subprocesses exactly as a user starts them.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spd.config.loading import load_config
from spd.errors import SPDUserError
from spd.persistence.checkpoints import checkpoint_path
from spd.persistence.resume import find_resume_point
from spd.persistence.run_dir import CONFIG_FILE, RunDirectory, read_metrics
from spd.persistence.run_lock import lock_run_directory
from tests.resumable_runs import TMS_CONFIG, TMS_SCRIPT, override_args, run_tms, script_env

STEPS = 20


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of STEPS steps with checkpoints at steps 10 and 20."""
    out = tmp_path_factory.mktemp("out")
    args = override_args(steps=STEPS, save_freq=10, keep_last_checkpoints=5, train_log_freq=2)
    result = run_tms([str(TMS_CONFIG), *args], out)
    assert result.returncode == 0, result.stderr
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def _files(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != ".spd.lock"
    }


def _spoil_with_nan(path: Path) -> None:
    data = torch.load(path, weights_only=True)
    for tensors in data["decomposition"].values():
        for tensor in tensors.values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
                break
    torch.save(data, path)


def test_a_second_writer_is_refused_naming_the_holder(finished_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished_run, tmp_path)
    before = _files(run_dir)
    resume = ["--resume", str(run_dir), "--override", f"steps={STEPS + 10}"]
    lock = lock_run_directory(run_dir)  # this process plays the run that is still training
    try:
        refused = run_tms(resume, tmp_path / "out")
    finally:
        lock.release()
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2, refused.stderr
    assert len(lines) == 1 and lines[0].startswith("spd: error: ")
    assert f"in use by process {os.getpid()}" in lines[0]
    assert _files(run_dir) == before, "the refused writer changed the run"
    # Once the holder is gone the run continues: the lock leaves nothing stale behind.
    resumed = run_tms(resume, tmp_path / "out")
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint_path(RunDirectory(run_dir), STEPS + 10).is_file()


def test_resume_passes_over_a_damaged_newest_checkpoint(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(finished_run / CONFIG_FILE, {"steps": STEPS + 10})
    for damage in ("nan", "truncated"):
        run_dir = _copy(finished_run, tmp_path / damage)
        newest = checkpoint_path(RunDirectory(run_dir), STEPS)
        if damage == "nan":
            _spoil_with_nan(newest)
        else:
            newest.write_bytes(newest.read_bytes()[:100])
        point = find_resume_point(run_dir, config)
        assert (point.step, point.checkpoint.name) == (10, "model_00000010.pth"), damage
        warning = capsys.readouterr().err
        assert newest.name in warning and "using the older model_00000010.pth" in warning


def test_no_good_checkpoint_refuses_and_keeps_the_run(finished_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished_run, tmp_path)
    for checkpoint in (run_dir / "checkpoints").glob("model_*.pth"):
        _spoil_with_nan(checkpoint)
    before = _files(run_dir)
    with pytest.raises(SPDUserError, match=r"no usable checkpoint.*non-finite"):
        find_resume_point(run_dir, load_config(run_dir / CONFIG_FILE, {"steps": STEPS + 10}))
    result = run_tms(["--resume", str(run_dir), "--override", f"steps={STEPS + 10}"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _files(run_dir) == before, "a resume that cannot start dropped part of the run"


def test_two_runs_started_at_once_into_one_output_root_keep_apart(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [str(TMS_CONFIG), *override_args(steps=6, run_name="same"), "--no-progress"]
    runs = [
        subprocess.Popen(
            [sys.executable, str(TMS_SCRIPT), *args],
            env=script_env(out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
    run_dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(run_dirs) == 2, "both runs wrote into one directory"
    for run_dir in run_dirs:
        steps = [row["step"] for row in read_metrics(run_dir) if "train/loss" in row]
        assert steps == sorted(set(steps)), f"{run_dir.name} holds another run's rows"
