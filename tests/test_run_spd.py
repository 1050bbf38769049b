"""`optimize()` (docs/method.md, 'Optimisation') and the run directory it writes through the
shared script logic."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

from spd.config.loading import load_config
from spd.config.schema import Config
from spd.experiments.run_decomposition import run_decomposition
from spd.experiments.tms import task as tms_task
from spd.experiments.tms.models import TMSModel
from spd.models.component_model import DecomposedModule
from spd.persistence.run_dir import RunDirectory, read_metrics
from spd.train.data_shard import data_shard
from spd.train.optimize import optimize
from spd.train.setup import trainable_parameters
from tests.fixture_types import ConfigFactory, TargetFactory
from tests.recording_sink import RecordingSink

CPU = torch.device("cpu")


def _tms_streams(config: Config, target: TMSModel) -> tuple[Iterator[Tensor], Iterator[Tensor]]:
    return tms_task.make_data(config, target, CPU, data_shard(config))


def test_short_tms_decomposition_lowers_the_loss(
    quick_tms_config: ConfigFactory, tms_target: TargetFactory, device: torch.device
) -> None:
    config = quick_tms_config(
        steps=250, batch_size=128, train_log_freq=10, eval_freq=250, slow_eval_freq=250
    )
    target = tms_target()
    sink = RecordingSink()
    streams = tms_task.make_data(config, target, device, data_shard(config))
    optimize(target, config, device, *streams, sinks=[sink], show_progress=False)
    loss = sink.series("train/loss/total")
    faithfulness = sink.series("train/loss/faithfulness")
    late = [loss[s] for s in (230, 240, 250)]
    assert sum(late) / 3 < 0.2 * loss[0], loss
    assert faithfulness[250] < 0.1 * faithfulness[0]


def _full_batches(n: int, size: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(123)
    values = torch.rand(n, size, 5, generator=generator)
    active = torch.rand(n, size, 5, generator=generator) < 0.3
    return list(values * active)


def _micro_stream(batches: list[Tensor], n_micro: int) -> Iterator[Tensor]:
    for batch in batches:
        yield from batch.chunk(n_micro)


def test_gradient_accumulation_matches_one_full_batch(
    quick_tms_config: ConfigFactory, tms_target: TargetFactory
) -> None:
    # Deterministic terms only (no random masks): the mean of two half-batch losses is the
    # full-batch loss, so losses, gradients and updates must agree.
    deterministic = {
        "stochastic_recon_coeff": None,
        "stochastic_recon_layerwise_coeff": None,
        "recon_coeff": 1.0,
        "faithfulness_coeff": 1.0,
        "importance_minimality_coeff": 1e-2,
        "steps": 3,
        "batch_size": 32,
        "lr": 1e-2,
        "lr_schedule": "constant",
        "train_log_freq": 1,
    }
    batches = _full_batches(4, 32)
    params, sinks = {}, {}
    for n_micro in (1, 2):
        config = quick_tms_config(gradient_accumulation_steps=n_micro, **deterministic)
        sinks[n_micro] = RecordingSink()
        result = optimize(
            tms_target(),
            config,
            CPU,
            _micro_stream(batches, n_micro),
            iter(_full_batches(8, 32)),
            sinks=[sinks[n_micro]],
            show_progress=False,
        )
        params[n_micro] = [p.detach().clone() for p in trainable_parameters(result.model)]
    for key in ("train/loss/total", "train/loss/recon", "train/grad_norm"):
        one, two = sinks[1].series(key), sinks[2].series(key)
        assert sorted(one) == sorted(two) == [0, 1, 2, 3]
        assert list(two.values()) == pytest.approx(list(one.values()), rel=1e-5), key
    for one, two in zip(params[1], params[2], strict=True):
        torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-6)
    loss = sinks[1].series("train/loss/total")
    assert loss[3] < loss[0], "the test is vacuous if nothing trained"


def test_cutting_sparse_batches_to_their_live_rows_changes_no_logged_value(
    quick_tms_config: ConfigFactory, tms_target: TargetFactory
) -> None:
    # Deterministic terms only, so the two paths see the same losses; the CI-L0 and alive counts
    # must weight the one kept inert row by the number it stands for (spd.losses.row_selection).
    config = quick_tms_config(
        stochastic_recon_coeff=None,
        stochastic_recon_layerwise_coeff=None,
        recon_coeff=1.0,
        recon_layerwise_coeff=1.0,
        importance_minimality_coeff=1e-2,
        steps=3,
        batch_size=64,
        lr=1e-2,
        lr_schedule="constant",
        train_log_freq=1,
        ci_alive_threshold=0.0,
        # Small enough that subcomponents die within the run (a batch is 64 examples), so the
        # alive counts can tell a cut batch counted as its kept rows from one counted in full.
        n_examples_until_dead=100,
    )
    generator = torch.Generator().manual_seed(5)
    values = torch.rand(4, 64, 5, generator=generator)
    batches = list(values * (torch.rand(4, 64, 5, generator=generator) < 0.1))  # ~60 % inert
    sinks, params = {}, {}
    for cut in (True, False):
        target = tms_target()
        target.independent_rows = cut  # pyright: ignore[reportAttributeAccessIssue]
        sinks[cut] = RecordingSink()
        result = optimize(
            target,
            config,
            CPU,
            iter(batches),
            iter(_full_batches(8, 64)),
            sinks=[sinks[cut]],
            show_progress=False,
        )
        params[cut] = [p.detach().clone() for p in trainable_parameters(result.model)]
    keys = [k for k in sinks[False].rows[0][1] if k.startswith("train/")]
    assert "train/ci_l0/linear1" in keys and "train/n_alive/linear1" in keys
    for key in keys:
        cut, full = sinks[True].series(key), sinks[False].series(key)
        assert list(cut.values()) == pytest.approx(list(full.values()), rel=1e-5, abs=1e-7), key
    for layer in ("linear1", "linear2"):
        assert min(sinks[False].series(f"train/n_alive/{layer}").values()) < config.C, layer
    for a, b in zip(params[True], params[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_last_step_is_logged_and_checkpointed_but_takes_no_optimiser_step(
    quick_tms_config: ConfigFactory, tms_target: TargetFactory, tmp_path: Path
) -> None:
    # Constant lr: under the cosine schedule step T − 1 has lr 0 and would not move either.
    config = quick_tms_config(
        steps=4, lr_schedule="constant", train_log_freq=100, eval_freq=100, slow_eval_freq=100
    )
    target = tms_target()
    snapshots: dict[int, Tensor] = {}

    def snapshot(step: int) -> None:
        # optimize() patches the target in place, so its components are reachable from here.
        wrapper = target.get_submodule("linear1")
        assert isinstance(wrapper, DecomposedModule)
        snapshots[step] = wrapper.components.V.detach().clone()

    run_dir = RunDirectory.create(tmp_path, "last-step")
    sink = RecordingSink()
    result = optimize(
        target,
        config,
        CPU,
        *_tms_streams(config, target),
        run_dir=run_dir,
        sinks=[sink],
        show_progress=False,
        on_step_end=snapshot,
    )
    assert sorted(snapshots) == [0, 1, 2, 3, 4]
    assert not torch.equal(snapshots[3], snapshots[2]), "step 3 trains"
    assert torch.equal(snapshots[4], snapshots[3]), "step 4 = T only logs and evaluates"
    assert torch.equal(result.model.components["linear1"].V, snapshots[4])
    assert set(sink.series("train/loss/total")) == {0, 4}
    assert set(sink.series("eval/ci_l0/total")) == {0, 4}
    assert [p.name for p in run_dir.checkpoints.iterdir()] == ["model_00000004.pth"]


def test_a_run_writes_config_metrics_figures_checkpoints_and_summary(
    quick_tms_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "runs"))
    config = quick_tms_config(
        save_freq=10,
        figures=[{"name": "permuted_ci"}],
        p_anneal_final_p=2.0,
        p_anneal_start_frac=0.5,
        run_name="outputs",
    )
    run = run_decomposition(
        config, "tms", tms_task.make_data, tms_task.summarize, show_progress=False
    )
    path = run.path
    assert path.parent == tmp_path / "runs" and path.name.endswith("-outputs")
    assert load_config(path / "final_config.yaml") == config
    rows = read_metrics(path)
    train = {int(r["step"]): r for r in rows if "train/loss/total" in r}
    assert sorted(train) == [0, 5, 10, 15, 20]
    assert set(config.loss_coeffs) == {
        k.removeprefix("train/loss/") for k in train[0] if k.startswith("train/loss/")
    } - {"total"}
    assert all(r["train/lr"] >= 0 for r in train.values())
    # p annealed linearly from 1 (until 50 % of the steps) to 2 (at the end).
    assert [train[s]["train/pnorm"] for s in (0, 10, 15, 20)] == pytest.approx([1.0, 1.0, 1.5, 2.0])
    assert any("eval/ci_l0/total" in r for r in rows)
    final = [r for r in rows if "final/mmcs/linear1" in r]
    assert len(final) == 1 and final[0]["step"] == 20
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == [
        "model_00000010.pth",
        "model_00000020.pth",
    ]
    assert sorted(p.name for p in (path / "figures").iterdir()) == [
        "permuted_ci_0.png",
        "permuted_ci_10.png",
        "permuted_ci_20.png",
    ]
    assert set(run.summary) >= {"mmcs/linear1", "ml2r/linear1"}
    assert (path / "summary.json").is_file()


def test_a_new_run_never_reuses_a_directory(
    quick_tms_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path))
    monkeypatch.setattr(
        "spd.persistence.run_dir.time.strftime", lambda _fmt: "20250101-000000"
    )  # same second
    config = quick_tms_config(steps=2, run_name="same")
    first = run_decomposition(
        config, "tms", tms_task.make_data, tms_task.summarize, show_progress=False
    )
    before = {p: p.read_bytes() for p in first.path.rglob("*") if p.is_file()}
    second = run_decomposition(
        config, "tms", tms_task.make_data, tms_task.summarize, show_progress=False
    )
    assert first.path.name == "20250101-000000-same"
    assert second.path.name == "20250101-000000-same-1"
    after = {p: p.read_bytes() for p in first.path.rglob("*") if p.is_file()}
    assert after == before, "the earlier run's directory is untouched"
    third = RunDirectory.create(tmp_path, "same")
    assert third.path.name == "20250101-000000-same-2" and list(third.path.iterdir()) == []
