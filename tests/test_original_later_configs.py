"""Configs of the original SPD implementation's later format (loss and metric blocks by classname,
`module_info`, block-valued `lr_schedule`, `ci_config`): each translated key is one warning line,
a key without a translation one error line, and the fixtures mean what this project's own tms_5-2
and resid_mlp1 configs mean, and run through the decomposition scripts."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from spd.config.loading import load_config
from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.loading.run_config import load_run_config
from tests.paths import REPO_ROOT
from tests.resumable_runs import script_env
from tests.test_original_configs import _original_tms_target, _spd_config, _warnings, _write

FIXTURES = REPO_ROOT / "tests" / "fixtures"
TMS_LATER = FIXTURES / "original_tms_5-2_later_config.yaml"
RESID_LATER = FIXTURES / "original_resid_mlp1_later_config.yaml"
EXPERIMENTS = REPO_ROOT / "spd" / "experiments"
RESID_TARGET = "spd/experiments/resid_mlp/targets/resid_mlp1"
# The fixtures' translated keys: one warning line each.
TMS_LATER_KEYS = [
    "n_mask_samples",
    "module_info",
    "identity_module_info",
    "loss_metric_configs",
    "lr_schedule block",
    "eval_metric_configs",
]
RESID_LATER_KEYS = [*TMS_LATER_KEYS, "ci_config"]
# What the original's configs cannot say: the metrics and figures only this project has.
OURS_ONLY = ("metrics", "figures")


def _assert_same_settings(translated: Config, ours: Config) -> None:
    """Every setting equal; ours may select metrics and figures the original does not have."""
    mine, theirs = translated.model_dump(mode="json"), ours.model_dump(mode="json")
    for key in theirs:
        if key not in OURS_ONLY:
            assert mine[key] == theirs[key], key
    for key in OURS_ONLY:
        assert mine[key] and all(spec in theirs[key] for spec in mine[key]), key


def _copy(fixture: Path, directory: Path) -> Path:
    copy = directory / fixture.name
    copy.write_text(fixture.read_text())
    return copy


def _later_warnings(stderr: str) -> list[str]:
    return [w for w in _warnings(stderr) if "original-format key" in w]


def test_the_tms_fixture_means_our_tms_5_2_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The original's target layout, tied as ours is: the run config takes its tying from it.
    target = _original_tms_target(tmp_path / "target", tied=True)
    capsys.readouterr()
    # A copy: each file's warnings are printed once per process.
    translated = load_run_config(_copy(TMS_LATER, tmp_path), {"pretrained_model_path": str(target)})
    warnings = _later_warnings(capsys.readouterr().err)
    ours = load_config(EXPERIMENTS / "tms" / "tms_5_2_config.yaml")
    _assert_same_settings(
        translated.model_copy(update={"pretrained_model_path": None}),
        ours.model_copy(update={"pretrained_model_path": None}),
    )
    assert translated.tied_weights == [("linear1", "linear2")]
    assert len(warnings) == len(TMS_LATER_KEYS), warnings
    for key in TMS_LATER_KEYS:
        assert sum(f"key: {key}" in w for w in warnings) == 1, key


def test_the_tms_fixture_on_our_own_tms_target_ties_as_the_original_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # This project's TMS targets are always tied; the original's shipped tms_5-2 target was too.
    ours = EXPERIMENTS / "tms" / "targets" / "tms_5-2"
    capsys.readouterr()
    translated = load_run_config(_copy(TMS_LATER, tmp_path), {"pretrained_model_path": str(ours)})
    assert translated.tied_weights == [("linear1", "linear2")]
    assert sum("always tied" in w for w in _warnings(capsys.readouterr().err)) == 1
    # A config in this project's format without the key is untied: nothing is added.
    settings = load_config(EXPERIMENTS / "tms" / "tms_5_2_config.yaml").model_dump(mode="json")
    del settings["tied_weights"]
    plain = _write(tmp_path / "plain.yaml", settings | {"pretrained_model_path": str(ours)})
    assert load_run_config(plain).tied_weights is None


def test_the_resid_mlp_fixture_means_our_resid_mlp1_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    copy = _copy(RESID_LATER, tmp_path)
    translated = load_run_config(copy, {"pretrained_model_path": RESID_TARGET})
    warnings = _later_warnings(capsys.readouterr().err)
    ours = load_config(EXPERIMENTS / "resid_mlp" / "resid_mlp1_config.yaml")
    _assert_same_settings(translated, ours)
    assert len(warnings) == len(RESID_LATER_KEYS), warnings
    for key in RESID_LATER_KEYS:
        assert sum(f"key: {key}" in w for w in warnings) == 1, key


# A small config in this format; each case below adds later-format keys to it.
BASE: dict[str, Any] = {
    "C": 4,
    "target_module_patterns": ["linear1", "linear2"],
    "pretrained_model_class": "spd.experiments.tms.models.TMSModel",
    "pretrained_model_path": "spd/experiments/tms/targets/tms_5-2",
    "task_config": {"task_name": "tms", "feature_probability": 0.05},
}
SUBSET_LOSSES = [
    {"classname": "FaithfulnessLoss", "coeff": 2.0},
    {
        "classname": "StochasticReconSubsetLoss",
        "coeff": 0.5,
        "routing": {"type": "uniform_k_subset"},
    },
    {
        "classname": "CIMaskedReconSubsetLoss",
        "coeff": 0.25,
        "routing": {"type": "static_probability", "p": 0.3},
    },
    {"classname": "StochasticHiddenActsReconLoss", "coeff": 0.1},
    {"classname": "CIMaskedReconLoss", "coeff": 0.2},
    {"classname": "CIMaskedReconLayerwiseLoss", "coeff": 0.3},
    {
        "classname": "ImportanceMinimalityLoss",
        "coeff": 1e-3,
        "pnorm": 2.0,
        "beta": 0.1,
        "p_anneal_start_frac": 0.0,
        "p_anneal_final_p": 0.4,
        "p_anneal_end_frac": 0.5,
        "eps": 1e-12,
    },
]
# (later-format keys, keys of BASE they replace, the key its warning names, what it means here)
CASES: list[tuple[dict[str, Any], tuple[str, ...], str, dict[str, Any]]] = [
    (
        {"loss_metric_configs": SUBSET_LOSSES},
        (),
        "loss_metric_configs",
        {
            "losses": [
                {"name": "faithfulness", "coeff": 2.0, "params": {}},
                {"name": "recon", "coeff": 0.2, "params": {}},
                {"name": "recon_layerwise", "coeff": 0.3, "params": {}},
                {
                    "name": "importance_minimality",
                    "coeff": 1e-3,
                    "params": {
                        "pnorm": 2.0,
                        "beta": 0.1,
                        "p_anneal_start_frac": 0.0,
                        "p_anneal_final_p": 0.4,
                        "p_anneal_end_frac": 0.5,
                    },
                },
                {
                    "name": "stochastic_recon_subset",
                    "coeff": 0.5,
                    "params": {"router": {"type": "uniform_k_subset"}},
                },
                {
                    "name": "ci_masked_recon_subset",
                    "coeff": 0.25,
                    "params": {"router": {"type": "static_probability", "p": 0.3}},
                },
                {"name": "hidden_act_recon", "coeff": 0.1, "params": {}},
            ]
        },
    ),
    (
        {
            "eval_metric_configs": [
                {"classname": "CI_L0", "groups": None},
                {"classname": "CEandKLLosses", "rounding_threshold": 0.1},
                {
                    "classname": "IdentityCIError",
                    "identity_ci": None,
                    "dense_ci": [{"layer_pattern": "linear*", "k": 2}],
                },
                {"classname": "UVPlots", "identity_patterns": ["linear1"], "dense_patterns": None},
            ]
        },
        (),
        "eval_metric_configs",
        {
            "metrics": [
                {"name": "ci_l0"},
                {"name": "ce_and_kl", "params": {"rounding_threshold": 0.1}},
                {"name": "identity_ci_error", "params": {"dense_layers": {"linear*": 2}}},
            ],
            "figures": [{"name": "uv_matrices"}],
        },
    ),
    (
        {
            "module_info": [
                {"module_pattern": "linear1", "C": 3},
                {"module_pattern": "linear2", "C": 5},
            ]
        },
        ("C", "target_module_patterns"),
        "module_info",
        {
            "target_module_patterns": ["linear1", "linear2"],
            "C": [{"module_pattern": "linear1", "C": 3}, {"module_pattern": "linear2", "C": 5}],
        },
    ),
    ({"identity_module_info": None}, (), "identity_module_info", {}),
    (
        {"ci_config": {"mode": "layerwise", "fn_type": "vector_mlp", "hidden_dims": [8, 4]}},
        (),
        "ci_config",
        {"ci_fn_type": "vector_mlp", "ci_fn_hidden_dims": [8, 4]},
    ),
    (
        {
            "lr_schedule": {
                "start_val": 5e-4,
                "fn_type": "linear",
                "warmup_pct": 0.1,
                "final_val_frac": 0.0,
            }
        },
        (),
        "lr_schedule block",
        {"lr": 5e-4, "lr_schedule": "linear", "lr_warmup_pct": 0.1},
    ),
    (
        {"pretrained_model_name": "some/hub-id"},
        (),
        "pretrained_model_name",
        {"pretrained_model_name_hf": "some/hub-id"},
    ),
]


@pytest.mark.parametrize(("later", "replaced", "key", "expected"), CASES, ids=[c[2] for c in CASES])
def test_each_later_key_is_translated_with_one_warning_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    later: dict[str, Any],
    replaced: tuple[str, ...],
    key: str,
    expected: dict[str, Any],
) -> None:
    data = {**{k: v for k, v in BASE.items() if k not in replaced}, **later}
    capsys.readouterr()
    config = load_config(_write(tmp_path / "later.yaml", data))
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and f"original-format key: {key}" in warnings[0], warnings
    by_hand = Config.model_validate(
        {**{k: v for k, v in BASE.items() if k not in replaced}, **expected}
    )
    # The translation lists the terms in the order they are computed; the comparison ignores it.
    assert {s.name: s for s in config.losses} == {s.name: s for s in by_hand.losses}
    assert config.model_copy(update={"losses": []}) == by_hand.model_copy(update={"losses": []})


def test_n_mask_samples_goes_to_every_sampled_term_with_one_warning_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {**BASE, "n_mask_samples": 3, "loss_metric_configs": SUBSET_LOSSES}
    capsys.readouterr()
    config = load_config(_write(tmp_path / "later.yaml", data))
    warnings = _warnings(capsys.readouterr().err)
    (note,) = [w for w in warnings if "key: n_mask_samples" in w]
    assert len(warnings) == 2
    sampled = {"stochastic_recon_subset", "ci_masked_recon_subset", "hidden_act_recon"}
    assert set(note.split("n_mask_samples: 3 of ")[1].split(", ")) == sampled
    for spec in config.losses:
        assert spec.params.get("n_mask_samples") == (3 if spec.name in sampled else None)


def test_keys_both_formats_share_pass_through_without_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = {
        "sampling": "binomial",
        "use_delta_component": True,
        "faithfulness_warmup_steps": 7,
        "faithfulness_warmup_lr": 0.01,
        "faithfulness_warmup_weight_decay": 0.1,
        "grad_clip_norm_components": 1.5,
        "grad_clip_norm_ci_fns": 2.5,
        "autocast_bf16": True,
        "ci_fn_type": "vector_mlp",
        "ci_fn_hidden_dims": [4],
        "lr_schedule": "cosine",
        "lr_warmup_pct": 0.2,
    }
    data = {**BASE, "identity_module_info": None, **shared}
    capsys.readouterr()
    config = load_config(_write(tmp_path / "later.yaml", data))
    assert len(_warnings(capsys.readouterr().err)) == 1  # identity_module_info's
    dumped = config.model_dump(mode="json")
    assert {k: dumped[k] for k in shared} == shared


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_freq": 10}, "original-format key 'image_freq' has no translation"),
        (
            {
                "loss_metric_configs": [
                    {"classname": "PersistentPGDReconLoss", "coeff": 1.0, "n_steps": 1}
                ]
            },
            r"loss_metric_configs\[0\] \(PersistentPGDReconLoss\): loss term "
            "'persistent_pgd_recon' has no parameter 'n_steps'",
        ),
        (
            {"loss_metric_configs": [{"classname": "UnknownLoss", "coeff": 1.0}]},
            "classname 'UnknownLoss' has no translation",
        ),
        (
            {"loss_metric_configs": [{"classname": "FaithfulnessLoss"}]},
            r"\(FaithfulnessLoss\) has no 'coeff'",
        ),
        (
            {
                "loss_metric_configs": [
                    {"classname": "ImportanceMinimalityLoss", "coeff": 1.0, "eps": 1e-6}
                ]
            },
            "eps is fixed at 1e-12 here",
        ),
        (
            {"loss_metric_configs": [{"classname": "FaithfulnessLoss", "coeff": 1.0, "scale": 2}]},
            "loss term 'faithfulness' has no parameter 'scale'",
        ),
        (
            {"ci_fn_type": "made_up_mlp", "identity_module_info": None},
            "ci_fn_type 'made_up_mlp' is not supported here yet",
        ),
        (
            {"ci_config": {"mode": "global", "fn_type": "global_shared_mlp"}},
            "ci_config mode 'global' .* is not supported here yet",
        ),
        (
            {"identity_module_info": [{"module_pattern": "linear1", "C": 5}]},
            "identity_module_info: decomposing inserted identity matrices is not supported here yet",
        ),
        (
            {"eval_metric_configs": [{"classname": "CIMeanPerComponent"}]},
            r"eval_metric_configs\[0\] \(CIMeanPerComponent\): classname 'CIMeanPerComponent' is "
            "not supported here yet",
        ),
        (
            {"eval_metric_configs": [{"classname": "StochasticReconLoss"}]},
            "loss terms are not evaluated on eval batches here",
        ),
        (
            {"lr_schedule": {"fn_type": "cosine", "final_val_frac": 0.1}},
            "lr_schedule.final_val_frac 0.1: a cosine schedule here decays to 0",
        ),
        ({"lr_schedule": {"fn_type": "cosine", "period": 3}}, "lr_schedule block: key 'period'"),
        ({"module_info": [{"module_pattern": "linear1"}]}, "module_info must be a non-empty list"),
        (
            {"module_info": [{"module_pattern": "linear1", "C": 2, "rank": 1}]},
            "module_info must be a non-empty list",
        ),
    ],
)
def test_a_later_key_without_a_translation_is_one_line(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    data = {**BASE, "loss_metric_configs": [{"classname": "FaithfulnessLoss", "coeff": 1.0}]}
    if "module_info" in change:  # it replaces these
        data = {k: v for k, v in data.items() if k not in ("C", "target_module_patterns")}
    path = _write(tmp_path / "later.yaml", {**data, **change})
    with pytest.raises(SPDUserError, match=message) as err:
        load_config(path)
    assert "\n" not in str(err.value)
    result = _spd_config("upgrade", str(path))
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("spd: error:") and re.search(message, line)


def test_spd_config_upgrade_writes_the_later_fixture_in_this_format(tmp_path: Path) -> None:
    target = _original_tms_target(tmp_path / "target", tied=True)
    result = _spd_config("upgrade", str(TMS_LATER), "--target", str(target))
    assert result.returncode == 0, result.stderr
    assert len(_later_warnings(result.stderr)) == len(TMS_LATER_KEYS)
    upgraded = yaml.safe_load(result.stdout)
    later_only = {
        "loss_metric_configs",
        "eval_metric_configs",
        "module_info",
        "identity_module_info",
    }
    assert not later_only & set(upgraded) and upgraded["lr_schedule"] == "cosine"
    new = _write(tmp_path / "new.yaml", upgraded)
    assert load_config(new) == load_run_config(TMS_LATER, {"pretrained_model_path": str(target)})
    again = _spd_config("upgrade", str(new))  # already in this format: unchanged, no warnings
    assert again.returncode == 0 and _warnings(again.stderr) == []
    assert yaml.safe_load(again.stdout) == upgraded


TINY_RUN = {
    "device": "cpu",
    "steps": 4,
    "batch_size": 32,
    "eval_batch_size": 32,
    "train_log_freq": 2,
    "eval_freq": 2,
    "slow_eval_freq": 1_000_000,
    "slow_eval_on_first_step": False,
    "save_freq": None,
}


@pytest.mark.parametrize(
    ("script", "fixture", "task"),
    [
        ("tms/tms_decomposition.py", TMS_LATER, "tms"),
        ("resid_mlp/resid_mlp_decomposition.py", RESID_LATER, "resid_mlp"),
    ],
)
def test_a_later_fixture_runs_through_its_decomposition_script(
    tmp_path: Path, script: str, fixture: Path, task: str
) -> None:
    target = _original_tms_target(tmp_path / "target", tied=True) if task == "tms" else RESID_TARGET
    overrides = {**TINY_RUN, "pretrained_model_path": str(target)}
    args = [arg for k, v in overrides.items() for arg in ("--override", f"{k}={json.dumps(v)}")]
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / script), str(fixture), *args, "--no-progress"],
        env=script_env(tmp_path / "out"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "out").iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train/loss/total" in r]
    assert [r["step"] for r in logged] == [0, 2, 4]
    assert {"train/loss/faithfulness", "train/loss/stochastic_recon_layerwise"} <= logged[-1].keys()
    assert any("eval/ci_l0" in key for r in rows for key in r)
