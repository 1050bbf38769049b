"""Exact resume: a run stopped and continued equals the run that never stopped, bit for bit."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from spd.config.schema import Config
from spd.data import sparse_features
from spd.data.sparse_features import SparseFeatureData
from spd.data.stream_state import TrackedStream
from spd.errors import SPDUserError
from spd.loading.targets import load_target_model
from spd.models.component_model import ComponentModel, build_component_model
from spd.persistence.checkpoints import (
    checkpoint_path,
    latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from spd.persistence.rng_state import capture_rng_state, restore_rng_state
from spd.persistence.run_dir import RunDirectory, read_metrics
from tests.resumable_runs import assert_bitwise_equal, decomposition_tensors, run, tiny_config

# Exercises everything that depends on the step or on random state: warm-up and cosine
# schedule over the total steps, p annealing, stochastic masks, gradient accumulation,
# periodic evaluation and the alive tracker, with checkpoints pruned along the way.
EXACT = {
    "steps": 200,
    "lr_warmup_pct": 0.05,
    "p_anneal_final_p": 0.5,
    "p_anneal_start_frac": 0.3,
    "p_anneal_end_frac": 0.9,
    "gradient_accumulation_steps": 2,
    "n_examples_until_dead": 640,
    "save_freq": 30,
    "keep_last_checkpoints": 2,
}


def exact(device: torch.device, **changes: object) -> Config:
    """The tiny config with the EXACT settings on the test device, and `changes` on top."""
    return tiny_config(**{**EXACT, "device": str(device), **changes})


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, device: torch.device) -> RunDirectory:
    run_dir = RunDirectory.create(tmp_path_factory.mktemp("straight"), "straight")
    result = run(exact(device), run_dir)
    assert result.stopped_at is None
    return run_dir


@pytest.mark.parametrize("crash", [False, True], ids=["clean-stop", "crash-after-checkpoint"])
def test_stop_and_resume_is_bitwise_identical(
    straight: RunDirectory, tmp_path: Path, crash: bool, device: torch.device
) -> None:
    config = exact(device)
    run_dir = RunDirectory.create(tmp_path, "resumed")
    first = run(config, run_dir, stop_after=99)
    assert first.stopped_at == 100
    assert latest_checkpoint(run_dir.path) == checkpoint_path(run_dir, 100)
    if crash:
        # As if killed after step 99 without the stop checkpoint: the run goes back to the
        # periodic checkpoint of step 90, and the rows it logged for steps 90-99 are replaced.
        checkpoint_path(run_dir, 100).unlink()
        assert max(row["step"] for row in read_metrics(run_dir.path)) == 95
    resume_from = latest_checkpoint(run_dir.path)
    assert resume_from == checkpoint_path(run_dir, 90 if crash else 100)
    second = run(config, run_dir, resume_from=resume_from)
    assert second.stopped_at is None

    final = checkpoint_path(run_dir, 200)
    assert_bitwise_equal(
        decomposition_tensors(final), decomposition_tensors(checkpoint_path(straight, 200))
    )
    resumed_params = dict(second.model.named_parameters())
    for name, param in run(config, RunDirectory.create(tmp_path, "again")).model.named_parameters():
        assert torch.equal(param, resumed_params[name]), name
    assert read_metrics(run_dir.path) == read_metrics(straight.path)
    # The full-state checkpoint still loads as a plain model.
    loaded = ComponentModel.from_pretrained(run_dir.path).decomposition_state()
    assert all(
        torch.equal(v, second.model.decomposition_state()["ci_fns"][k])
        for k, v in loaded["ci_fns"].items()
    )
    # keep_last_checkpoints=2: the newest two remain (the final one among them).
    kept = sorted(p.name for p in run_dir.checkpoints.glob("model_*.pth"))
    assert kept == ["model_00000180.pth", "model_00000200.pth"]


def test_resume_after_a_faithfulness_warmup_is_bitwise_identical(
    tmp_path: Path, device: torch.device
) -> None:
    # The warm-up runs once, before step 0: a resumed run that warmed up again would move the
    # checkpoint's factors and differ from the straight run.
    config = exact(device, steps=60, save_freq=20, faithfulness_warmup_steps=5)
    straight_dir = RunDirectory.create(tmp_path, "straight-warmup")
    run(config, straight_dir)
    run_dir = RunDirectory.create(tmp_path, "resumed-warmup")
    assert run(config, run_dir, stop_after=29).stopped_at == 30
    run(config, run_dir, resume_from=checkpoint_path(run_dir, 30))
    assert_bitwise_equal(
        decomposition_tensors(checkpoint_path(run_dir, 60)),
        decomposition_tensors(checkpoint_path(straight_dir, 60)),
    )
    assert read_metrics(run_dir.path) == read_metrics(straight_dir.path)
    # And the warm-up did change the run.
    plain_dir = RunDirectory.create(tmp_path, "plain")
    run(exact(device, steps=60, save_freq=20), plain_dir)
    assert read_metrics(plain_dir.path) != read_metrics(straight_dir.path)


def test_resume_may_extend_steps(tmp_path: Path, device: torch.device) -> None:
    run_dir = RunDirectory.create(tmp_path, "extend")
    run(exact(device), run_dir, stop_after=49)
    longer = exact(device, steps=260)
    result = run(longer, run_dir, resume_from=latest_checkpoint(run_dir.path))
    assert result.stopped_at is None
    steps = [row["step"] for row in read_metrics(run_dir.path)]
    assert steps == sorted(steps) and steps[-1] == 260
    assert checkpoint_path(run_dir, 260).exists()


def test_resume_with_delta_and_a_routed_term_is_bitwise_identical(
    tmp_path: Path, device: torch.device
) -> None:
    # The delta masks and the routers draw from the same RNG streams that a checkpoint restores.
    config = tiny_config(
        device=str(device),
        steps=40,
        save_freq=10,
        use_delta_component=True,
        sampling="binomial",
        **{"losses.stochastic_recon_subset.coeff": 1.0},
    )
    straight = RunDirectory.create(tmp_path, "straight")
    run(config, straight)
    run_dir = RunDirectory.create(tmp_path, "resumed")
    assert run(config, run_dir, stop_after=19).stopped_at == 20
    run(config, run_dir, resume_from=latest_checkpoint(run_dir.path))
    assert_bitwise_equal(
        decomposition_tensors(checkpoint_path(run_dir, 40)),
        decomposition_tensors(checkpoint_path(straight, 40)),
    )
    rows = read_metrics(straight.path)
    assert read_metrics(run_dir.path) == rows
    assert any("train/loss/stochastic_recon_subset" in row for row in rows)


def _same(a: object, b: object) -> bool:
    """Nested checkpoint entries equal, tensors bit for bit."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize(
    "optimizer",
    [
        {"type": "sign", "step_size": 0.05},
        {"type": "adam", "lr": 0.1, "lr_schedule": "cosine", "lr_warmup_pct": 0.1},
    ],
    ids=["sign", "adam"],
)
def test_resume_with_persistent_pgd_is_bitwise_identical(
    tmp_path: Path, device: torch.device, optimizer: dict[str, object]
) -> None:
    # The sources and their optimiser's state persist across steps: a checkpoint must hold them.
    # Gradient accumulation (the sources step once per step) and a warm-up ascent step included.
    params = {
        "optimizer": optimizer,
        "scope": {"type": "repeat_across_batch", "n_sources": 8},
        "n_warmup_steps": 1,
    }
    config = tiny_config(
        device=str(device),
        steps=40,
        save_freq=10,
        gradient_accumulation_steps=2,
        use_delta_component=True,
        **{
            "losses.persistent_pgd_recon_subset.coeff": 0.5,
            "losses.persistent_pgd_recon_subset.params": params,
        },
    )
    straight = RunDirectory.create(tmp_path, "straight")
    run(config, straight)
    run_dir = RunDirectory.create(tmp_path, "resumed")
    assert run(config, run_dir, stop_after=19).stopped_at == 20
    run(config, run_dir, resume_from=latest_checkpoint(run_dir.path))
    assert_bitwise_equal(
        decomposition_tensors(checkpoint_path(run_dir, 40)),
        decomposition_tensors(checkpoint_path(straight, 40)),
    )
    states = {
        step: read_checkpoint(checkpoint_path(run_dir, step))["term_states"] for step in (20, 40)
    }
    assert _same(states[40], read_checkpoint(checkpoint_path(straight, 40))["term_states"])
    assert not _same(states[20], states[40])  # the sources did move in the resumed half
    rows = read_metrics(straight.path)
    assert read_metrics(run_dir.path) == rows
    assert any("train/loss/persistent_pgd_recon_subset" in row for row in rows)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"C": 10}, "C"),
        ({"ci_fn_type": "vector_mlp"}, "ci_fn_type"),
        ({"ci_fn_hidden_dims": [8]}, "ci_fn_hidden_dims"),
        ({"sigmoid_type": "hard"}, "sigmoid_type"),
        ({"tied_weights": None}, "tied_weights"),
        ({"target_module_patterns": ["linear1"], "tied_weights": None}, "target_module_patterns"),
        ({"importance_minimality_coeff": 0.5}, "losses.importance_minimality.coeff"),
        ({"pnorm": 2.0}, "losses.importance_minimality.params.pnorm"),
        (
            {"task_config": {"task_name": "tms", "feature_probability": 0.2}},
            "task_config.feature_probability",
        ),
    ],
)
def test_resume_refuses_architecture_or_loss_changes(
    straight: RunDirectory, change: dict[str, object], field: str, device: torch.device
) -> None:
    config = exact(device, **change)
    before = read_metrics(straight.path)
    with pytest.raises(SPDUserError, match=rf"changes {field} \("):
        run(config, straight, resume_from=latest_checkpoint(straight.path))
    assert read_metrics(straight.path) == before


def test_rng_state_round_trip() -> None:
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    state = capture_rng_state()
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    restore_rng_state(state)
    assert (
        random.random(),
        np.random.standard_normal(3).tolist(),
        torch.rand(3).tolist(),
    ) == expected


def _draw(stream: TrackedStream, n: int) -> list[Tensor]:
    return [next(stream) for _ in range(n)]


def test_stream_state_stateful_and_replayed() -> None:
    def sparse() -> TrackedStream:
        return TrackedStream(SparseFeatureData(5, 0.3, seed=7).batches(4))

    def plain() -> TrackedStream:
        # An iterator without state_dict: restored by replaying the batches drawn.
        generator = torch.Generator().manual_seed(7)
        return TrackedStream(iter(lambda: torch.rand(4, 5, generator=generator), None))

    for make in (sparse, plain):
        original = make()
        _draw(original, 3)
        state = original.state_dict()
        expected = _draw(original, 2)
        restored = make()
        restored.load_state_dict(state)
        assert all(torch.equal(a, b) for a, b in zip(_draw(restored, 2), expected, strict=True))
        assert restored.drawn == 5


@pytest.mark.parametrize("recorded", [True, False], ids=["device-recorded", "older-checkpoint"])
def test_stream_saved_on_another_device_continues_from_a_derived_seed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, recorded: bool
) -> None:
    monkeypatch.setattr(sparse_features, "_told_device_change", False)
    # A CUDA generator's state is 16 bytes (seed and offset); a CPU generator cannot take it.
    cuda_state: dict[str, object] = {"generator": torch.arange(16, dtype=torch.uint8)}
    if recorded:
        cuda_state["device_type"] = "cuda"
    streams = []
    for _ in range(2):
        data = SparseFeatureData(5, 0.3, seed=7)
        data.load_state_dict(cuda_state)
        streams.append(torch.stack([data.sample(4) for _ in range(3)]))
    fresh = SparseFeatureData(5, 0.3, seed=7)
    assert torch.equal(streams[0], streams[1])  # reproducible from the saved state
    assert not torch.equal(streams[0], torch.stack([fresh.sample(4) for _ in range(3)]))
    assert "continue on cpu from new seeds" in capsys.readouterr().out


def test_checkpoint_with_nan_parameters_is_not_written(tmp_path: Path) -> None:
    config = tiny_config()
    model = build_component_model(load_target_model(config), config)
    run_dir = RunDirectory.create(tmp_path, "nan")
    save_checkpoint(run_dir, 1, model, config)
    with torch.no_grad():
        next(iter(model.ci_fns.parameters())).view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="at step 2; checkpoint not written"):
        save_checkpoint(run_dir, 2, model, config)
    assert latest_checkpoint(run_dir.path) == checkpoint_path(run_dir, 1)
    assert not list(run_dir.checkpoints.glob(".*.tmp"))
