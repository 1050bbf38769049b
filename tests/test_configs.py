"""The typed config: the shipped TMS configs, validation, one-line errors, overrides, round trip."""

from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from spd.config.loading import apply_overrides, load_config, read_yaml
from spd.config.schema import Config, config_blocks
from spd.config.task_registry import TASKS
from spd.errors import SPDUserError
from spd.experiments.lm.pretrain.config import PretrainConfig, PretrainDataConfig
from spd.experiments.lm.target_models import GPT2LMConfig, LlamaLMConfig
from spd.experiments.resid_mlp.models import ResidMLPModelConfig
from spd.experiments.resid_mlp.train_resid_mlp import ResidMLPTrainConfig
from spd.experiments.tms.models import TMSModelConfig
from spd.experiments.tms.task import TMSTaskConfig
from spd.experiments.tms.train_tms import TMSTrainConfig
from spd.losses.terms.importance_minimality import importance_params
from spd.persistence.run_dir import save_config
from spd.scripts import config_cli
from spd.scripts.config_cli import reference_blocks
from tests.paths import REPO_ROOT, TMS_5_2_CONFIG, TMS_DIR


def _write_config(tmp_path: Path, **changes: Any) -> Path:
    """The tms_5-2 config with top-level keys changed (a value of `...` deletes the key)."""
    data = yaml.safe_load(TMS_5_2_CONFIG.read_text())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _error(path: Path, overrides: dict[str, Any] | None = None) -> str:
    with pytest.raises(SPDUserError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


@pytest.mark.parametrize(
    ("name", "C", "importance", "pnorm", "patterns"),
    [
        ("tms_5_2", 20, 3e-3, 1.0, ["linear1", "linear2"]),
        ("tms_5_2_id", 20, 3e-3, 1.0, ["linear1", "linear2", "hidden_layers.0"]),
        ("tms_40_10", 200, 1e-4, 2.0, ["linear1", "linear2"]),
        ("tms_40_10_id", 200, 1e-4, 2.0, ["linear1", "linear2", "hidden_layers.0"]),
    ],
)
def test_shipped_tms_configs_follow_the_spec(
    name: str, C: int, importance: float, pnorm: float, patterns: list[str]
) -> None:
    config = load_config(TMS_DIR / f"{name}_config.yaml")
    assert config.C == C
    assert sorted(config.target_module_patterns) == sorted(patterns)
    assert config.tied_weights == [("linear1", "linear2")]
    assert (config.ci_fn_type, config.ci_fn_hidden_dims) == ("mlp", [16])
    assert config.loss_coeffs["importance_minimality"] == importance
    assert importance_params(config).pnorm == pnorm
    assert config.loss_coeffs == {
        "faithfulness": 1.0,
        "stochastic_recon": 1.0,
        "stochastic_recon_layerwise": 1.0,
        "importance_minimality": importance,
    }
    assert (config.lr, config.lr_schedule, config.batch_size, config.steps) == (
        1e-3,
        "cosine",
        4096,
        40_000,
    )
    assert config.output_loss_type == "mse" and config.seed == 0
    assert isinstance(config.task_config, TMSTaskConfig)
    assert config.task_config.feature_probability == 0.05
    assert config.tied_weights_mode == "shared_storage"  # the original's dynamics


def test_shipped_ss_emb_config_trains_with_the_original_loss_terms() -> None:
    # The original trains ss_emb with faithfulness 1, beside layerwise stochastic recon 1 and
    # importance 1e-6 at p = 2 (full stochastic recon is the same quantity with one matrix).
    config = load_config(REPO_ROOT / "spd/experiments/lm/ss_emb_config.yaml")
    assert config.loss_coeffs == {
        "faithfulness": 1.0,
        "stochastic_recon_layerwise": 1.0,
        "importance_minimality": 1e-6,
    }
    p = importance_params(config).pnorm
    assert (p, config.output_loss_type, config.lr_warmup_pct) == (2.0, "kl", 0.01)


def test_config_is_frozen() -> None:
    config = load_config(TMS_5_2_CONFIG)
    with pytest.raises(pydantic.ValidationError):
        config.C = 3  # pyright: ignore[reportAttributeAccessIssue]


def test_null_coefficients_are_left_out_of_loss_coeffs() -> None:
    config = load_config(
        TMS_5_2_CONFIG, {"stochastic_recon_layerwise_coeff": None, "schatten_coeff": 0.5}
    )
    assert set(config.loss_coeffs) == {
        "faithfulness",
        "stochastic_recon",
        "importance_minimality",
        "schatten",
    }


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    config = load_config(TMS_5_2_CONFIG, {"lr_warmup_pct": 0.1, "metrics": [{"name": "ci_l0"}]})
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


def test_dotted_overrides_reach_nested_blocks_without_touching_the_input() -> None:
    data = {"C": 3, "task_config": {"task_name": "tms", "feature_probability": 0.05}}
    result = apply_overrides(data, {"task_config.feature_probability": 0.2, "C": 5})
    assert result == {"C": 5, "task_config": {"task_name": "tms", "feature_probability": 0.2}}
    assert data["task_config"]["feature_probability"] == 0.05


def test_override_through_a_scalar_is_a_user_error() -> None:
    with pytest.raises(SPDUserError, match="'C' is not a nested config block"):
        apply_overrides({"C": 3}, {"C.x": 1})


def test_missing_file(tmp_path: Path) -> None:
    assert "config file not found" in _error(tmp_path / "absent.yaml")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("C: 20\nsteps: [1, 2\nlr: 0.1\n")
    message = _error(path)
    assert message.startswith(f"invalid YAML in {path} at line")


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(SPDUserError, match="must contain a YAML mapping"):
        read_yaml(path)


def test_mistyped_nested_key_names_key_path_and_suggestion(tmp_path: Path) -> None:
    path = _write_config(tmp_path, task_config={"task_name": "tms", "feature_probabilty": 0.05})
    message = _error(path)
    assert str(path) in message
    assert "unknown config key 'task_config.feature_probabilty'" in message
    assert "did you mean 'feature_probability'?" in message


def test_mistyped_top_level_key(tmp_path: Path) -> None:
    message = _error(_write_config(tmp_path, importance_minimality_coef=1e-3))
    assert "unknown config key 'importance_minimality_coef'" in message
    assert "'importance_minimality_coeff'" in message


def test_unknown_key_given_as_an_override() -> None:
    assert "unknown config key 'stepz'" in _error(TMS_5_2_CONFIG, {"stepz": 10})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"task_config.feature_probability": 1.5}, "task_config.feature_probability"),
        ({"C": 0}, "C"),
        ({"lr": -1.0}, "lr"),
        ({"lr_warmup_pct": 2.0}, "lr_warmup_pct"),
        ({"steps": "many"}, "steps"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"ci_fn_type": "transformer"}, "ci_fn_type"),
    ],
)
def test_bad_values_name_the_key_and_the_value(overrides: dict[str, Any], key: str) -> None:
    message = _error(TMS_5_2_CONFIG, overrides)
    assert f"invalid value for '{key}'" in message
    assert repr(next(iter(overrides.values()))) in message


def test_missing_required_key(tmp_path: Path) -> None:
    assert "missing required config key 'C'" in _error(_write_config(tmp_path, C=...))


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"gradient_accumulation_steps": 3}, "must be divisible by gradient_accumulation_steps"),
        ({"lr_schedule": "exponential"}, "needs lr_exponential_halflife"),
        (
            {"p_anneal_final_p": 0.5, "p_anneal_start_frac": 0.8, "p_anneal_end_frac": 0.5},
            "p_anneal_end_frac",
        ),
        ({"pretrained_model_path": None}, "set pretrained_model_path"),
        ({"metrics": [{"name": "ci_l1"}]}, "unknown metric 'ci_l1'"),
        (
            {"metrics": [{"name": "ci_l0", "params": {"thresh": 0.1}}]},
            "takes no parameter 'thresh'",
        ),
        ({"figures": [{"name": "nope"}]}, "unknown figure 'nope'"),
    ],
)
def test_inconsistent_settings_are_one_line_errors(
    overrides: dict[str, Any], fragment: str
) -> None:
    assert fragment in _error(TMS_5_2_CONFIG, overrides)


def test_every_coefficient_null_is_an_error() -> None:
    nulls: dict[str, Any] = {
        f"{name}_coeff": None
        for name in Config.model_validate(yaml.safe_load(TMS_5_2_CONFIG.read_text())).loss_coeffs
    }
    assert "nothing would be optimised" in _error(TMS_5_2_CONFIG, nulls)


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    message = _error(_write_config(tmp_path, C=-1, stepz=3))
    assert "'C'" in message and "'stepz'" in message


def test_mistyped_key_inside_a_list_entry() -> None:
    message = _error(TMS_5_2_CONFIG, {"metrics": [{"nme": "ci_l0"}]})
    assert "unknown config key 'metrics.0.nme'; did you mean 'name'?" in message


def test_every_config_field_has_a_description() -> None:
    # The descriptions are the config's reference (JSON schema, editors, `spd-config`): a new
    # field without one would be undocumented everywhere.
    listed = config_blocks()
    tasks = {block for where, block in listed.items() if where.startswith("task_config.")}
    registered = {TASKS.get(name).config_class for name in TASKS.names()}
    assert tasks == registered, "a task block is not listed"
    # The target-training configs (spd/experiments/*/train_*.py) are documented the same way.
    blocks = {
        **listed,
        **reference_blocks(),  # with every loss term's parameter block
        "tms train": TMSTrainConfig,
        "tms model": TMSModelConfig,
        "resid_mlp train": ResidMLPTrainConfig,
        "resid_mlp model": ResidMLPModelConfig,
        "lm pretrain": PretrainConfig,
        "lm pretrain data": PretrainDataConfig,
        "lm llama model": LlamaLMConfig,
        "lm gpt2 model": GPT2LMConfig,
    }
    missing = [
        f"{where}.{name}"
        for where, block in blocks.items()
        for name, field in block.model_fields.items()
        if not field.description
    ]
    assert missing == []


def test_spd_config_fields_lists_every_key_with_its_type_default_and_meaning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_cli.main(["fields"])
    listing = capsys.readouterr().out
    headers = [line for line in listing.splitlines() if not line.startswith(" ")]
    assert [h.split(":")[0] for h in headers] == list(Config.model_fields)
    assert 'compile: "auto" | "on" | "off" = "auto"' in headers
    assert "C: int | list[ModuleC] (required)" in headers
    assert 'metrics: list[MetricSpec] = [{"name": "ci_l0", "params": {}}]' in headers
    # The defaults print as JSON, which a YAML file takes as written.
    assert "save_freq: int | null = null" in headers
    config_cli.main(["fields", "task_config.resid_mlp"])
    block = capsys.readouterr().out
    assert block.startswith('task_name: "resid_mlp" = "resid_mlp"\n    Selects this task\n')
    assert "feature_probability: float = 0.01\n    Chance" in block
