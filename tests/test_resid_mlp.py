"""The residual-MLP experiment: target, labels, shipped targets, decomposition and CI patterns."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from spd.config.loading import load_config
from spd.errors import SPDUserError
from spd.eval.ci_patterns import (
    dedicated,
    dedicated_per_layer,
    dense_errors,
    group_by_patterns,
    identity_errors,
    layers_by_patterns,
    n_axis_aligned,
    n_dense,
    n_live,
    n_with_one_dedicated,
    n_with_sole_dedicated,
    serving_identity_errors,
)
from spd.eval.context import diagonal_permutation
from spd.experiments.registry import EXPERIMENT_REGISTRY
from spd.experiments.resid_mlp.labels import (
    load_label_coeffs,
    residual_relu_labels,
    save_label_coeffs,
)
from spd.experiments.resid_mlp.models import ResidMLP, ResidMLPModelConfig
from spd.experiments.resid_mlp.plots import (
    matched_mlp_in_subcomponents,
    subcomponent_neuron_contributions,
    target_neuron_contributions,
)
from spd.losses.terms.importance_minimality import importance_params
from spd.models.component_model import ComponentModel

REPO = Path(__file__).resolve().parent.parent
RESID_MLP = REPO / "spd" / "experiments" / "resid_mlp"
SHAPES = {  # docs/method.md, 'Experiments': (features, neurons per layer, layers)
    "resid_mlp1": (100, 50, 1),
    "resid_mlp2": (100, 25, 2),
    "resid_mlp3": (102, 17, 3),
}


def _linear(model: torch.nn.Module, name: str) -> torch.nn.Linear:
    module = model.get_submodule(name)
    assert isinstance(module, torch.nn.Linear)
    return module


def _tiny_model() -> ResidMLP:
    """Two features, residual width 2, two layers of one neuron, with W_E = I."""
    model = ResidMLP(ResidMLPModelConfig(n_features=2, d_embed=2, d_mlp=1, n_layers=2))
    with torch.no_grad():
        model.W_E.copy_(torch.eye(2))
        _linear(model, "layers.0.mlp_in").weight.copy_(torch.tensor([[1.0, -1.0]]))
        _linear(model, "layers.0.mlp_out").weight.copy_(torch.tensor([[2.0], [0.0]]))
        _linear(model, "layers.1.mlp_in").weight.copy_(torch.tensor([[0.0, 1.0]]))
        _linear(model, "layers.1.mlp_out").weight.copy_(torch.tensor([[0.0], [1.0]]))
    return model


def test_forward_matches_hand_computation() -> None:
    model = _tiny_model()
    x = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
    # x = (3, 1): layer 0 neuron = relu(3 - 1) = 2, adds (4, 0) -> h = (7, 1);
    #             layer 1 neuron = relu(1) = 1, adds (0, 1) -> (7, 2).
    # x = (1, 3): layer 0 neuron = relu(-2) = 0 -> h = (1, 3); layer 1 neuron = 3 -> (1, 6).
    torch.testing.assert_close(model(x), torch.tensor([[7.0, 2.0], [1.0, 6.0]]))


def test_embedding_is_fixed_unit_norm_and_read_off_by_its_transpose() -> None:
    config = ResidMLPModelConfig(n_features=5, d_embed=7, d_mlp=3, n_layers=1, embed_seed=3)
    model = ResidMLP(config)
    torch.testing.assert_close(model.W_E.norm(dim=1), torch.ones(5))
    assert "W_E" not in dict(model.named_parameters())
    torch.testing.assert_close(ResidMLP(config).W_E, model.W_E)  # regenerated from the seed
    with torch.no_grad():
        _linear(model, "layers.0.mlp_out").weight.zero_()  # no MLP: out = W_E W_Eᵀ applied to x
    x = torch.randn(4, 5)
    torch.testing.assert_close(model(x), x @ model.W_E @ model.W_E.T)


def test_label_function_and_coefficients_on_disk(tmp_path: Path) -> None:
    x = torch.tensor([[-0.5, 0.0, 0.3]])
    torch.testing.assert_close(
        residual_relu_labels(x, torch.ones(3)), torch.tensor([[-0.5, 0.0, 0.6]])
    )
    coeffs = torch.tensor([2.0, 1.0, 0.5])
    torch.testing.assert_close(residual_relu_labels(x, coeffs), torch.tensor([[-0.5, 0.0, 0.45]]))
    save_label_coeffs(tmp_path, coeffs)
    torch.testing.assert_close(load_label_coeffs(tmp_path), coeffs)


@pytest.mark.parametrize("name", list(SHAPES))
def test_shipped_target_reaches_its_recorded_loss(name: str) -> None:
    directory = RESID_MLP / "targets" / name
    assert (directory / "model.pth").stat().st_size < 1_100_000
    recorded = yaml.safe_load((directory / "train_config.yaml").read_text())
    model = ResidMLP.from_pretrained(directory)
    n_features = SHAPES[name][0]
    assert (model.config.n_features, model.config.d_mlp, model.config.n_layers) == SHAPES[name]
    assert model.config.d_embed == 1000
    coeffs = load_label_coeffs(directory)
    torch.testing.assert_close(coeffs, torch.ones(n_features))  # docs/method.md: y = x + ReLU(x)

    # A fresh sample, drawn here independently of the training code's data generator.
    generator = torch.Generator().manual_seed(12345)
    n = 20_000
    active = torch.rand(n, n_features, generator=generator) < 0.01
    x = (torch.rand(n, n_features, generator=generator) * 2 - 1) * active
    y = x + torch.relu(x)
    with torch.no_grad():
        loss = float(((model(x) - y) ** 2).mean())
        without_mlp = float(((x @ model.W_E @ model.W_E.T - y) ** 2).mean())
    assert loss == pytest.approx(recorded["eval_loss"], rel=0.1)
    assert without_mlp == pytest.approx(recorded["eval_loss_without_mlp"], rel=0.1)
    assert loss < 0.5 * without_mlp  # the MLPs do compute the ReLUs


def test_registry_and_configs_follow_the_spec() -> None:
    expected = {  # name: (C, lr, importance coeff, steps, CI hidden dims)
        "resid_mlp1": (100, 2e-3, 1e-5, 30_000, [16]),
        "resid_mlp2": (400, 1e-3, 1e-5, 50_000, [16]),
        "resid_mlp3": (500, 1e-3, 5e-6, 100_000, [128]),
    }
    for name, (C, lr, imp, steps, hidden) in expected.items():
        spec = EXPERIMENT_REGISTRY[name]
        assert spec.decomp_script.exists() and spec.target_train_script is not None
        config = load_config(spec.config_path)
        importance = config.loss_coeffs["importance_minimality"]
        assert (config.C, config.lr, importance, config.steps) == (
            C,
            lr,
            imp,
            steps,
        )
        assert config.ci_fn_hidden_dims == hidden
        p = importance_params(config).pnorm
        assert (p, config.batch_size, config.lr_schedule) == (2.0, 2048, "constant")
        assert config.loss_coeffs["stochastic_recon"] == config.loss_coeffs["faithfulness"] == 1.0
        assert config.loss_coeffs["stochastic_recon_layerwise"] == 1.0
        assert config.pretrained_model_path is not None
        assert (REPO / config.pretrained_model_path).name == name


def test_neuron_contributions_add_up_over_an_exact_decomposition() -> None:
    torch.manual_seed(0)
    target = ResidMLP(ResidMLPModelConfig(n_features=4, d_embed=6, d_mlp=3, n_layers=1))
    model = ComponentModel(target, ["layers.0.mlp_in"], C=3)
    comp = model.components["layers.0.mlp_in"]
    w_in = model.target_weight("layers.0.mlp_in")  # (d_mlp, d_embed)
    with torch.no_grad():
        comp.V.copy_(w_in.T)  # V U = W_inᵀ with U = I: subcomponent c is neuron c's row
        comp.U.copy_(torch.eye(3))
        w_out = _linear(target, "layers.0.mlp_out").weight
        # By hand: neuron n contributes (W_in[n]·e_i)(W_out[:, n]·e_i) to feature i.
        by_hand = torch.stack(
            [torch.stack([(w_in[n] @ e) * (w_out[:, n] @ e) for n in range(3)]) for e in target.W_E]
        )
        torch.testing.assert_close(target_neuron_contributions(model), by_hand)
        summed = torch.stack(
            [subcomponent_neuron_contributions(model, [[(0, c)]] * 4) for c in range(3)]
        ).sum(0)
        torch.testing.assert_close(summed, by_hand)
        # Subcomponent c only ever involves neuron c.
        only_1 = subcomponent_neuron_contributions(model, [[(0, 1)]] * 4)
        torch.testing.assert_close(only_1[:, [0, 2]], torch.zeros(4, 2))


def test_each_serving_layer_contributes_its_matched_subcomponent() -> None:
    # Feature 0 is served by both layers, feature 1 by layer 1 only, feature 2 by neither (its
    # strongest match, in layer 0, stands in).
    layer0 = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.3, 0.0]])
    layer1 = torch.tensor([[0.0, 0.0, 1.0], [0.8, 0.0, 0.0], [0.0, 0.1, 0.0]])
    ci = {"layers.0.mlp_in": layer0, "layers.1.mlp_in": layer1}
    assert matched_mlp_in_subcomponents(ci) == [[(0, 0), (1, 2)], [(1, 0)], [(0, 1)]]


# ----- CI-pattern scores on planted patterns -----


def _perfect_identity(n_features: int, C: int, seed: int) -> torch.Tensor:
    """Each feature fires its own subcomponent at 1 (others 0), columns in random order."""
    matrix = torch.zeros(n_features, C)
    matrix[torch.arange(n_features), torch.arange(n_features)] = 1.0
    generator = torch.Generator().manual_seed(seed)
    return matrix[:, torch.randperm(C, generator=generator)]


def _shuffle_entries(matrix: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    flat = matrix.flatten()
    return flat[torch.randperm(flat.numel(), generator=generator)].reshape(matrix.shape)


def test_planted_identity_pattern_scores_perfect() -> None:
    perfect = _perfect_identity(100, 130, seed=0)
    # Small off-pattern noise within the tolerances must not change the verdict.
    noisy = perfect * 0.95 + 0.05 * (perfect == 0)
    for matrix in (perfect, noisy):
        assert n_with_one_dedicated([matrix], on=0.5, off=0.1) == 100
        assert n_with_sole_dedicated([matrix], on=0.5, off=0.1) == 100
        assert identity_errors(matrix, diagonal_permutation(matrix), tolerance=0.1) == 0
    # The dedicated subcomponents are all different.
    assert dedicated(perfect).sum(0).max() == 1


def test_shuffled_identity_pattern_scores_bad() -> None:
    shuffled = _shuffle_entries(_perfect_identity(100, 130, seed=0), seed=1)
    assert n_with_one_dedicated([shuffled]) < 50
    assert identity_errors(shuffled, diagonal_permutation(shuffled), tolerance=0.1) > 50


def test_dedicated_needs_exactly_one_and_quiet_elsewhere() -> None:
    matrix = torch.zeros(3, 5)
    matrix[0, 0] = 1.0  # feature 0: one dedicated subcomponent
    matrix[1, 1] = matrix[1, 2] = 1.0  # feature 1: two dedicated ones -> not "exactly one"
    matrix[2, 3] = 1.0  # feature 2: its subcomponent also fires (0.3) on feature 0 -> not dedicated
    matrix[0, 3] = 0.3
    assert dedicated(matrix).nonzero().tolist() == [[0, 0], [1, 1], [1, 2]]
    assert n_with_one_dedicated([matrix]) == 1
    assert n_with_sole_dedicated([matrix]) == 0  # feature 0 also switches on subcomponent 3


def test_layers_of_one_pattern_are_scored_together() -> None:
    # Each feature is served by one of the two layers (wherever its column fell).
    both = _perfect_identity(100, 200, seed=2)
    ci = {"layers.0.mlp_in": both[:, :100], "layers.1.mlp_in": both[:, 100:]}
    grouped = group_by_patterns(ci, ["layers.*.mlp_in"])["layers.*.mlp_in"]
    assert grouped.shape == (100, 200)
    split = layers_by_patterns(ci, ["layers.*.mlp_in"])["layers.*.mlp_in"]
    assert n_with_one_dedicated(split) == 100
    assert dedicated_per_layer(split).sum(1).tolist() == [1] * 100
    assert identity_errors(grouped, diagonal_permutation(grouped), tolerance=0.1) == 0
    with pytest.raises(SPDUserError, match=r"layers\.\*\.mlp_typo"):
        layers_by_patterns(ci, ["layers.*.mlp_typo"])


def test_one_dedicated_subcomponent_in_each_serving_layer() -> None:
    # Every feature served by both layers, one dedicated subcomponent in each (what resid_mlp2
    # gives): each feature counts.
    layer0, layer1 = _perfect_identity(100, 400, seed=4), _perfect_identity(100, 400, seed=5)
    assert n_with_one_dedicated([layer0, layer1]) == 100
    assert n_with_sole_dedicated([layer0, layer1]) == 100
    assert dedicated_per_layer([layer0, layer1]).tolist() == [[1, 1]] * 100
    assert serving_identity_errors([layer0, layer1]) == 0
    # Scored as one matrix, the second layer's subcomponents are all off the identity.
    side_by_side = torch.cat([layer0, layer1], 1)
    assert identity_errors(side_by_side, diagonal_permutation(side_by_side), 0.1) == 100
    # One layer, whichever features it serves: the plain identity errors.
    half_served = layer0.clone()
    half_served[:50] *= 0.3  # features 0-49: CI 0.3, below `on`, on their subcomponent
    for single in (_shuffle_entries(layer0, seed=6), half_served):
        assert serving_identity_errors([single]) == identity_errors(
            single, diagonal_permutation(single), 0.1
        )
    assert serving_identity_errors([half_served]) == 50
    # Feature 0 gets a second dedicated subcomponent in layer 1; feature 1 none in either
    # layer; feature 2 also switches on (0.3) a subcomponent that another feature uses.
    layer1 = layer1.clone()
    spare = int((layer1.sum(0) == 0).nonzero()[0])
    layer1[0, spare] = 1.0
    layer0[1] = 0.0
    layer1[1] = 0.0
    layer0[2, int(layer0[3].argmax())] = 0.3
    assert n_with_one_dedicated([layer0, layer1]) == 97  # features 0, 1 and 3 (no longer quiet)
    assert n_with_sole_dedicated([layer0, layer1]) == 96  # and feature 2
    # Feature 0's extra entry, feature 1 served nowhere, feature 2's 0.3.
    assert serving_identity_errors([layer0, layer1]) == 3


def test_live_and_neuron_aligned_subcomponents() -> None:
    ci = torch.zeros(4, 6)
    ci[0, 1] = 0.9
    ci[2, 3] = 0.2
    ci[3, 5] = 0.05  # below the "off" threshold: not live
    assert n_live(ci, off=0.1) == 2
    # Read vectors (d_in 3 neurons × C 4): column 0 reads neuron 2 alone, column 1 a mixture,
    # column 2 neuron 2 again (counted once), column 3 neuron 0 with a tiny leak.
    read = torch.tensor([[0.0, 1.0, 0.0, -2.0], [0.0, 1.0, 0.0, 0.01], [3.0, 0.0, -0.5, 0.0]])
    assert n_axis_aligned(read, torch.tensor([True, True, True, True])) == 2
    assert n_axis_aligned(read, torch.tensor([False, True, False, True])) == 1
    assert n_axis_aligned(read, torch.tensor([False, True, False, False])) == 0


def test_dense_pattern_over_layers() -> None:
    # 50 subcomponents on for every feature, 25 in each of two layers; the rest off.
    layer = torch.zeros(100, 400)
    layer[:, :25] = 1.0
    ci = {"layers.0.mlp_out": layer, "layers.1.mlp_out": layer.roll(100, dims=1)}
    grouped = group_by_patterns(ci, ["layers.*.mlp_out"])["layers.*.mlp_out"]
    assert n_dense(grouped, on=0.5, min_fraction=0.9) == 50
    assert dense_errors(grouped, k=50, tolerance=0.1) == 0
    assert dense_errors(grouped, k=40, tolerance=0.1) == 10 * 100
    shuffled = _shuffle_entries(grouped, seed=3)
    assert n_dense(shuffled, on=0.5, min_fraction=0.9) == 0
    assert dense_errors(shuffled, k=50, tolerance=0.1) > 1000


def test_broadly_active_neurons_bound_the_dense_mlp_out_subcomponents() -> None:
    from spd.experiments.resid_mlp.scores import ci_pattern_scores

    target = ResidMLP(ResidMLPModelConfig(n_features=10, d_embed=20, d_mlp=4, n_layers=1))
    # Planted pre-activations per unit input (features × neurons): neuron 0 positive for every
    # feature, neuron 1 for 9 of 10 (exactly the 90 % bound), neuron 2 for 8, neuron 3 for none.
    planted = torch.ones(10, 4)
    planted[:1, 1] = -1.0
    planted[:2, 2] = -1.0
    planted[:, 3] = -1.0
    with torch.no_grad():
        # W_E has full row rank, so W_E · pinv(W_E) = I and the pre-activations are `planted`.
        _linear(target, "layers.0.mlp_in").weight.copy_((torch.linalg.pinv(target.W_E) @ planted).T)
    config = load_config(RESID_MLP / "resid_mlp1_config.yaml")
    model = ComponentModel(target, ["layers.*.mlp_in", "layers.*.mlp_out"], C=6)
    model.init_components_from_target(0)
    assert ci_pattern_scores(model, config)["broadly_active_neurons"] == 2


# ----- the decomposition script -----


def test_a_few_hundred_decomposition_steps_lower_the_loss(
    tmp_path: Path, device: torch.device
) -> None:
    config = RESID_MLP / "resid_mlp1_config.yaml"
    overrides = [
        f"device={device}",
        "steps=300",
        "batch_size=128",
        "train_log_freq=50",
        "eval_freq=300",
        "slow_eval_freq=300",
        "eval_batch_size=256",
        "save_freq=null",
        "figures=[{name: resid_mlp_neuron_contributions}]",
    ]
    command = [sys.executable, str(RESID_MLP / "resid_mlp_decomposition.py"), str(config)]
    for override in overrides:
        command += ["--override", override]
    env = {**os.environ, "SPD_OUT_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*command, "--no-progress"], capture_output=True, text=True, env=env, cwd=REPO, check=False
    )
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = tmp_path.iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r for r in rows if "train/loss/total" in r}
    first, last = losses[0], losses[300]
    assert last["train/loss/total"] < 0.5 * first["train/loss/total"]
    assert last["train/loss/stochastic_recon"] < first["train/loss/stochastic_recon"]
    # The CI-pattern metrics ran, and the verdict ends the printed summary and summary.json.
    final_eval = [r for r in rows if "eval/dedicated_subcomponents/layers.*.mlp_in" in r][-1]
    assert 0 <= final_eval["eval/dedicated_subcomponents/layers.*.mlp_in"] <= 100
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dedicated_mlp_in"] == final_eval["eval/dedicated_subcomponents/layers.*.mlp_in"]
    assert summary["dense_mlp_out"] == final_eval["eval/dense_subcomponents/layers.*.mlp_out"]
    verdict = proc.stdout.strip().splitlines()[-1]
    assert verdict == f"spd: {summary['verdict']}"
    assert f"{int(summary['dedicated_mlp_in'])} of 100 features have exactly one" in verdict
    # scripts/score_resid_mlp.py scores the saved decomposition as the run did.
    rescored = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "score_resid_mlp.py"), str(run_dir), "--json"],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert rescored.returncode == 0, rescored.stderr
    assert json.loads(rescored.stdout) == {k: summary[k] for k in json.loads(rescored.stdout)}
    # The target's neurons that a one-hot input (0.75) switches on for ≥ 90 % of the features,
    # counted here from the shipped weights alone.
    target = ResidMLP.from_pretrained(RESID_MLP / "targets" / "resid_mlp1")
    pre = 0.75 * target.W_E @ _linear(target, "layers.0.mlp_in").weight.T  # (features, neurons)
    broad = int(((pre > 0).float().mean(0) >= 0.9).sum())
    assert summary["broadly_active_neurons"] == broad
    assert f"the target has {broad} of 50 neurons active on ≥ 90% of the one-hot inputs" in verdict
    assert (run_dir / "figures" / "neuron_contributions_300.png").stat().st_size > 0
