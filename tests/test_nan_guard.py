"""A non-finite loss stops the run with one line naming the term and the step, exit code 2,
and leaves only finite checkpoints behind."""

import shutil
from pathlib import Path

import pytest
import torch

from spd.persistence.checkpoints import CHECKPOINT_GLOB, read_checkpoint
from tests.resumable_runs import REPO, TMS_CONFIG, override_args, run_tms

SHIPPED_TARGET = REPO / "spd" / "experiments" / "tms" / "targets" / "tms_5-2"


def nan_target(directory: Path) -> Path:
    """A copy of the shipped 5-2 target with one NaN weight."""
    target = directory / "nan_target"
    shutil.copytree(SHIPPED_TARGET, target)
    state = torch.load(target / "model.pth", weights_only=True)
    state["linear1.weight"][0, 0] = float("nan")
    torch.save(state, target / "model.pth")
    return target


@pytest.mark.parametrize("plant", ["huge-lr", "nan-target"])
def test_non_finite_loss_stops_the_run(tmp_path: Path, plant: str) -> None:
    if plant == "huge-lr":
        # The first Adam update moves every factor by ~9e18 (just inside the config's bound on
        # numbers, 2**63); the product of two factors, and the next loss, overflow to inf.
        changes: dict[str, object] = {"lr": 9e18, "save_freq": 1}
        expected_step, expected_checkpoints = 1, ["model_00000001.pth"]
    else:
        changes = {"pretrained_model_path": str(nan_target(tmp_path)), "save_freq": 1}
        expected_step, expected_checkpoints = 0, []
    run_dir = tmp_path / "run"
    result = run_tms(
        [
            str(TMS_CONFIG),
            *override_args(steps=20, **changes),
            "--run-dir",
            str(run_dir),
            "--no-progress",
        ],
        tmp_path,
    )

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"non-finite loss at step {expected_step} in term(s): faithfulness" in lines[0]
    checkpoints = sorted((run_dir / "checkpoints").glob(CHECKPOINT_GLOB))
    assert [p.name for p in checkpoints] == expected_checkpoints
    if checkpoints:
        assert f"last good checkpoint kept: {checkpoints[-1]}" in lines[0]
        for tensors in read_checkpoint(checkpoints[-1])["decomposition"].values():
            assert all(bool(torch.isfinite(t).all()) for t in tensors.values())
    else:
        assert "no checkpoint had been written" in lines[0]
    assert not (run_dir / "summary.json").exists()
