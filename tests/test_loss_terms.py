"""Every registered loss term (`spd.config.loss_registry.LOSS_TERMS`), parametrised by name: it
computes a finite value with gradients, and honours (or refuses) its parameters; and the
`losses:` config form: its errors, and the flat keys of earlier versions, each translated with
one warning line.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import BaseModel
from torch import Tensor

from spd.config.flat_loss_keys import FLAT_COEFF_DEFAULTS
from spd.config.loading import config_from_dict, load_config
from spd.config.loss_registry import LOSS_TERMS, LossTermRegistry
from spd.config.schema import Config, StrictModel
from spd.errors import SPDUserError
from spd.experiments.tms.task import TMSTaskConfig
from spd.losses.batch import batch_loss
from spd.losses.term import LossTerm
from spd.losses.terms.importance_minimality import importance_params
from spd.models.component_model import ComponentModel
from tests.paths import TMS_5_2_CONFIG
from tests.toy_targets import TinyLM

TOKENS = torch.tensor([[0, 1, 2, 1], [2, 2, 0, 1]])

# For each term, two parameter blocks that must give different values (a term without
# parameters: None, and it must refuse any). A new term adds its case here.
PARAM_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]] | None] = {
    "faithfulness": None,
    "recon": None,
    "recon_layerwise": None,
    "stochastic_recon": ({"n_mask_samples": 1}, {"n_mask_samples": 3}),
    "stochastic_recon_layerwise": ({"n_mask_samples": 1}, {"n_mask_samples": 3}),
    "embedding_recon": ({"unembed": False}, {"unembed": True}),
    "importance_minimality": ({"pnorm": 1.0}, {"pnorm": 0.5}),
    "schatten": ({}, {"pnorm": 3.0}),
    "out_recon": None,
    "hidden_act_recon": ({"n_mask_samples": 1}, {"n_mask_samples": 3}),
    "stochastic_recon_subset": (
        {"router": {"type": "all"}},
        {"router": {"type": "static_probability", "p": 0.5}},
    ),
    "ci_masked_recon_subset": (
        {"router": {"type": "all"}},
        {"router": {"type": "uniform_k_subset"}},
    ),
    "pgd_recon": ({"n_steps": 1, "step_size": 0.1}, {"n_steps": 3, "step_size": 0.5}),
    "pgd_recon_subset": (
        {"router": {"type": "all"}},
        {"router": {"type": "static_probability", "p": 0.5}},
    ),
    "pgd_recon_layerwise": (
        {"init": "ones", "step_size": 0.5},
        {"init": "zeroes", "step_size": 0.5},
    ),
    "persistent_pgd_recon": ({"init": "zeroes"}, {"init": "random"}),
    "persistent_pgd_recon_subset": (
        {"router": {"type": "all"}, "init": "zeroes"},
        {"router": {"type": "all"}, "init": "random"},
    ),
}


def _config(name: str, params: dict[str, Any] | None = None) -> Config:
    """A TinyLM config (embedding and lm_head decomposed) computing only term `name`."""
    return Config(
        C=3,
        target_module_patterns=["embed", "lm_head"],
        pretrained_model_class="tests.toy_targets.TinyLM",
        pretrained_model_path="unused",
        task_config=TMSTaskConfig(),
        losses=[{"name": name, "coeff": 1.0, "params": params or {}}],  # pyright: ignore[reportArgumentType]
    )


def _model() -> ComponentModel:
    torch.manual_seed(0)
    model = ComponentModel(TinyLM(vocab=3, d_model=4), ["embed", "lm_head"], C=3)
    torch.manual_seed(1)
    with torch.no_grad():  # components away from the target, so that every term is non-zero
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _term_value(model: ComponentModel, config: Config) -> Tensor:
    torch.manual_seed(2)
    result = batch_loss(model, TOKENS, config, importance_params(config).pnorm)
    assert list(result.terms) == [config.losses[0].name]
    return result.total


def test_every_registered_term_has_a_parameter_case() -> None:
    assert sorted(PARAM_CASES) == LOSS_TERMS.names()


@pytest.mark.parametrize("name", LOSS_TERMS.names())
def test_each_term_computes_a_finite_value_with_gradients(name: str) -> None:
    model = _model()
    total = _term_value(model, _config(name))
    assert total.ndim == 0 and bool(torch.isfinite(total)) and total.item() > 0
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads), "no gradient reached the model"
    assert all(bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("name", LOSS_TERMS.names())
def test_each_term_honours_its_parameters(name: str) -> None:
    term = LOSS_TERMS.get(name)
    assert isinstance(term, LossTerm) and issubclass(term.params, StrictModel)
    for field, info in term.params.model_fields.items():
        assert info.description, f"{name}.params.{field} has no description"
    case = PARAM_CASES[name]
    if case is None:
        assert not term.params.model_fields
        with pytest.raises(SPDUserError, match=f"loss term '{name}' has no parameter 'p'"):
            config_from_dict(_tms_data(losses=[_entry(name, {"p": 1})]))
        return
    a = _term_value(_model(), _config(name, case[0]))
    b = _term_value(_model(), _config(name, case[1]))
    assert a.item() != pytest.approx(b.item(), rel=1e-4)


def _entry(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "coeff": 1.0, "params": params or {}}


@dataclass(frozen=True)
class _Plugin:
    name: str
    module: str
    params: type[BaseModel] = StrictModel


def test_the_computation_order_is_the_registry_tuple_whatever_was_registered_first() -> None:
    # Two modules that are imported already (importing them again registers nothing new here).
    first, second = "spd.losses.terms.faithfulness", "spd.losses.terms.recon"
    registry: LossTermRegistry[_Plugin] = LossTermRegistry("test term", (first, second))
    registry.register("user", _Plugin("user", "my_project.terms"))
    registry.register("b", _Plugin("b", second))
    registry.register("a", _Plugin("a", first))
    assert [p.name for p in registry.in_order()] == ["a", "b", "user"]
    assert [t.module for t in LOSS_TERMS.in_order()] == list(LOSS_TERMS.builtin_modules)


# ----- the losses: form and its errors -----


def _tms_data(**changes: Any) -> dict[str, Any]:
    """The shipped tms_5-2 config as a mapping, with `changes`."""
    return {**yaml.safe_load(TMS_5_2_CONFIG.read_text()), **changes}


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        (
            [_entry("recon_typo")],
            "unknown loss term 'recon_typo'; available: ci_masked_recon_subset, embedding_recon, ",
        ),
        ([_entry("recon"), _entry("recon")], "loss term 'recon' is listed twice"),
        (
            [_entry("importance_minimality", {"pnrom": 2})],
            "loss term 'importance_minimality' has no parameter 'pnrom'; it takes: pnorm, ",
        ),
        (
            [_entry("importance_minimality", {"pnorm": -1})],
            "loss term 'importance_minimality': parameter 'pnorm': Input should be greater than 0",
        ),
        ([{"name": "recon"}], "missing required config key 'losses.0.coeff'"),
        ([_entry("recon") | {"coeff": None}], "every loss coefficient is null"),
    ],
)
def test_bad_losses_entries_are_one_line_errors(losses: list[Any], message: str) -> None:
    with pytest.raises(SPDUserError) as err:
        config_from_dict(_tms_data(losses=losses), source="cfg.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("cfg.yaml: ")


def test_a_file_with_both_forms_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    data = _tms_data(losses=[_entry("recon")], pnorm=2.0)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SPDUserError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}: config has both losses: and the flat loss key 'pnorm'; move it into its "
        "term's losses: entry"
    )


NEW_FORM = [
    _entry("faithfulness"),
    _entry("stochastic_recon"),
    _entry("stochastic_recon_layerwise"),
    {"name": "importance_minimality", "coeff": 3.0e-3, "params": {"pnorm": 1.0}},
]
FLAT_FORM: dict[str, Any] = {
    "faithfulness_coeff": 1.0,
    "stochastic_recon_coeff": 1.0,
    "stochastic_recon_layerwise_coeff": 1.0,
    "importance_minimality_coeff": 3.0e-3,
    "pnorm": 1.0,
}


def _flat_file(tmp_path: Path, **flat: Any) -> Path:
    data = _tms_data()
    data.pop("losses")
    path = tmp_path / "flat.yaml"
    path.write_text(yaml.safe_dump({**data, **flat}))
    return path


def _warnings(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "warning" in line]


def test_the_shipped_flat_block_loads_as_the_new_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(_flat_file(tmp_path, **FLAT_FORM))
    assert config == config_from_dict(_tms_data(losses=NEW_FORM))
    lines = _warnings(capsys)
    prefix = f"spd: warning: {tmp_path / 'flat.yaml'}: flat loss key '"
    assert sorted(line.removeprefix(prefix).split("'")[0] for line in lines) == sorted(FLAT_FORM)
    assert all(line.startswith(prefix) and "' -> losses: [{name: " in line for line in lines)


# Each flat key alone (the others at their defaults of the flat form): the `losses:` it means,
# and what its warning line says.
DEFAULT_TERMS = [
    _entry("faithfulness"),
    _entry("stochastic_recon"),
    {"name": "importance_minimality", "coeff": 1e-3},
]
FLAT_CASES: list[tuple[dict[str, Any], list[dict[str, Any]], str]] = [
    *[
        (
            {f"{name}_coeff": 0.5},
            [
                *[e for e in DEFAULT_TERMS if e["name"] != name],
                {"name": name, "coeff": 0.5},
            ],
            f"-> losses: [{{name: {name}, coeff: 0.5}}]",
        )
        # The flat keys are a closed set: terms added since exist only in losses:.
        for name in FLAT_COEFF_DEFAULTS
    ],
    (
        {"faithfulness_coeff": None},
        DEFAULT_TERMS[1:],
        "'faithfulness_coeff: null' -> leave 'faithfulness' out of losses:",
    ),
    *[
        (
            {key: value},
            [*DEFAULT_TERMS[:2], {**DEFAULT_TERMS[2], "params": {key: value}}],
            f"-> losses: [{{name: importance_minimality, params: {{{key}: {value}}}}}]",
        )
        for key, value in [
            ("pnorm", 2.0),
            ("p_anneal_final_p", 0.5),
            ("p_anneal_start_frac", 0.5),
            ("p_anneal_end_frac", 0.5),
        ]
    ],
    (
        {"is_embed_unembed_recon": True, "embedding_recon_coeff": 1.0},
        [*DEFAULT_TERMS, {"name": "embedding_recon", "coeff": 1.0, "params": {"unembed": True}}],
        "'is_embed_unembed_recon' -> losses: [{name: embedding_recon, params: {unembed: true}}]",
    ),
    (
        {"is_embed_unembed_recon": True},
        DEFAULT_TERMS,
        "'is_embed_unembed_recon' dropped: no term in losses: takes it",
    ),
    (
        {"n_mask_samples": 2},
        [DEFAULT_TERMS[0], {**DEFAULT_TERMS[1], "params": {"n_mask_samples": 2}}, DEFAULT_TERMS[2]],
        "'n_mask_samples' -> losses: [{name: stochastic_recon, params: {n_mask_samples: 2}}]",
    ),
]


@pytest.mark.parametrize(
    ("flat", "losses", "note"), FLAT_CASES, ids=[str(c[0]) for c in FLAT_CASES]
)
def test_each_flat_key_is_translated_with_one_warning_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flat: dict[str, Any],
    losses: list[dict[str, Any]],
    note: str,
) -> None:
    config = load_config(_flat_file(tmp_path, **flat))
    expected = config_from_dict(_tms_data(losses=losses))
    assert config.loss_coeffs == expected.loss_coeffs
    for name in LOSS_TERMS.names():
        assert config.loss_params(name) == expected.loss_params(name), name
    lines = _warnings(capsys)
    assert len(lines) == len(flat), lines
    assert any(line.endswith(note) for line in lines), lines


def test_schatten_alone_takes_a_fixed_flat_pnorm_and_refuses_an_annealed_one(
    tmp_path: Path,
) -> None:
    off = {"importance_minimality_coeff": None, "schatten_coeff": 1.0}
    config = load_config(_flat_file(tmp_path, pnorm=2.0, **off))
    assert config.loss_params("schatten") == LOSS_TERMS.get("schatten").params(pnorm=2.0)
    with pytest.raises(SPDUserError, match=r"p annealing .* has no translation"):
        load_config(_flat_file(tmp_path, p_anneal_final_p=2.0, **off))


def test_flat_and_named_overrides_reach_the_losses_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tms.yaml"  # a path of its own: each warning is printed once per source
    path.write_text(TMS_5_2_CONFIG.read_text())
    config = load_config(
        path,
        {
            "importance_minimality_coeff": 0.5,
            "n_mask_samples": 2,
            "losses.schatten.coeff": 0.25,
            "losses.stochastic_recon_layerwise.coeff": None,
        },
    )
    assert config.loss_coeffs == {
        "faithfulness": 1.0,
        "stochastic_recon": 1.0,
        "importance_minimality": 0.5,
        "schatten": 0.25,
    }
    params = config.loss_params("stochastic_recon")
    assert params.model_dump() == {"n_mask_samples": 2}
    lines = _warnings(capsys)
    assert len(lines) == 2
    assert lines[0].endswith(
        "flat loss override 'importance_minimality_coeff' -> losses.importance_minimality.coeff"
    )
    assert lines[1].endswith(
        "flat loss override 'n_mask_samples' -> losses.stochastic_recon.params.n_mask_samples, "
        "losses.stochastic_recon_layerwise.params.n_mask_samples"
    )


def test_a_config_without_losses_gets_the_defaults_even_with_an_override(tmp_path: Path) -> None:
    path = _flat_file(tmp_path)
    assert load_config(path).loss_coeffs == {
        "faithfulness": 1.0,
        "stochastic_recon": 1.0,
        "importance_minimality": 1e-3,
    }
    assert load_config(path, {"losses.recon.coeff": 2.0}).loss_coeffs == {
        "faithfulness": 1.0,
        "stochastic_recon": 1.0,
        "importance_minimality": 1e-3,
        "recon": 2.0,
    }
