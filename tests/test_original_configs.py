"""Configs and targets of the original SPD implementation: written here from its documented keys,
they load (directly, with one warning line per translated key, or via `spd-config upgrade`) and
each key means here what it meant there, weight tying included."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from spd.config.flat_loss_keys import FLAT_KEYS
from spd.config.loading import RENAMED_KEYS, config_from_dict, load_config
from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.experiments.lm.config import LMTaskConfig
from spd.experiments.resid_mlp.labels import load_label_coeffs
from spd.experiments.resid_mlp.models import ResidMLP
from spd.experiments.run_decomposition import run_decomposition
from spd.experiments.tms.models import TMSModel
from spd.experiments.tms.task import make_data, summarize
from spd.loading.run_config import load_run_config
from spd.loading.run_paths import COMPLETE_MARKER, WandbRunRef, cached_run_dir
from spd.loading.targets import load_target_model
from tests.paths import REPO_ROOT, TMS_TARGETS

# An original TMS run config, from the keys the original documents. It says nothing about tying:
# there, a tied target's linear1/linear2 were tied because the target's training config said so.
ORIGINAL_TMS = {
    "seed": 0,
    "C": 20,
    "n_mask_samples": 1,
    "gate_type": "mlp",
    "gate_hidden_dims": [16],
    "sigmoid_type": "leaky_hard",
    "target_module_patterns": ["linear1", "linear2"],
    "faithfulness_coeff": 1.0,
    "stochastic_recon_coeff": 1.0,
    "stochastic_recon_layerwise_coeff": 1.0,
    "importance_minimality_coeff": 3.0e-3,
    "pnorm": 1.0,
    "output_loss_type": "mse",
    "lr": 1.0e-3,
    "lr_schedule": "cosine",
    "steps": 20,
    "batch_size": 64,
    "eval_batch_size": 64,
    "train_log_freq": 10,
    "eval_freq": 10,
    "slow_eval_freq": 20,
    "print_freq": 10,
    "device": "cpu",
    "eval_metrics": [
        {"classname": "CI_L0"},
        {
            "classname": "IdentityCIError",
            "extra_init_kwargs": {
                "identity_ci": [
                    {"layer_pattern": "linear1", "n_features": 5},
                    {"layer_pattern": "linear2", "n_features": 5},
                ],
                "dense_ci": [{"layer_pattern": "linear*", "k": 2}],
            },
        },
        {"classname": "ComponentActivationDensity"},
        {"classname": "PermutedCIPlots", "extra_init_kwargs": {"identity_patterns": ["linear1"]}},
        {"classname": "UVPlots"},
        {"classname": "CIHistograms", "extra_init_kwargs": {"n_batches_accum": 5}},
    ],
    "pretrained_model_class": "spd.experiments.tms.models.TMSModel",
    "task_config": {
        "task_name": "tms",
        "feature_probability": 0.05,
        "data_generation_type": "at_least_zero_active",
    },
}
# What each translated key means in this format.
EXPECTED_TMS = {
    "metrics": [
        {"name": "ci_l0", "params": {}},
        {
            "name": "identity_ci_error",
            "params": {"identity_layers": ["linear1", "linear2"], "dense_layers": {"linear*": 2}},
        },
        {"name": "component_activation_density", "params": {}},
    ],
    "figures": [
        {"name": "permuted_ci", "params": {}},
        {"name": "uv_matrices", "params": {}},
        {"name": "ci_histograms", "params": {}},
    ],
}
TMS_NOTES = 4  # eval_metrics, print_freq, gate_type, gate_hidden_dims


def _flat_value(config: Config, key: str) -> object:
    """Where a flat loss key of the original (which this format also had) lives in `losses:`."""
    if key.endswith("_coeff"):
        return config.loss_coeffs.get(key.removesuffix("_coeff"))
    term = "stochastic_recon" if key == "n_mask_samples" else "importance_minimality"
    return getattr(config.loss_params(term), key)


# The flat loss keys it shares with this project's earlier format: one warning line each.
TMS_FLAT_NOTES = len(FLAT_KEYS & set(ORIGINAL_TMS))


def _original_tms_target(directory: Path, tied: bool, store_linear2: bool = True) -> Path:
    """The shipped 5-2 weights in the original's layout: tms.pth + tms_train_config.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    state = torch.load(TMS_TARGETS / "tms_5-2" / "model.pth", weights_only=True)
    if not store_linear2:
        del state["linear2.weight"]
    torch.save(state, directory / "tms.pth")
    train_config = {
        "tms_model_config": {
            "n_features": 5,
            "n_hidden": 2,
            "n_hidden_layers": 0,
            "tied_weights": tied,
        },
        "feature_probability": 0.05,
        "batch_size": 1024,
        "steps": 10000,
        "seed": 0,
        "lr": 5e-3,
    }
    (directory / "tms_train_config.yaml").write_text(yaml.safe_dump(train_config))
    return directory / "tms.pth"


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("spd: warning:")]


@pytest.mark.parametrize("tied", [True, False])
def test_an_original_tms_config_loads_and_ties_as_its_target_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tied: bool
) -> None:
    weights = _original_tms_target(tmp_path / "target", tied=tied)
    path = _write(tmp_path / "old.yaml", {**ORIGINAL_TMS, "pretrained_model_path": str(weights)})
    config = load_run_config(path)
    assert config.tied_weights == ([("linear1", "linear2")] if tied else None)
    dumped = config.model_dump(mode="json")
    assert dumped["metrics"] == EXPECTED_TMS["metrics"]
    assert dumped["figures"] == EXPECTED_TMS["figures"]
    # Every shared key keeps its value.
    for key, value in ORIGINAL_TMS.items():
        if key in FLAT_KEYS:
            assert _flat_value(config, key) == value, key
        elif key not in ("eval_metrics", "print_freq"):
            assert dumped[RENAMED_KEYS.get(key, key)] == value, key
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == TMS_NOTES + TMS_FLAT_NOTES + 1, warnings  # + the tying decision
    assert any("eval_metrics -> metrics" in w for w in warnings)
    assert any("tied_weights" in w and "training config" in w for w in warnings)


def test_a_tied_original_target_is_decomposed_with_tied_components(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = _original_tms_target(tmp_path / "target", tied=True, store_linear2=False)
    path = _write(tmp_path / "old.yaml", {**ORIGINAL_TMS, "pretrained_model_path": str(weights)})
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    config = load_run_config(path, {"figures": []})
    run = run_decomposition(config, "tms", make_data, summarize, show_progress=False)
    model = run.result.model
    comps = model.components
    # After training (the factors moved), linear2's components are still linear1's transposed.
    torch.testing.assert_close(comps["linear2"].weight, comps["linear1"].weight.T)
    # The stored-less linear2 of the tied target was filled in as linear1's transpose.
    assert torch.equal(model.target_weight("linear2"), model.target_weight("linear1").T)


def test_an_explicit_tied_weights_in_the_run_config_wins(tmp_path: Path) -> None:
    weights = _original_tms_target(tmp_path / "target", tied=True)
    data = {**ORIGINAL_TMS, "pretrained_model_path": str(weights), "tied_weights": None}
    assert load_run_config(_write(tmp_path / "old.yaml", data)).tied_weights is None


def test_an_original_tms_target_loads_from_its_pth_and_from_its_directory(tmp_path: Path) -> None:
    weights = _original_tms_target(tmp_path / "target", tied=True)
    expected = torch.load(weights, weights_only=True)
    for path in (weights, weights.parent):
        config = load_run_config(
            _write(tmp_path / "old.yaml", {**ORIGINAL_TMS, "pretrained_model_path": str(path)})
        )
        model = load_target_model(config)
        assert isinstance(model, TMSModel) and model.config.n_features == 5
        for key, tensor in expected.items():
            assert torch.equal(model.state_dict()[key], tensor), key


def test_an_original_target_loads_from_a_wandb_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A W&B run already in the download cache (no W&B server is reachable from the tests)."""
    monkeypatch.setenv("SPD_CACHE_DIR", str(tmp_path / "cache"))
    cached = cached_run_dir(WandbRunRef("ent", "proj", "abc123"))
    _original_tms_target(cached, tied=True)
    (cached / COMPLETE_MARKER).write_text("wandb:ent/proj/runs/abc123\n")
    data = {**ORIGINAL_TMS, "pretrained_model_path": "wandb:ent/proj/runs/abc123"}
    config = load_run_config(_write(tmp_path / "old.yaml", data))
    assert config.tied_weights == [("linear1", "linear2")]
    assert isinstance(load_target_model(config), TMSModel)


def test_an_original_resid_mlp_target_and_its_label_coefficients_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    n, d, d_mlp = 5, 8, 3
    state = {
        "W_E": torch.randn(n, d),
        "W_U": torch.randn(d, n),
        **{
            f"layers.{i}.{name}": torch.randn(shape)
            for i in range(2)
            for name, shape in (
                ("mlp_in.weight", (d_mlp, d)),
                ("mlp_in.bias", (d_mlp,)),
                ("mlp_out.weight", (d, d_mlp)),
                ("mlp_out.bias", (d,)),
            )
        },
    }
    directory = tmp_path / "resid"
    directory.mkdir()
    torch.save(state, directory / "resid_mlp.pth")
    model_block = {"n_features": n, "d_embed": d, "d_mlp": d_mlp, "n_layers": 2}
    model_block |= {"act_fn_name": "relu", "in_bias": True, "out_bias": True}
    (directory / "resid_mlp_train_config.yaml").write_text(
        yaml.safe_dump({"resid_mlp_model_config": model_block, "feature_probability": 0.01})
    )
    coeffs = [1.0, 1.5, 2.0, 1.25, 1.75]
    (directory / "label_coeffs.json").write_text(json.dumps(coeffs))
    # float64: the model sums in another order than this hand computation (its factored stream).
    model = ResidMLP.from_pretrained(directory / "resid_mlp.pth").double()
    state = {k: v.double() for k, v in state.items()}
    x = torch.rand(4, n, dtype=torch.float64)
    h = x @ state["W_E"]
    for i in range(2):
        pre = h @ state[f"layers.{i}.mlp_in.weight"].T + state[f"layers.{i}.mlp_in.bias"]
        h = h + torch.relu(pre) @ state[f"layers.{i}.mlp_out.weight"].T
        h = h + state[f"layers.{i}.mlp_out.bias"]
    torch.testing.assert_close(model(x), h @ state["W_U"])
    assert load_label_coeffs(directory).tolist() == coeffs
    # Its run config's task name is the original's.
    original = {
        **{k: v for k, v in ORIGINAL_TMS.items() if k not in ("eval_metrics", "task_config")},
        "C": 10,
        "target_module_patterns": ["layers.*.mlp_in", "layers.*.mlp_out"],
        "eval_metrics": [{"classname": "CI_L0"}],
        "pretrained_model_class": "spd.experiments.resid_mlp.models.ResidMLP",
        "pretrained_model_path": str(directory),
        "task_config": {"task_name": "residual_mlp", "feature_probability": 0.01},
    }
    config = load_run_config(_write(tmp_path / "old.yaml", original))
    assert config.task_config.task_name == "resid_mlp" and config.tied_weights is None
    assert isinstance(load_target_model(config), ResidMLP)


ORIGINAL_LM = {
    "C": 100,
    "target_module_patterns": ["model.embed_tokens"],
    "gate_type": "mlp",
    "gate_hidden_dims": [1],
    "stochastic_recon_layerwise_coeff": 1.0,
    "importance_minimality_coeff": 1.0e-6,
    "pnorm": 2.0,
    "output_loss_type": "kl",
    "lr": 1.0e-4,
    "steps": 50000,
    "batch_size": 4,
    "eval_metrics": [
        {"classname": "CI_L0"},
        {"classname": "CEandKLLosses", "extra_init_kwargs": {"rounding_threshold": 0.1}},
        {"classname": "CIHistograms", "extra_init_kwargs": {"n_batches_accum": 5}},
    ],
    "pretrained_model_class": "transformers.LlamaForCausalLM",
    "pretrained_model_name_hf": "SimpleStories/SimpleStories-1.25M",
    "pretrained_model_output_attr": "logits",
    "tokenizer_name": "SimpleStories/SimpleStories-1.25M",
    "task_config": {
        "task_name": "lm",
        "dataset_name": "SimpleStories/SimpleStories",
        "column_name": "story",
        "train_data_split": "train",
        "eval_data_split": "test",
        "is_tokenized": False,
        "max_seq_len": 512,
        "streaming": False,
    },
}


def test_an_original_lm_config_means_the_same_as_its_hand_translation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(_write(tmp_path / "old.yaml", ORIGINAL_LM))
    by_hand = {
        RENAMED_KEYS.get(k, k): v
        for k, v in ORIGINAL_LM.items()
        if k not in ("eval_metrics", "tokenizer_name")
    }
    by_hand |= {
        "metrics": [
            {"name": "ci_l0"},
            {"name": "ce_and_kl", "params": {"rounding_threshold": 0.1}},
        ],
        "figures": [{"name": "ci_histograms"}],
        "task_config": {
            "task_name": "lm",
            "dataset_name": "SimpleStories/SimpleStories",
            "text_column": "story",
            "train_split": "train",
            "eval_split": "test",
            "max_seq_len": 512,
            "streaming": False,
            "tokenizer_name": "SimpleStories/SimpleStories-1.25M",
        },
    }
    assert config == config_from_dict(by_hand)
    assert isinstance(config.task_config, LMTaskConfig)
    assert config.task_config.text_column == "story"
    # eval_metrics, column_name, train_data_split, eval_data_split, is_tokenized, tokenizer_name,
    # gate_type, gate_hidden_dims, and one line per flat loss key
    warnings = [w for w in _warnings(capsys.readouterr().err) if "old.yaml" in w]
    assert len(warnings) == 8 + len(FLAT_KEYS & set(ORIGINAL_LM))


def _spd_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spd.scripts.config_cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )


def test_spd_config_upgrade_writes_a_config_that_loads_without_translation(tmp_path: Path) -> None:
    weights = _original_tms_target(tmp_path / "target", tied=True)
    old = _write(tmp_path / "old.yaml", {**ORIGINAL_TMS, "pretrained_model_path": str(weights)})
    result = _spd_config("upgrade", str(old))
    assert result.returncode == 0, result.stderr
    assert len(_warnings(result.stderr)) == TMS_NOTES + TMS_FLAT_NOTES + 1
    new = tmp_path / "new.yaml"
    new.write_text(result.stdout)
    upgraded = yaml.safe_load(result.stdout)
    assert "eval_metrics" not in upgraded and upgraded["tied_weights"] == [["linear1", "linear2"]]
    direct: Config = load_run_config(old)
    assert load_config(new) == direct
    again = _spd_config("upgrade", str(new))  # an upgraded file is already in this format
    assert again.returncode == 0 and _warnings(again.stderr) == []
    assert yaml.safe_load(again.stdout) == upgraded


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"eval_metrics": [{"classname": "CIMeanPerComponent"}]},
            r"eval_metrics\[0\] \(CIMeanPerComponent\): classname 'CIMeanPerComponent' has no "
            "translation",
        ),
        (
            {"eval_metrics": [{"classname": "CI_L0", "extra_init_kwargs": {"groups": {}}}]},
            r"eval_metrics\[0\] \(CI_L0\): extra_init_kwargs 'groups' has no translation",
        ),
        ({"image_freq": 100}, "original-format key 'image_freq' has no translation"),
    ],
)
def test_an_original_key_without_a_translation_is_one_line(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    weights = _original_tms_target(tmp_path / "target", tied=True)
    data = {**ORIGINAL_TMS, "pretrained_model_path": str(weights), **change}
    old = _write(tmp_path / "old.yaml", data)
    with pytest.raises(SPDUserError, match=message) as err:
        load_run_config(old)
    assert "\n" not in str(err.value)
    result = _spd_config("upgrade", str(old))
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("spd: error:") and "has no translation" in line


def test_is_tokenized_true_has_no_translation(tmp_path: Path) -> None:
    data = {**ORIGINAL_LM, "task_config": {**ORIGINAL_LM["task_config"], "is_tokenized": True}}
    with pytest.raises(SPDUserError, match="is_tokenized: true has no translation"):
        load_config(_write(tmp_path / "old.yaml", data))
