"""The fresh adversarial (PGD) terms and metrics (docs/method.md, 'Adversarial (PGD)
reconstruction'): one ascent step by hand, the loss at the final sources with no gradient through
the ascent, the layer-wise mean, routes, the delta source, shared sources, the multi-batch metric
against one big batch, the parameter checks, the original's blocks, and shared sources on two
real gloo ranks."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor

from spd.config.loading import config_from_dict, load_config
from spd.config.loss_registry import LOSS_TERMS
from spd.errors import SPDUserError
from spd.eval.context import EvalContext
from spd.eval.pgd_metrics import pgd_recon_multibatch
from spd.experiments.registry import get_experiment
from spd.losses import adversarial_sources
from spd.losses.adversarial_sources import PGDParams, Sources, init_sources, source_masks
from spd.losses.inputs import LossInputs
from spd.losses.routing import RouterParams, draw_routes
from spd.losses.term import LossTerm
from spd.losses.terms.importance_minimality import importance_params
from spd.losses.terms.pgd_recon_subset import RoutedPGDParams
from spd.losses.terms.recon import recon_loss
from spd.models.component_model import ComponentModel, build_component_model
from spd.train.memory_estimate import microbatch_forward_passes, pgd_passes
from tests.paths import REPO_ROOT, TMS_5_2_CONFIG
from tests.toy_targets import TwoLinear, two_linear_config

# Row 0 reaches both subcomponents of fc1; row 1 only the second.
X = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
STEP = 0.25


@pytest.fixture
def hand_model() -> ComponentModel:
    """TwoLinear (fc1 = I; fc2 = I, bias [½, −½]) with hand factors (V = I): fc1 U = diag(½, 3),
    so Δ = diag(½, −2); fc2 U = diag(2, 1)."""
    model = ComponentModel(TwoLinear(), ["fc1", "fc2"], C=2)
    with torch.no_grad():
        model.components["fc1"].V.copy_(torch.eye(2))
        model.components["fc1"].U.copy_(torch.diag(torch.tensor([0.5, 3.0])))
        model.components["fc2"].V.copy_(torch.eye(2))
        model.components["fc2"].U.copy_(torch.diag(torch.tensor([2.0, 1.0])))
    return model


def _inputs(model: ComponentModel, ci: dict[str, Tensor], delta: bool = False) -> LossInputs:
    """The inputs of a term on X with the CI given by hand (only the modules in `ci` are
    masked; the others run their target weight)."""
    with torch.no_grad():
        target = model(X)
    return LossInputs(
        model=model,
        batch=X,
        target_out=target,
        pre_acts={},
        ci=ci,
        ci_upper=ci,
        output_loss_type="mse",
        pnorm=1.0,
        rows=None,
        use_delta_component=delta,
    )


def _term(name: str) -> LossTerm[Any]:
    term = LOSS_TERMS.get(name)
    assert isinstance(term, LossTerm)
    return term


class _Recorder:
    """Wraps `signed_ascent` to keep the initial and final sources of each call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[Sources, Sources]] = []
        original = adversarial_sources.signed_ascent

        def recorded(gradient: Any, sources: Sources, *args: Any) -> Sources:
            start = {n: s.clone() for n, s in sources.items()}
            final = original(gradient, sources, *args)
            self.calls.append((start, final))
            return final

        monkeypatch.setattr(adversarial_sources, "signed_ascent", recorded)


# ----- the ascent by hand -----


def test_one_ascent_step_moves_each_source_by_the_step_and_clamps(
    hand_model: ComponentModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fc1 alone, g = 0 so m = s: h = [½ s0 x0, 3 s1 x1], D = mean (h − x)². ∂D/∂s0 ∝ (½ s0 − 1) x0²
    # < 0 where x0 ≠ 0 (0 on row 1: s0 stays); ∂D/∂s1 ∝ (3 s1 − 1) x1²: up above ⅓, down below.
    recorder = _Recorder(monkeypatch)
    inputs = _inputs(hand_model, {"fc1": torch.zeros(2, 2)})
    params = PGDParams(init="random", step_size=STEP, n_steps=1)
    torch.manual_seed(3)
    masks = _term("pgd_recon").masks(inputs, params)  # pyright: ignore[reportOptionalCall]
    (start, final) = recorder.calls[0]
    s0 = start["fc1"]
    down = torch.tensor([[-1.0, 0.0], [0.0, 0.0]])
    down[:, 1] = torch.where(s0[:, 1] > 1 / 3, 1.0, -1.0)
    expected = (s0 + STEP * down).clamp(0, 1)
    torch.testing.assert_close(final["fc1"], expected)
    torch.testing.assert_close(masks["fc1"].component, expected)  # m = s where g = 0
    # From ones, two steps: s0 1 → ¾ → ½ on row 0 (stays 1 on row 1), s1 pinned at 1 by the clamp.
    params = PGDParams(init="ones", step_size=STEP, n_steps=2)
    masks = _term("pgd_recon").masks(inputs, params)  # pyright: ignore[reportOptionalCall]
    torch.testing.assert_close(masks["fc1"].component, torch.tensor([[0.5, 1.0], [1.0, 1.0]]))


def _grad(t: Tensor) -> Tensor:
    return torch.zeros_like(t) if t.grad is None else t.grad.clone()


def test_the_loss_is_at_the_final_sources_with_no_gradient_through_the_ascent(
    hand_model: ComponentModel,
) -> None:
    # Final sources from ones: [[½, 1], [1, 1]] → h = [[¼, 3], [0, 6]] against x = [[1, 1], [0, 2]]:
    # D = (0.75² + 2² + 0 + 4²) / 4.
    g = torch.zeros(2, 2, requires_grad=True)
    inputs = _inputs(hand_model, {"fc1": g})
    term = _term("pgd_recon")
    params = PGDParams(init="ones", step_size=STEP, n_steps=2)
    masks = term.masks(inputs, params)  # pyright: ignore[reportOptionalCall]
    # The ascent left no gradient on the model's parameters.
    assert all(p.grad is None for p in hand_model.parameters())
    value = term.compute(inputs, params, masks)
    torch.testing.assert_close(value, torch.tensor((0.75**2 + 4 + 16) / 4))
    value.backward()
    grads = [_grad(g)] + [_grad(p) for p in hand_model.parameters() if p.requires_grad]
    # The same pass built by hand with the final sources as constants.
    hand_model.zero_grad()
    g2 = torch.zeros(2, 2, requires_grad=True)
    final = {"fc1": torch.tensor([[0.5, 1.0], [1.0, 1.0]])}
    by_hand = recon_loss(hand_model, X, inputs.target_out, source_masks({"fc1": g2}, final), "mse")
    by_hand.backward()
    expected = [_grad(g2)] + [_grad(p) for p in hand_model.parameters() if p.requires_grad]
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert float(grads[0].abs().sum()) > 0  # the CI does get a gradient, through m = g + (1 − g) s


def test_layerwise_is_the_mean_over_modules_each_under_its_own_attack(
    hand_model: ComponentModel,
) -> None:
    # fc1 alone: as above, D = 20.5625 / 4. fc2 alone (g = [0, ½], h = x): z = [2 s0 x0, (½ + ½ s1) x1]
    # from ones: ∂D/∂s0 ∝ (2 − 1) > 0, clamped at 1; s1 = 1 is exact (zero gradient): D = 1 / 4.
    ci = {"fc1": torch.zeros(2, 2), "fc2": torch.tensor([[0.0, 0.5], [0.0, 0.5]])}
    inputs = _inputs(hand_model, ci)
    term = _term("pgd_recon_layerwise")
    params = PGDParams(init="ones", step_size=STEP, n_steps=2)
    value = term.compute(inputs, params, term.masks(inputs, params))  # pyright: ignore[reportOptionalCall]
    torch.testing.assert_close(value, torch.tensor((20.5625 / 4 + 0.25) / 2))


def _a_draw_with_a_position_routed_away(
    router: RouterParams, ci: dict[str, Tensor]
) -> tuple[int, dict[str, Tensor]]:
    """The first seed whose draw routes some position away from some module, and that draw."""
    for seed in range(100):
        torch.manual_seed(seed)
        routes = draw_routes(router, ci)
        assert routes is not None
        if any(bool((~r).any()) for r in routes.values()):
            return seed, routes
    raise AssertionError("no draw routes a position away")


def test_subset_routes_are_drawn_first_and_held_over_the_ascent(
    hand_model: ComponentModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder(monkeypatch)
    ci = {"fc1": torch.full((2, 2), 0.2), "fc2": torch.full((2, 2), 0.3)}
    inputs = _inputs(hand_model, ci)
    params = RoutedPGDParams(router=RouterParams(type="uniform_k_subset"), n_steps=2, step_size=0.1)
    seed, routes = _a_draw_with_a_position_routed_away(params.router, ci)
    torch.manual_seed(seed)
    masks = _term("pgd_recon_subset").masks(inputs, params)  # pyright: ignore[reportOptionalCall]
    start, final = recorder.calls[0]
    for name in ci:
        route = masks[name].route
        assert route is not None and torch.equal(route, routes[name])
        # A routed-away position never reaches the output: its sources keep their start.
        away = ~routes[name]
        torch.testing.assert_close(final[name][away], start[name][away])
    # Routing every position reproduces pgd_recon (same draws: `all` draws nothing).
    every = RoutedPGDParams(router=RouterParams(type="all"), n_steps=2, step_size=0.1)
    torch.manual_seed(5)
    subset = _term("pgd_recon_subset")
    a = subset.compute(inputs, every, subset.masks(inputs, every))  # pyright: ignore[reportOptionalCall]
    torch.manual_seed(5)
    plain = PGDParams(n_steps=2, step_size=0.1)
    full = _term("pgd_recon")
    b = full.compute(inputs, plain, full.masks(inputs, plain))  # pyright: ignore[reportOptionalCall]
    torch.testing.assert_close(a, b)


def test_the_delta_mask_is_one_more_source(hand_model: ComponentModel) -> None:
    # From zeroes, fc1 alone with the delta component: h = 0, so e = −x. ∂D/∂m_Δ ∝ Σ e ⊙ Δ x
    # = −½ x0² + 2 x1² > 0 on both rows → m_Δ = ¼; s0, s1 have negative gradients, clamped at 0.
    inputs = _inputs(hand_model, {"fc1": torch.zeros(2, 2)}, delta=True)
    params = PGDParams(init="zeroes", step_size=STEP, n_steps=1)
    masks = _term("pgd_recon").masks(inputs, params)  # pyright: ignore[reportOptionalCall]
    assert masks["fc1"].delta is not None
    torch.testing.assert_close(masks["fc1"].delta, torch.tensor([STEP, STEP]))
    torch.testing.assert_close(masks["fc1"].component, torch.zeros(2, 2))
    # One source vector of C + 1 per module when shared, C + 1 per position otherwise.
    ci = {"fc1": torch.zeros(2, 2), "fc2": torch.zeros(2, 2)}
    shared = init_sources(ci, "random", "shared_across_batch", True)
    unique = init_sources(ci, "random", "unique_per_datapoint", True)
    assert {n: tuple(s.shape) for n, s in shared.items()} == {"fc1": (3,), "fc2": (3,)}
    assert {n: tuple(s.shape) for n, s in unique.items()} == {"fc1": (2, 3), "fc2": (2, 3)}


def test_shared_sources_are_one_vector_per_module(
    hand_model: ComponentModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fc1 alone, g = 0: ∂D/∂s0 = Σ rows < 0, ∂D/∂s1 ∝ (3 s1 − 1) Σ x1²: one step for both rows.
    recorder = _Recorder(monkeypatch)
    inputs = _inputs(hand_model, {"fc1": torch.zeros(2, 2)})
    params = PGDParams(init="random", step_size=STEP, n_steps=1, scope="shared_across_batch")
    torch.manual_seed(0)
    masks = _term("pgd_recon").masks(inputs, params)  # pyright: ignore[reportOptionalCall]
    start, final = recorder.calls[0]
    s = start["fc1"]
    assert s.shape == (2,)
    up = 1.0 if float(s[1]) > 1 / 3 else -1.0
    expected = (s + STEP * torch.tensor([-1.0, up])).clamp(0, 1)
    torch.testing.assert_close(final["fc1"], expected)
    torch.testing.assert_close(masks["fc1"].component, expected.expand(2, 2))


# ----- the evaluation metrics -----


def _eval_model() -> tuple[ComponentModel, Any]:
    config = two_linear_config(C=3, use_delta_component=True, n_eval_steps=3)
    torch.manual_seed(0)
    model = build_component_model(TwoLinear(), config)
    model.init_components_from_target(0)
    with torch.no_grad():  # away from the target, so that the attack has something to find
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return model, config


def test_the_multibatch_metric_equals_one_big_batch() -> None:
    # Shared sources, equal batch sizes: the summed gradient of the batch means is twice the big
    # batch's mean gradient, so the signs, the ascent and the mean D are the same.
    model, config = _eval_model()
    torch.manual_seed(1)
    x1, x2, x3 = torch.randn(6, 2), torch.randn(6, 2), torch.randn(6, 2)

    def metric(inputs: list[Tensor], n_batches: int | None) -> float:
        torch.manual_seed(7)
        ctx = EvalContext(model=model, config=config, inputs=inputs, step=0)
        return pgd_recon_multibatch(ctx, n_batches=n_batches, n_steps=5)["pgd_recon_multibatch"]

    split = metric([x1, x2, x3], 2)
    assert split == pytest.approx(metric([torch.cat([x1, x2])], None), rel=1e-5)
    assert split != pytest.approx(metric([x1, x2, x3], None), rel=1e-3)
    # The attack raised D above the starting sources' (no steps is the random-mask D).
    ctx = EvalContext(model=model, config=config, inputs=[x1], step=0)
    torch.manual_seed(7)
    attacked = pgd_recon_multibatch(ctx, n_steps=5, step_size=0.2)["pgd_recon_multibatch"]
    torch.manual_seed(7)
    with torch.no_grad():
        b = ctx.batches[0]
        start = init_sources(b.ci, "random", "shared_across_batch", True)
        before = float(recon_loss(model, b.inputs, b.target_out, source_masks(b.ci, start), "mse"))
    assert attacked > before


# ----- configuration -----


def _tms_data(**changes: Any) -> dict[str, Any]:
    return {**yaml.safe_load(TMS_5_2_CONFIG.read_text()), **changes}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "pgd_recon", "coeff": 1.0, "params": {"n_steps": 0}},
            "loss term 'pgd_recon': parameter 'n_steps': Input should be greater than 0",
        ),
        (
            {"name": "pgd_recon_layerwise", "coeff": 1.0, "params": {"step_size": -0.1}},
            "loss term 'pgd_recon_layerwise': parameter 'step_size': Input should be greater than 0",
        ),
        (
            {"name": "pgd_recon_subset", "coeff": 1.0, "params": {"scope": "batch_invariant"}},
            "loss term 'pgd_recon_subset': parameter 'scope': Input should be "
            "'unique_per_datapoint' or 'shared_across_batch'",
        ),
        (
            {"name": "pgd_recon", "coeff": 1.0, "params": {"init": "uniform"}},
            "loss term 'pgd_recon': parameter 'init': Input should be 'random', 'ones' or 'zeroes'",
        ),
    ],
)
def test_bad_pgd_settings_are_one_line_errors(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(SPDUserError) as err:
        config_from_dict(_tms_data(losses=[entry]), source="cfg.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"name": "pgd_recon_multibatch", "params": {"n_steps": 0}},
            "metric 'pgd_recon_multibatch': parameter 'n_steps' = 0: Input should be greater than 0",
        ),
        (
            {"name": "pgd_recon", "params": {"step_size": 0}},
            "metric 'pgd_recon': parameter 'step_size' = 0: Input should be greater than 0",
        ),
        (
            {"name": "pgd_recon", "params": {"scope": "shared"}},
            "metric 'pgd_recon': parameter 'scope' = 'shared': Input should be",
        ),
        (
            {"name": "pgd_recon_multibatch", "params": {"n_batches": 2}},
            "metric 'pgd_recon_multibatch': n_batches 2 is more than n_eval_steps (1)",
        ),
        (
            {"name": "pgd_recon_subset", "params": {"router": {"type": "static_probability"}}},
            "router static_probability needs p in (0, 1]",
        ),
    ],
)
def test_bad_pgd_metric_settings_are_one_line_errors(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SPDUserError) as err:
        config_from_dict(_tms_data(metrics=[spec]), source="cfg.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_original_pgd_blocks_translate(tmp_path: Path) -> None:
    data = {
        "C": 4,
        "target_module_patterns": ["linear1", "linear2"],
        "pretrained_model_class": "spd.experiments.tms.models.TMSModel",
        "pretrained_model_path": "spd/experiments/tms/targets/tms_5-2",
        "task_config": {"task_name": "tms", "feature_probability": 0.05},
        "n_eval_steps": 2,
        "loss_metric_configs": [
            {"classname": "FaithfulnessLoss", "coeff": 1.0},
            {
                "classname": "PGDReconSubsetLoss",
                "coeff": 0.5,
                "init": "random",
                "step_size": 1.0,
                "n_steps": 1,
                "mask_scope": "shared_across_batch",
                "routing": {"type": "uniform_k_subset"},
            },
            {"classname": "PGDReconLayerwiseLoss", "coeff": 0.25, "init": "ones", "n_steps": 2},
        ],
        "eval_metric_configs": [
            {"classname": "PGDReconLoss", "coeff": 1.0, "n_steps": 20, "step_size": 0.1},
            {"classname": "PGDMultiBatchReconLoss", "n_batches": 2, "init": "random"},
        ],
    }
    path = tmp_path / "later.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(path)
    assert config.loss_coeffs == {
        "faithfulness": 1.0,
        "pgd_recon_subset": 0.5,
        "pgd_recon_layerwise": 0.25,
    }
    subset = config.loss_params("pgd_recon_subset")
    assert isinstance(subset, RoutedPGDParams)
    assert (subset.scope, subset.step_size, subset.router.type) == (
        "shared_across_batch",
        1.0,
        "uniform_k_subset",
    )
    assert [(m.name, m.params) for m in config.metrics] == [
        ("pgd_recon", {"n_steps": 20, "step_size": 0.1}),
        ("pgd_recon_multibatch", {"n_batches": 2, "init": "random"}),
    ]


def test_the_cost_counts_each_ascent_pass() -> None:
    pgd = {"name": "pgd_recon", "coeff": 1.0, "params": {"n_steps": 3, "n_mask_samples": 2}}
    layerwise = {"name": "pgd_recon_layerwise", "coeff": 1.0, "params": {"n_steps": 2}}
    config = two_linear_config(losses=[pgd, layerwise])
    passes = pgd_passes(config, n_layers=2)
    # pgd_recon: 2 samples × (3 ascent + 1 final); layerwise: 2 layers × (2 ascent + 1 final).
    assert (passes.ascent, passes.final, passes.ascent_at_once) == (2 * 3 + 2 * 2, 2 + 2, 2)
    without = two_linear_config(losses=[{"name": "faithfulness", "coeff": 1.0}])
    assert microbatch_forward_passes(config, 2) > microbatch_forward_passes(without, 2) + 10


# ----- two real ranks -----


def test_shared_sources_get_the_same_update_on_every_rank(tmp_path: Path) -> None:
    # tests/pgd_dp_worker.py: two gloo ranks, each its own batch and seed, one shared ascent step.
    worker = Path(__file__).with_name("pgd_dp_worker.py")
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*launcher, str(worker), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    disagree = False
    for name in saved[0]["start"]:
        start = [s["start"][name] for s in saved]
        final = [s["final"][name] for s in saved]
        local = [s["local_grad"][name] for s in saved]
        # Rank 0's random start reached rank 1 (whose own draw differed), and both ended equal.
        torch.testing.assert_close(start[0], start[1], rtol=0, atol=0)
        assert not torch.equal(saved[1]["own_draw"][name], start[1])
        torch.testing.assert_close(final[0], final[1], rtol=0, atol=0)
        expected = (start[0] + saved[0]["step_size"] * (local[0] + local[1]).sign()).clamp(0, 1)
        torch.testing.assert_close(final[0], expected)
        disagree |= bool((local[0].sign() != local[1].sign()).any())
    assert disagree, "the ranks' own gradients never disagree: the averaging is not tested"


@pytest.mark.parametrize(
    ("adv", "classic"), [("tms_5-2-adv", "tms_5-2"), ("resid_mlp1-adv", "resid_mlp1")]
)
def test_the_adversarial_configs_are_their_classic_configs_with_the_2026_objective(
    adv: str, classic: str
) -> None:
    a = load_config(get_experiment(adv).config_path)
    c = load_config(get_experiment(classic).config_path)
    same = ("C", "steps", "batch_size", "lr", "lr_schedule", "pretrained_model_path", "seed")
    assert all(getattr(a, key) == getattr(c, key) for key in same)
    assert a.use_delta_component and not c.use_delta_component
    assert set(a.loss_coeffs) == {
        "faithfulness",
        "stochastic_recon_subset",
        "pgd_recon_subset",
        "importance_minimality",
    }
    pgd = a.loss_params("pgd_recon_subset")
    assert isinstance(pgd, RoutedPGDParams) and pgd.router.type == "uniform_k_subset"
    assert importance_params(a).beta > 0
    assert "pgd_recon_multibatch" in [m.name for m in a.metrics]
    assert "pgd_recon_multibatch" not in [m.name for m in c.metrics]
