"""Data parallelism with real torchrun processes on CPU (gloo)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch_helpers import spd_run, spd_run_env

from spd.config.loading import config_from_dict, config_to_yaml, load_config
from spd.config.task_registry import TASKS
from spd.experiments.registry import get_experiment
from spd.experiments.tms.task import make_data
from spd.loading.targets import load_target_model
from spd.persistence.run_dir import read_metrics
from spd.train.data_shard import data_shard
from tests.paths import REPO_ROOT
from tests.task_builders import BATCH_SIZE, EVAL_BATCH_SIZE, TASK_CONFIGS

WORKER = Path(__file__).with_name("dp_worker.py")
SHARD_WORKER = Path(__file__).with_name("shard_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


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
    return {f"{part}.{k}": v for part in ("components", "ci_fns") for k, v in state[part].items()}


def only_run_dir(out_dir: Path) -> Path:
    (run_dir,) = (out_dir / "runs").iterdir()
    return run_dir


@pytest.mark.parametrize("mode", ["exact", "options", "routed", "global"])
def test_two_ranks_on_half_batches_match_one_rank_on_full_batches(
    tmp_path: Path, mode: str
) -> None:
    # `options`: importance minimality's frequency term (world_size inside its logarithm), the
    # faithfulness warm-up and both gradient clips, on batches whose halves are equal.
    # `routed`: the delta component and the subset terms, with draws that follow the rows.
    # `global`: one CI function over both layers' inputs (global_shared_transformer).
    (single,) = run_worker(tmp_path / "one", mode, ranks=1)
    rank0, rank1 = run_worker(tmp_path / "two", mode, ranks=2)
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
    if mode == "options":
        # dp_worker.OPTIONS clips both groups at 1e-3.
        assert two_rows[0]["train/grad_norm_pre_clip/components"] > 1e-3
        assert two_rows[0]["train/grad_norm_pre_clip/ci_fns"] > 1e-3
    if mode == "routed":
        for name in ("stochastic_recon_subset", "ci_masked_recon_subset"):
            assert two_rows[0][f"train/loss/{name}"] > 0, name
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
        train, evaluation = make_data(config, target, torch.device("cpu"), data_shard(config))
        batches[rank] = (next(train), next(evaluation))
    assert batches[0][0].shape == (32, 5) and batches[0][1].shape == (16, 5)
    assert not torch.equal(batches[0][0], batches[1][0])
    assert not torch.equal(batches[0][1], batches[1][1])
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    alone, _ = make_data(config, target, torch.device("cpu"), data_shard(config))
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


@pytest.fixture(scope="module")
def task_shards(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Each rank's first batches of every built-in task with a test config, from one torchrun
    launch of two gloo ranks (shard_worker.py)."""
    root = tmp_path_factory.mktemp("task_shards")
    paths = []
    for name, build in TASK_CONFIGS.items():
        path = root / f"{name}.yaml"
        path.write_text(config_to_yaml(config_from_dict(build(root))))
        paths.append(str(path))
    # The checkout under test first: its spd, and the generic task's data source in tests/.
    env = {k: v for k, v in os.environ.items() if k != "SPD_OUT_DIR"} | {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [*TORCHRUN, str(SHARD_WORKER), str(root), *paths],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(root / f"rank{r}.pt") for r in (0, 1)]


def _rows(batch: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(row.flatten().tolist()) for row in batch}


@pytest.mark.parametrize("name", TASKS.names())
def test_each_task_gives_two_gloo_ranks_different_halves_of_the_batch(
    name: str, task_shards: list[dict]
) -> None:
    assert name in TASK_CONFIGS, f"add a small config of task '{name}' to tests/task_builders.py"
    rank0, rank1 = (shards[name] for shards in task_shards)
    assert rank0["microbatch_size"] == BATCH_SIZE and rank0["eval_batch_size"] == EVAL_BATCH_SIZE
    for rank, drawn in enumerate((rank0, rank1)):
        assert drawn["shard"]["rank"] == rank and drawn["shard"]["world_size"] == 2
        # Each rank's share adds up, over the process group, to the configured global batches.
        assert [b.shape[0] for b in drawn["train"]] == [BATCH_SIZE // 2] * 2
        assert drawn["eval"].shape[0] == EVAL_BATCH_SIZE // 2
        assert drawn["global_rows"] == [BATCH_SIZE, EVAL_BATCH_SIZE]
    assert rank0["shard"]["seed"] != rank1["shard"]["seed"]
    # The ranks see different examples: no row of one rank's batches is a row of the other's
    # (an all-zero feature vector may occur anywhere, so it does not count).
    for key in ("train", "eval"):
        batches0 = rank0[key] if key == "train" else [rank0[key]]
        batches1 = rank1[key] if key == "train" else [rank1[key]]
        rows0 = set().union(*map(_rows, batches0)) - {(0.0,) * batches0[0][0].numel()}
        rows1 = set().union(*map(_rows, batches1)) - {(0.0,) * batches1[0][0].numel()}
        assert rows0 and rows1 and not rows0 & rows1, key
