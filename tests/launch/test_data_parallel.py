"""Data parallelism with real torchrun processes on CPU (gloo)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch_helpers import spd_run, spd_run_env

from spd.config.loading import load_config
from spd.experiments.registry import get_experiment
from spd.experiments.tms.tms_decomposition import make_data
from spd.loading.targets import load_target_model
from spd.persistence.run_dir import read_metrics

WORKER = Path(__file__).with_name("dp_worker.py")


def run_worker(out_dir: Path, mode: str, ranks: int) -> list[dict]:
    """Run dp_worker.py alone (ranks=1) or under torchrun; return each rank's saved results."""
    out_dir.mkdir()
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SPD_OUT_DIR"} | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*launcher, str(WORKER), str(out_dir), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(ranks)]


def flat_state(saved: dict) -> dict[str, torch.Tensor]:
    state = saved["state"]
    return {f"{part}.{k}": v for part in ("components", "gates") for k, v in state[part].items()}


def only_run_dir(out_dir: Path) -> Path:
    (run_dir,) = (out_dir / "runs").iterdir()
    return run_dir


def test_two_ranks_on_half_batches_match_one_rank_on_full_batches(tmp_path: Path) -> None:
    (single,) = run_worker(tmp_path / "one", "exact", ranks=1)
    rank0, rank1 = run_worker(tmp_path / "two", "exact", ranks=2)
    assert rank0["world_size"] == 2
    reference = flat_state(single)
    for saved in (rank0, rank1):
        for name, value in flat_state(saved).items():
            torch.testing.assert_close(value, reference[name], rtol=1e-10, atol=1e-12, msg=name)
    # Only rank 0 wrote a run directory; its metrics (averaged over ranks) equal the single run's.
    one_rows, two_rows = (
        read_metrics(only_run_dir(tmp_path / "one")),
        read_metrics(only_run_dir(tmp_path / "two")),
    )
    assert len(one_rows) == len(two_rows) > 5
    for a, b in zip(one_rows, two_rows, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
    # The parameters really trained (the comparison is not between two untouched inits).
    assert two_rows[0]["train/grad_norm"] > 0
    assert {r["step"] for r in two_rows} == set(range(5))


def test_each_rank_draws_its_own_masks_yet_parameters_stay_in_sync(tmp_path: Path) -> None:
    rank0, rank1 = run_worker(tmp_path / "two", "stochastic", ranks=2)
    # Both ranks saw the same batch with the same parameters: only their random draws differ.
    for name, mask in rank0["masks"][0].items():
        assert mask.shape == rank1["masks"][0][name].shape
        assert (mask - rank1["masks"][0][name]).abs().max() > 0.1, name
    for name, value in flat_state(rank0).items():
        torch.testing.assert_close(value, flat_state(rank1)[name], rtol=0, atol=0, msg=name)
    assert only_run_dir(tmp_path / "two").name.endswith("-stochastic")


def test_tms_data_differs_per_rank_and_splits_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(
        get_experiment("tms_5-2").config_path, {"batch_size": 64, "eval_batch_size": 32}
    )
    target = load_target_model(config)
    batches = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        train, evaluation = make_data(config, target, torch.device("cpu"))
        batches[rank] = (next(train), next(evaluation))
    assert batches[0][0].shape == (32, 5) and batches[0][1].shape == (16, 5)
    assert not torch.equal(batches[0][0], batches[1][0])
    assert not torch.equal(batches[0][1], batches[1][1])
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    alone, _ = make_data(config, target, torch.device("cpu"))
    assert next(alone).shape == (64, 5)


# Behind `slow` while a rare abort is open: a gloo rank can die with "terminate called without an
# active exception" after training, in process-group teardown (seen once in four CI runs).
# The same two-rank training is covered in the default suite by
# test_two_ranks_on_half_batches_match_one_rank_on_full_batches.
@pytest.mark.slow
def test_spd_run_local_dp_writes_one_run(spd_repo: Path, tmp_path: Path) -> None:
    env = spd_run_env(spd_repo, tmp_path)
    result = spd_run(
        spd_repo, env,
        "--experiments", "tms_5-2", "--local", "--cpu", "--dp", "2",
        "--override", "steps=3", "--override", "batch_size=32", "--override", "eval_batch_size=32",
        "--override", "figures=[]", "--override", "train_log_freq=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (launch_dir,) = (tmp_path / "out").iterdir()
    (run_dir,) = [p for p in launch_dir.iterdir() if p.is_dir()]
    assert [row["step"] for row in read_metrics(run_dir) if "train/loss/total" in row] == [
        0,
        1,
        2,
        3,
    ]
    assert "torch.distributed.run" in (launch_dir / "launch.json").read_text()
