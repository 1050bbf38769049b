"""What one optimiser step of `optimize()` does, against AdamW's first step worked out by hand.

AdamW's first step moves every parameter by −lr · g / (|g| + ε) (both moments are bias-corrected
to g and g², weight decay 0), so it can be written down from the first batch's gradient alone.
The gradient is computed here on a model built exactly as `optimize()` builds it (same seed, same
initialisation, deterministic loss terms only), then compared with what `optimize()` did.

Also: `optimize()` hands the annealed p, not the configured one, to the loss.
"""

from typing import Any

import pytest
import torch
from torch import Tensor

from spd.config.schema import Config, TiedWeightsMode
from spd.losses.batch import batch_loss
from spd.losses.terms.importance_minimality import importance_params
from spd.models.component_model import ComponentModel, build_component_model
from spd.train.optimize import optimize
from spd.train.setup import trainable_parameters
from tests.fixture_types import ConfigFactory, TargetFactory

CPU = torch.device("cpu")
LR = 0.01
ADAM_EPS = 1e-8  # torch's AdamW default, which optimize() keeps

DETERMINISTIC: dict[str, Any] = {
    "stochastic_recon_coeff": None,
    "stochastic_recon_layerwise_coeff": None,
    "recon_coeff": 1.0,
    "recon_layerwise_coeff": 1.0,
    "faithfulness_coeff": 1.0,
    "importance_minimality_coeff": 3e-3,
    "lr": LR,
    "lr_schedule": "constant",
    "train_log_freq": 1,
    "eval_freq": 100,
    "slow_eval_freq": 100,
    "metrics": [],
}


def _batch() -> Tensor:
    generator = torch.Generator().manual_seed(9)
    values = torch.rand(64, 5, generator=generator)
    return values * (torch.rand(64, 5, generator=generator) < 0.3)


def _model_as_optimize_builds_it(config: Config, target: torch.nn.Module) -> ComponentModel:
    torch.manual_seed(config.seed)
    model = build_component_model(target, config)
    model.init_components_from_target(config.seed)
    return model


def _adam_first_step(grad: Tensor) -> Tensor:
    return -LR * grad / (grad.abs() + ADAM_EPS)


def _one_optimize_step(config: Config, target: torch.nn.Module) -> ComponentModel:
    # steps=1: step 0 takes the optimiser step, step 1 only logs (it draws a second batch).
    batch = _batch()
    result = optimize(
        target, config, CPU, iter([batch, batch]), iter([batch] * 4), show_progress=False
    )
    return result.model


@pytest.mark.parametrize("mode", ["shared_storage", "single_parameter"])
def test_first_adamw_step_matches_the_hand_formula_for_each_tie_mode(
    quick_tms_config: ConfigFactory, tms_target: TargetFactory, mode: TiedWeightsMode
) -> None:
    config = quick_tms_config(steps=1, tied_weights_mode=mode, **DETERMINISTIC)
    reference = _model_as_optimize_builds_it(config, tms_target())
    before = [p.detach().clone() for p in trainable_parameters(reference)]
    batch_loss(reference, _batch(), config, importance_params(config).pnorm).total.backward()
    source, tied = reference.components["linear1"], reference.components["linear2"]
    if mode == "shared_storage":
        # Two parameters over one storage, two AdamW updates to the same numbers: the source's
        # from its own gradient, the tied module's (transposed back) from its own.
        expected_V = source.V + _adam_first_step(source._V.grad) + _adam_first_step(tied._U.grad).T  # pyright: ignore[reportArgumentType]
        expected_U = source.U + _adam_first_step(source._U.grad) + _adam_first_step(tied._V.grad).T  # pyright: ignore[reportArgumentType]
    else:
        # One parameter whose gradient is the sum of both modules': one update.
        assert list(tied.parameters()) == []
        expected_V = source.V + _adam_first_step(source._V.grad)  # pyright: ignore[reportArgumentType]
        expected_U = source.U + _adam_first_step(source._U.grad)  # pyright: ignore[reportArgumentType]

    trained = _one_optimize_step(config, tms_target())
    after_source = trained.components["linear1"]
    torch.testing.assert_close(after_source.V, expected_V.detach(), rtol=0, atol=2e-6)
    torch.testing.assert_close(after_source.U, expected_U.detach(), rtol=0, atol=2e-6)
    # The tied module still reads the same numbers, transposed.
    assert torch.equal(trained.components["linear2"].V, after_source.U.T)
    assert torch.equal(trained.components["linear2"].U, after_source.V.T)

    # The size of the step: one update of ~lr per entry, or two that add up or cancel.
    delta = torch.cat(
        [(after_source.V - before[0]).flatten(), (after_source.U - before[1]).flatten()]
    )
    mean_step = float(delta.detach().abs().mean()) / LR
    # (Here the two gradients nearly always agree in sign: 2.000 lr measured.)
    if mode == "single_parameter":
        assert mean_step == pytest.approx(1.0, abs=0.01)
    else:
        assert 1.3 < mean_step <= 2.0 + 1e-3


def test_first_adamw_step_has_no_weight_decay(
    quick_tms_config: ConfigFactory, tms_target: TargetFactory
) -> None:
    # Every trainable parameter, CI functions included (one parameter per tied factor, so each
    # takes exactly one update): with weight decay w, each would also shrink by lr · w · p, far
    # beyond the tolerance for all but the smallest entries.
    config = quick_tms_config(steps=1, tied_weights_mode="single_parameter", **DETERMINISTIC)
    reference = _model_as_optimize_builds_it(config, tms_target())
    batch_loss(reference, _batch(), config, importance_params(config).pnorm).total.backward()
    trained = _one_optimize_step(config, tms_target())
    pairs = list(zip(trainable_parameters(reference), trainable_parameters(trained), strict=True))
    assert len(pairs) == 2 + 2 * 4  # linear1's V and U; per layer 2 CI-function weights, 2 biases
    for p_ref, p_trained in pairs:
        assert p_ref.grad is not None
        expected = p_ref.detach() + _adam_first_step(p_ref.grad)
        torch.testing.assert_close(p_trained.detach(), expected, rtol=0, atol=2e-6)


class _TrainLog:
    """Keeps the logged importance loss and p of each step."""

    def __init__(self) -> None:
        self.importance: list[float] = []
        self.pnorm: list[float] = []

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if "train/loss/importance_minimality" in metrics:
            self.importance.append(metrics["train/loss/importance_minimality"])
            self.pnorm.append(metrics["train/pnorm"])

    def save_figure(self, step: int, name: str, figure: object) -> None:
        pass


def _logged_run(config: Config, target: torch.nn.Module) -> tuple[_TrainLog, list[Tensor]]:
    log = _TrainLog()
    batches = [_batch()] * (config.steps + 1)
    result = optimize(
        target, config, CPU, iter(batches), iter(batches * 4), sinks=[log], show_progress=False
    )
    return log, [p.detach().clone() for p in trainable_parameters(result.model)]


def test_the_annealed_p_reaches_the_loss(
    quick_tms_config: ConfigFactory, tms_target: TargetFactory
) -> None:
    # p annealed from 1 to 2 at fraction 0 (start = end = 0): p is 2 from step 0, so the run must
    # be the run configured with p = 2, step for step, and not the one with p = 1.
    common = {**DETERMINISTIC, "steps": 3, "importance_minimality_coeff": 0.1}
    annealed = quick_tms_config(
        pnorm=1.0, p_anneal_final_p=2.0, p_anneal_start_frac=0.0, p_anneal_end_frac=0.0, **common
    )
    p2 = quick_tms_config(pnorm=2.0, **common)
    p1 = quick_tms_config(pnorm=1.0, **common)
    (log, params), (log_p2, params_p2), (log_p1, _) = (
        _logged_run(config, tms_target()) for config in (annealed, p2, p1)
    )
    assert log.pnorm == [2.0] * 4  # what is logged
    assert log.importance == pytest.approx(log_p2.importance, rel=1e-6)  # what is used
    for a, b in zip(params, params_p2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # Not vacuous: p = 1 gives another importance loss from the first step on.
    assert log_p1.importance[0] != pytest.approx(log_p2.importance[0], rel=1e-3)


@pytest.mark.parametrize("mode", ["shared_storage", "single_parameter"])
def test_shared_storage_tied_factors_get_a_parameter_group_of_their_own(
    quick_tms_config: ConfigFactory, tms_target: TargetFactory, mode: TiedWeightsMode
) -> None:
    # One fused AdamW kernel per group: two parameters over one storage must not share a kernel
    # (on CUDA their updates could race and one be lost); group after group applies both.
    config = quick_tms_config(tied_weights_mode=mode)
    model = _model_as_optimize_builds_it(config, tms_target())
    params = trainable_parameters(model)
    groups = model.optimizer_param_groups(params)
    assert sum(len(g["params"]) for g in groups) == len(params)
    tied = list(model.components["linear2"].parameters())
    if mode == "shared_storage":
        assert len(groups) == 2 and groups[1]["params"] == tied
    else:
        assert len(groups) == 1 and tied == []
