"""The training options of the 2026 objective (docs/method.md, 'Training options of the 2026
objective'): importance minimality's frequency term, the faithfulness warm-up, gradient clipping
per parameter group and bf16 autocast, on cases worked out by hand.

The hand model is `TwoLinear` (fc1 = I, fc2 = I with a bias; C = 2 each).
"""

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.experiments.tms.task import make_data
from spd.loading.targets import load_target_model
from spd.losses.batch import batch_loss
from spd.losses.inputs import LossInputs
from spd.losses.precision import check_autocast
from spd.losses.row_selection import RowSelection, select_rows
from spd.losses.terms.faithfulness import faithfulness_loss
from spd.losses.terms.importance_minimality import TERM as IMPORTANCE
from spd.losses.terms.importance_minimality import (
    ImportanceMinimalityParams,
    frequency_importance_loss,
    importance_minimality_loss,
)
from spd.models.component_model import ComponentModel, build_component_model
from spd.train.data_shard import data_shard
from spd.train.optimize import optimize
from spd.train.step import clip_gradients
from spd.train.warmup import component_parameters, faithfulness_warmup
from tests.recording_sink import RecordingSink
from tests.resumable_runs import tiny_config
from tests.toy_targets import TwoLinear, two_linear_config

X = torch.tensor([[1.0, 1.0], [0.5, -1.0]])
CI_UPPER = {
    "fc1": torch.tensor([[0.5, 0.0], [1.0, 0.25]]),
    "fc2": torch.tensor([[0.0, 1.0], [0.75, 0.5]]),
}


def _config(**fields: Any) -> Config:
    return two_linear_config(**{"losses": [{"name": "faithfulness", "coeff": 1.0}], **fields})


def _model(config: Config) -> ComponentModel:
    torch.manual_seed(0)
    model = build_component_model(TwoLinear(), config)
    model.init_components_from_target(0)
    return model


def _inputs(model: ComponentModel, ci_upper: dict[str, Tensor], pnorm: float) -> LossInputs:
    return LossInputs(
        model=model,
        batch=X,
        target_out=X,
        pre_acts={},
        ci=ci_upper,
        ci_upper=ci_upper,
        output_loss_type="mse",
        pnorm=pnorm,
        rows=None,
    )


def _by_hand(ci_upper: dict[str, Tensor], p: float, beta: float, world_size: int) -> float:
    """Σ_l Σ_c [S_c/n + β (S_c/n) log2(1 + S_c · world_size)] in plain Python."""
    total = 0.0
    for g in ci_upper.values():
        rows = g.tolist()
        n = len(rows)
        for c in range(len(rows[0])):
            s = sum((row[c] + 1e-12) ** p for row in rows)
            total += s / n + beta * (s / n) * math.log2(1 + s * world_size)
    return total


# ----- importance minimality with the frequency term -----


@pytest.mark.parametrize("world_size", [1, 4])
def test_frequency_term_matches_the_formula(world_size: int) -> None:
    value = frequency_importance_loss(CI_UPPER, pnorm=2.0, beta=0.1, world_size=world_size)
    assert value.item() == pytest.approx(_by_hand(CI_UPPER, 2.0, 0.1, world_size), rel=1e-6)


def test_the_term_uses_beta_and_beta_zero_is_the_classic_term_exactly() -> None:
    model = _model(_config())
    inputs = _inputs(model, CI_UPPER, pnorm=2.0)
    classic = importance_minimality_loss(CI_UPPER, 2.0)
    zero = IMPORTANCE.compute(inputs, ImportanceMinimalityParams(pnorm=2.0), {})
    assert torch.equal(zero, classic)
    # Without a process group the world size is 1.
    with_beta = IMPORTANCE.compute(inputs, ImportanceMinimalityParams(pnorm=2.0, beta=0.1), {})
    assert with_beta.item() == pytest.approx(_by_hand(CI_UPPER, 2.0, 0.1, 1), rel=1e-6)
    assert with_beta.item() > classic.item()
    # The formula at β = 0 is the classic term.
    reduced = frequency_importance_loss(CI_UPPER, 2.0, beta=0.0, world_size=1)
    torch.testing.assert_close(reduced, classic)


def test_frequency_term_counts_the_inert_rows_under_a_row_selection() -> None:
    # Rows 2, 3 and 4 are the same (inert) row; the selection keeps row 2 for all three.
    full = torch.tensor([[0.5, 0.0], [1.0, 0.25], [0.1, 0.2], [0.1, 0.2], [0.1, 0.2]])
    rows = RowSelection(torch.tensor([0, 1, 2]), torch.tensor([1.0, 1.0, 3.0]), n_rows=5)
    kept = frequency_importance_loss({"fc1": rows.take(full)}, 2.0, 0.1, 1, rows)
    assert kept.item() == pytest.approx(_by_hand({"fc1": full}, 2.0, 0.1, 1), rel=1e-6)


def test_frequency_term_is_the_full_batchs_under_the_cpu_row_selection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tiny_config(
        **{
            "losses.importance_minimality.params.pnorm": 2.0,
            "losses.importance_minimality.params.beta": 0.1,
        }
    )
    model = build_component_model(load_target_model(config), config)
    model.init_components_from_target(0)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # random CI functions: an inert row's CI is not 0
        for p in model.ci_fns.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    x = torch.rand(64, 5, generator=torch.Generator().manual_seed(3))
    x[torch.rand(64, 5, generator=torch.Generator().manual_seed(4)) < 0.85] = 0
    _, pre_acts = model.forward_with_pre_acts(x)
    assert select_rows(model, pre_acts) is not None
    torch.manual_seed(5)
    selected = batch_loss(model, x, config, pnorm=2.0).terms["importance_minimality"]
    monkeypatch.setattr(model.target, "independent_rows", False)
    torch.manual_seed(5)
    full = batch_loss(model, x, config, pnorm=2.0).terms["importance_minimality"]
    torch.testing.assert_close(selected, full, rtol=1e-5, atol=1e-8)


# ----- faithfulness warm-up -----


def _perturbed(config: Config) -> ComponentModel:
    model = _model(config)
    with torch.no_grad():
        for p in component_parameters(model):
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model


def test_warmup_lowers_faithfulness_and_leaves_the_ci_functions_untouched() -> None:
    config = _config(faithfulness_warmup_steps=30, faithfulness_warmup_lr=1e-2)
    model = _perturbed(config)
    ci_before = [p.detach().clone() for p in model.ci_fns.parameters()]
    targets = [model.target_weight(name).clone() for name in model.module_names]
    before = faithfulness_loss(model).item()
    faithfulness_warmup(model, config)
    assert faithfulness_loss(model).item() < 0.5 * before
    assert all(torch.equal(a, b) for a, b in zip(ci_before, model.ci_fns.parameters(), strict=True))
    assert all(
        torch.equal(w, model.target_weight(name))
        for w, name in zip(targets, model.module_names, strict=True)
    )
    assert all(p.grad is None for p in model.parameters())


def test_one_warmup_step_is_adamws_first_step_by_hand() -> None:
    # AdamW's first step moves each entry by lr · g / (|g| + ε) = lr · sign(g), then decays it.
    config = _config(
        faithfulness_warmup_steps=1,
        faithfulness_warmup_lr=0.01,
        faithfulness_warmup_weight_decay=0.5,
    )
    model = _perturbed(config)
    params = component_parameters(model)
    before = [p.detach().clone() for p in params]
    grads = torch.autograd.grad(faithfulness_loss(model), params)
    faithfulness_warmup(model, config)
    for p, p0, g in zip(params, before, grads, strict=True):
        expected = p0 * (1 - 0.01 * 0.5) - 0.01 * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)


def test_no_warmup_steps_changes_nothing() -> None:
    config = _config()
    model = _perturbed(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    faithfulness_warmup(model, config)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# ----- gradient clipping, each group to its own norm -----


def _set_grads(model: ComponentModel, components: float, ci_fns: float) -> None:
    """Every gradient entry of a group set to one value (so a group's norm is value · √count)."""
    for p in component_parameters(model):
        p.grad = torch.full_like(p, components)
    for p in model.ci_fns.parameters():
        p.grad = torch.full_like(p, ci_fns)


def _group_norm(params: list[torch.nn.Parameter]) -> float:
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None))


def test_each_group_is_clipped_to_its_own_norm() -> None:
    config = _config(grad_clip_norm_components=1.0, grad_clip_norm_ci_fns=1e6)
    model = _model(config)
    _set_grads(model, components=3.0, ci_fns=2.0)
    comps, cis = component_parameters(model), list(model.ci_fns.parameters())
    n_comp = sum(p.numel() for p in comps)
    ci_grads = [p.grad.clone() for p in cis if p.grad is not None]
    norms = clip_gradients(model, config)
    assert float(norms["components"]) == pytest.approx(3.0 * math.sqrt(n_comp), rel=1e-6)
    # Components clipped to norm 1: every entry 3 · 1 / (3 √n) = 1 / √n.
    assert _group_norm(comps) == pytest.approx(1.0, rel=1e-5)
    for p in comps:
        assert p.grad is not None
        torch.testing.assert_close(p.grad, torch.full_like(p, 1 / math.sqrt(n_comp)))
    # The CI functions are under their bound: untouched, bit for bit.
    assert all(
        p.grad is not None and torch.equal(p.grad, g) for p, g in zip(cis, ci_grads, strict=True)
    )


def test_only_the_configured_group_is_clipped() -> None:
    config = _config(grad_clip_norm_ci_fns=0.5)
    model = _model(config)
    _set_grads(model, components=3.0, ci_fns=2.0)
    comps, cis = component_parameters(model), list(model.ci_fns.parameters())
    n_ci = sum(p.numel() for p in cis)
    norms = clip_gradients(model, config)
    assert list(norms) == ["ci_fns"]
    assert float(norms["ci_fns"]) == pytest.approx(2.0 * math.sqrt(n_ci), rel=1e-6)
    assert _group_norm(cis) == pytest.approx(0.5, rel=1e-5)
    assert all(p.grad is not None and bool((p.grad == 3.0).all()) for p in comps)
    assert clip_gradients(model, _config()) == {}


# ----- runs with the options on -----


def _run(config: Config) -> tuple[ComponentModel, RecordingSink]:
    device = torch.device("cpu")
    target = load_target_model(config)
    train, evaluation = make_data(config, target, device, data_shard(config))
    sink = RecordingSink()
    result = optimize(target, config, device, train, evaluation, sinks=[sink], show_progress=False)
    return result.model, sink


def test_bf16_autocast_trains_with_finite_losses_and_fp32_weights() -> None:
    config = tiny_config(steps=6, train_log_freq=2, autocast_bf16=True, compile="off")
    model, sink = _run(config)
    rows = sink.train_rows()
    assert len(rows) == 4
    assert all(math.isfinite(v) for row in rows for k, v in row.items() if k.startswith("train/"))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # The losses differ from an fp32 run's: the forward passes did run in bf16.
    _, fp32 = _run(tiny_config(steps=6, train_log_freq=2, compile="off"))
    assert fp32.train_rows()[-1]["train/loss/total"] != rows[-1]["train/loss/total"]


def test_a_run_logs_the_norms_before_clipping() -> None:
    config = tiny_config(steps=2, train_log_freq=1, grad_clip_norm_components=1e-4)
    _, sink = _run(config)
    row = sink.train_rows()[0]
    assert row["train/grad_norm_pre_clip/components"] > 1e-4
    assert "train/grad_norm_pre_clip/ci_fns" not in row


def test_autocast_on_a_device_without_it_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.amp.autocast_mode, "is_autocast_available", lambda _: False)
    with pytest.raises(SPDUserError, match="autocast_bf16"):
        check_autocast(torch.device("cpu"))
