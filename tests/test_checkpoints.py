"""A checkpoint written by a run loads back into a ComponentModel that matches it to the last bit."""

from pathlib import Path

import pytest
import torch

from spd.errors import SPDUserError
from spd.experiments.tms import task as tms_task
from spd.models.component_model import ComponentModel
from spd.persistence.checkpoints import latest_checkpoint, read_checkpoint
from spd.persistence.run_dir import RunDirectory
from spd.train.data_shard import data_shard
from spd.train.optimize import optimize
from tests.fixture_types import ConfigFactory, TargetFactory
from tests.paths import TMS_5_2_ID_CONFIG

CPU = torch.device("cpu")


@pytest.fixture
def trained_run(
    quick_tms_config: ConfigFactory, tms_target: TargetFactory, tmp_path: Path, device: torch.device
) -> tuple[RunDirectory, ComponentModel]:
    """A 20-step tms_5-2-id decomposition with checkpoints at steps 10 and 20, trained on the
    test device and returned on the CPU (where checkpoints load)."""
    config = quick_tms_config(TMS_5_2_ID_CONFIG, save_freq=10)
    target = tms_target("tms_5-2-id")
    run_dir = RunDirectory.create(tmp_path, "ckpt")
    run_dir.write_config(config)
    train, evaluation = tms_task.make_data(config, target, device, data_shard(config))
    result = optimize(
        target, config, device, train, evaluation, run_dir=run_dir, show_progress=False
    )
    return run_dir, result.model.to(CPU)


def _outputs(model: ComponentModel, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out, pre_acts = model.forward_with_pre_acts(x)
        ci, ci_upper = model.causal_importances(pre_acts, "leaky_hard")
        return [
            out,
            *ci.values(),
            *ci_upper.values(),
            model.forward_with_components(x, ci),
            model.forward_with_components(x, dict.fromkeys(model.module_names)),
            *(comp.weight for comp in model.components.values()),
        ]


def test_checkpoint_round_trip_is_bit_identical(
    trained_run: tuple[RunDirectory, ComponentModel],
) -> None:
    run_dir, model = trained_run
    x = torch.rand(256, 5, generator=torch.Generator().manual_seed(0))
    x[x < 0.7] = 0
    expected = _outputs(model, x)
    final_file = run_dir.checkpoints / "model_00000020.pth"
    for source in (run_dir.path, final_file):
        loaded = ComponentModel.from_pretrained(source)
        assert loaded.module_names == model.module_names
        got = _outputs(loaded, x)
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b)
    state, loaded_state = (
        model.decomposition_state(),
        ComponentModel.from_pretrained(final_file).decomposition_state(),
    )
    for part in ("components", "ci_fns"):
        assert state[part].keys() == loaded_state[part].keys()
        assert all(torch.equal(state[part][k], loaded_state[part][k]) for k in state[part])


def test_run_dir_loads_the_latest_checkpoint(
    trained_run: tuple[RunDirectory, ComponentModel],
) -> None:
    run_dir, _ = trained_run
    assert latest_checkpoint(run_dir.path).name == "model_00000020.pth"
    early = ComponentModel.from_pretrained(run_dir.checkpoints / "model_00000010.pth")
    late = ComponentModel.from_pretrained(run_dir.path)
    assert read_checkpoint(run_dir.checkpoints / "model_00000010.pth")["step"] == 10
    assert not torch.equal(early.components["linear1"].V, late.components["linear1"].V)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SPDUserError, match="no such run directory or checkpoint"):
        ComponentModel.from_pretrained(tmp_path / "nothing")


def test_run_dir_without_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(SPDUserError, match="no checkpoint"):
        ComponentModel.from_pretrained(tmp_path)


def test_damaged_and_foreign_files(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"not a checkpoint")
    with pytest.raises(SPDUserError, match="cannot read checkpoint") as info:
        ComponentModel.from_pretrained(damaged)
    assert "\n" not in str(info.value)
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(SPDUserError, match="not an spd checkpoint"):
        ComponentModel.from_pretrained(foreign)


def test_checkpoint_whose_config_does_not_fit_its_tensors(
    trained_run: tuple[RunDirectory, ComponentModel], tmp_path: Path
) -> None:
    run_dir, _ = trained_run
    data = read_checkpoint(latest_checkpoint(run_dir.path))
    data["config"]["C"] = 7
    edited = tmp_path / "edited.pth"
    torch.save(data, edited)
    with pytest.raises(SPDUserError, match="does not match its config's architecture") as info:
        ComponentModel.from_pretrained(edited)
    assert "\n" not in str(info.value)
