"""The TMS target (docs/method.md, 'Experiments'): forward pass, tied training, dead-feature check, shipped targets, data."""

from pathlib import Path

import pytest
import torch
import yaml

from spd.data.sparse_features import SparseFeatureData
from spd.experiments.tms.models import TMSModel, TMSModelConfig
from spd.experiments.tms.train_tms import RECIPES, TMSTrainConfig, dead_features, train
from tests.paths import TMS_TARGETS

# W (hidden 2 × features 3) = [[1, 0, 1], [0, 1, 1]], output bias b = [0, −1, 0.5].
#   x = [1, 2, 0]: W x = [1, 2];  Wᵀ [1, 2] = [1, 2, 3];  + b = [1, 1, 3.5];  ReLU → [1, 1, 3.5]
#   x = [1, 0, 0]: W x = [1, 0];  Wᵀ [1, 0] = [1, 0, 1];  + b = [1, −1, 1.5]; ReLU → [1, 0, 1.5]
HAND_W = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]
HAND_B = [0.0, -1.0, 0.5]
HAND_X = [[1.0, 2.0, 0.0], [1.0, 0.0, 0.0]]
HAND_OUT = [[1.0, 1.0, 3.5], [1.0, 0.0, 1.5]]


def _hand_model(n_hidden_layers: int) -> TMSModel:
    model = TMSModel(TMSModelConfig(n_features=3, n_hidden=2, n_hidden_layers=n_hidden_layers))
    with torch.no_grad():
        model.linear1.weight.copy_(torch.tensor(HAND_W))
        model.linear2.weight.copy_(torch.tensor(HAND_W).T)
        model.linear2.bias.copy_(torch.tensor(HAND_B))
    return model


@pytest.mark.parametrize("n_hidden_layers", [0, 1, 2])
def test_forward_matches_the_hand_computation(n_hidden_layers: int) -> None:
    model = _hand_model(n_hidden_layers)
    torch.testing.assert_close(model(torch.tensor(HAND_X)), torch.tensor(HAND_OUT))


def test_identity_hidden_layers_are_fixed() -> None:
    model = TMSModel(TMSModelConfig(n_features=3, n_hidden=2, n_hidden_layers=2))
    for layer in model.hidden_layers:
        assert isinstance(layer, torch.nn.Linear) and layer.bias is None
        assert torch.equal(layer.weight, torch.eye(2)) and not layer.weight.requires_grad


def test_tied_parametrisation_keeps_linear2_the_transpose_while_training() -> None:
    torch.manual_seed(0)
    model = TMSModel(TMSModelConfig(n_features=4, n_hidden=2))
    model.tie_weights()
    start = model.linear1.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    data = SparseFeatureData(4, 0.3, seed=1)
    for _ in range(5):
        x = data.sample(32)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), x).backward()
        optimizer.step()
        assert torch.equal(model.linear2.weight, model.linear1.weight.T)
    assert not torch.equal(model.linear1.weight, start)
    model.untie_weights()
    assert (
        type(model.linear2.weight) is torch.nn.Parameter and not model.linear2.weight.requires_grad
    )
    assert torch.equal(model.linear2.weight, model.linear1.weight.T)
    assert set(model.state_dict()) == {"linear1.weight", "linear2.weight", "linear2.bias"}


def test_train_returns_an_untied_target_with_linear2_the_transpose() -> None:
    config = TMSTrainConfig(model=TMSModelConfig(n_features=5, n_hidden=2), steps=30, batch_size=64)
    model = train(config, show_progress=False)
    assert torch.equal(model.linear2.weight, model.linear1.weight.T)
    assert not torch.nn.utils.parametrize.is_parametrized(model.linear2)


def test_dead_features_finds_a_planted_dead_feature() -> None:
    model = TMSModel(TMSModelConfig(n_features=4, n_hidden=2))
    with torch.no_grad():
        # Columns W[:, j]: norms 1, 1, 0.1 (dead), 0.8.
        model.linear1.weight.copy_(torch.tensor([[1.0, 0.0, 0.1, 0.8], [0.0, 1.0, 0.0, 0.0]]))
    assert dead_features(model) == [2]
    with torch.no_grad():
        model.linear1.weight[0, 2] = 0.9
    assert dead_features(model) == []


def test_save_and_from_pretrained_round_trip(tmp_path: Path) -> None:
    model = _hand_model(1)
    model.save(tmp_path / "t", {"model": model.config.model_dump(), "seed": 3})
    loaded = TMSModel.from_pretrained(tmp_path / "t")
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_the_two_required_targets_are_shipped() -> None:
    assert {"tms_5-2", "tms_5-2-id"} <= {p.name for p in TMS_TARGETS.iterdir()}


@pytest.mark.parametrize("name", sorted(p.name for p in TMS_TARGETS.iterdir() if p.is_dir()))
def test_shipped_target_represents_every_feature(name: str) -> None:
    model = TMSModel.from_pretrained(TMS_TARGETS / name)
    train_config = yaml.safe_load((TMS_TARGETS / name / "train_config.yaml").read_text())
    assert TMSModelConfig(**train_config["model"]) == RECIPES[name].model
    n = model.config.n_features
    assert dead_features(model) == []
    assert torch.equal(model.linear2.weight, model.linear1.weight.T)
    for layer in model.hidden_layers:
        assert isinstance(layer, torch.nn.Linear)
        assert torch.equal(layer.weight, torch.eye(model.config.n_hidden))
    # Each one-hot input comes back as mostly itself: its own output is the largest, near 1.
    with torch.no_grad():
        out = model(torch.eye(n))
    assert bool((out.diagonal() > 0.8).all())
    assert torch.equal(out.argmax(dim=1), torch.arange(n))
    assert (TMS_TARGETS / name / "model.pth").stat().st_size < 20_000, "a few KB"


def test_sparse_features_are_sparse_uniform_and_reproducible() -> None:
    x = SparseFeatureData(5, 0.05, seed=0).sample(20_000)
    assert bool(((x >= 0) & (x <= 1)).all())
    # 100 000 entries, each non-zero w.p. 0.05: 5000 ± 69 (1 sd).
    assert 4700 < int((x > 0).sum()) < 5300
    assert torch.equal(SparseFeatureData(5, 0.05, seed=0).sample(20_000), x)
    assert not torch.equal(SparseFeatureData(5, 0.05, seed=1).sample(20_000), x)


def test_exactly_one_active_has_one_feature_per_example() -> None:
    x = SparseFeatureData(6, 0.05, data_generation_type="exactly_one_active", seed=0).sample(500)
    assert torch.equal((x > 0).sum(dim=1), torch.ones(500, dtype=torch.long))
