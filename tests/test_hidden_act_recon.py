"""Hidden-activation reconstruction (docs/method.md, 'Training options of the 2026 objective'):
the loss term and the metric, on `TwoLinear` (fc1 = I, then fc2 = I with bias b; C = 2).

By hand, with fc1's components V = I, U = diag(2, 3) and fc2's exact, x = [1, 1] and the masks
fc1: [1, 0.5], fc2: [0.5, 1]: fc1's input is x in both passes; fc2's input is fc1's output,
x V diag(m) U = [2, 1.5] in the masked pass and x in the target's, so its squared difference is
1² + 0.5² = 1.25 over 2 elements. The term is 1.25 / 4 (both modules' inputs: 4 elements).
"""

import pytest
import torch
from torch import Tensor

from spd.eval import metrics
from spd.eval.context import EvalContext
from spd.eval.evaluate import evaluate
from spd.losses.inputs import LossInputs
from spd.losses.term import SampledParams
from spd.losses.terms.hidden_act_recon import TERM, hidden_act_errors
from spd.models.component_model import ComponentModel
from spd.models.module_mask import ModuleMask
from tests.toy_targets import TwoLinear, two_linear_config

X = torch.tensor([[1.0, 1.0]])
MASKS = {
    "fc1": ModuleMask(component=torch.tensor([[1.0, 0.5]])),
    "fc2": ModuleMask(component=torch.tensor([[0.5, 1.0]])),
}


def _model(fc1_u: Tensor) -> ComponentModel:
    model = ComponentModel(TwoLinear(), ["fc1", "fc2"], C=2)
    with torch.no_grad():
        model.components["fc1"].V.copy_(torch.eye(2))
        model.components["fc1"].U.copy_(fc1_u)
        model.components["fc2"].V.copy_(torch.eye(2))
        model.components["fc2"].U.copy_(torch.eye(2))
    return model


def _inputs(model: ComponentModel, pre_acts: dict[str, Tensor]) -> LossInputs:
    ones = {name: torch.ones(1, 2) for name in model.module_names}
    return LossInputs(
        model=model,
        batch=X,
        target_out=model(X),
        pre_acts=pre_acts,
        ci=ones,
        ci_upper=ones,
        output_loss_type="mse",
        pnorm=1.0,
        rows=None,
    )


def test_exact_components_with_masks_all_one_reconstruct_every_input() -> None:
    model = _model(torch.eye(2))
    _, pre_acts = model.forward_with_pre_acts(X)
    ones = {name: ModuleMask(component=torch.ones(1, 2)) for name in model.module_names}
    value = TERM.compute(_inputs(model, pre_acts), SampledParams(), ones)
    assert value.item() == 0.0


def test_fixed_masks_give_the_hand_value() -> None:
    model = _model(torch.diag(torch.tensor([2.0, 3.0])))
    _, pre_acts = model.forward_with_pre_acts(X)
    value = TERM.compute(_inputs(model, pre_acts), SampledParams(), MASKS)
    assert value.item() == pytest.approx(1.25 / 4, rel=1e-6)
    errors = hidden_act_errors(model, X, pre_acts, MASKS)
    assert {name: (sq.item(), n) for name, (sq, n) in errors.items()} == {
        "fc1": (0.0, 2),
        "fc2": (1.25, 2),
    }
    # Without the step's own inputs (a target that streams them), one more target pass gives them.
    again = TERM.compute(_inputs(model, {}), SampledParams(), MASKS)
    assert again.item() == pytest.approx(1.25 / 4, rel=1e-6)


def test_the_term_has_gradients_for_the_components() -> None:
    model = _model(torch.diag(torch.tensor([2.0, 3.0])))
    _, pre_acts = model.forward_with_pre_acts(X)
    TERM.compute(_inputs(model, pre_acts), SampledParams(), MASKS).backward()
    grad = model.components["fc1"].U.grad
    assert grad is not None and bool(grad.abs().sum() > 0)


def test_the_metric_reports_each_module_and_the_total(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(torch.diag(torch.tensor([2.0, 3.0])))
    monkeypatch.setattr(metrics, "_stochastic_module_masks", lambda ci, config: MASKS)
    ctx = EvalContext(model, two_linear_config(), [X], step=0)
    assert metrics.hidden_act_recon(ctx) == pytest.approx(
        {
            "hidden_act_recon/fc1": 0.0,
            "hidden_act_recon/fc2": 1.25 / 2,
            "hidden_act_recon/total": 1.25 / 4,
        }
    )


def test_the_metric_leaves_the_random_state_alone() -> None:
    model = _model(torch.diag(torch.tensor([2.0, 3.0])))
    config = two_linear_config(metrics=[{"name": "hidden_act_recon"}])
    torch.manual_seed(0)
    results, _ = evaluate(model, config, [X.repeat(4, 1)], step=0, include_slow=False)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))
    assert results["eval/hidden_act_recon/total"] > 0
