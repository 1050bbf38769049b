"""The delta component, binomial sampling and routing (docs/method.md, 'Delta component, sampling
and routing'): the masked forward by hand, routed-away positions exact, the routers' draws, the
two subset terms by hand, and their config errors."""

import itertools
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor

from spd.config.loading import config_from_dict
from spd.config.loss_registry import LOSS_TERMS
from spd.errors import SPDUserError
from spd.losses import term as loss_term
from spd.losses.inputs import LossInputs
from spd.losses.masks import delta_masks, stochastic_masks
from spd.losses.routing import RoutedParams, RouterParams, draw_routes
from spd.losses.terms import ci_masked_recon_subset, stochastic_recon_subset
from spd.losses.total import ConfiguredTerm, total_loss
from spd.models.component_model import ComponentModel
from spd.models.module_mask import ModuleMask
from tests.paths import TMS_5_2_CONFIG
from tests.test_low_rank_stream import _small_resid_mlp
from tests.toy_targets import TinyLM, TwoLinear

X = torch.tensor([[1.0, 2.0], [1.0, 0.0]])


@pytest.fixture
def hand_model() -> ComponentModel:
    """TwoLinear (fc1 = I, fc2 = I + bias [0.5, −0.5]) with hand factors (in_out = V @ U):
    fc1: diag(2, 3), so Δ = diag(−1, −2); fc2: [[1, 1], [0, 1]], so Δ = [[0, −1], [0, 0]]."""
    model = ComponentModel(TwoLinear(), ["fc1", "fc2"], C=2)
    with torch.no_grad():
        model.components["fc1"].V.copy_(torch.eye(2))
        model.components["fc1"].U.copy_(torch.diag(torch.tensor([2.0, 3.0])))
        model.components["fc2"].V.copy_(torch.eye(2))
        model.components["fc2"].U.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    return model


def _random_model(target: torch.nn.Module, names: list[str], C: int) -> ComponentModel:
    torch.manual_seed(0)
    model = ComponentModel(target, names, C=C)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p))
    return model


# ----- the delta component's forward -----


def test_delta_with_every_mask_one_is_the_target() -> None:
    model = _random_model(TwoLinear(), ["fc1", "fc2"], C=3)
    x = torch.randn(5, 2)
    ones = {name: ModuleMask(torch.ones(5, 3), torch.ones(5)) for name in model.module_names}
    torch.testing.assert_close(model.forward_with_components(x, ones), model(x), atol=1e-6, rtol=0)
    # Without the delta component the components alone are far from the target.
    assert not torch.allclose(model.forward_with_components(x, dict.fromkeys(ones)), model(x))


def test_delta_with_every_mask_one_is_the_target_embedding() -> None:
    model = _random_model(TinyLM(vocab=5, d_model=3), ["embed", "lm_head"], C=4)
    tokens = torch.tensor([[0, 4, 2], [3, 3, 1]])
    ones = {name: ModuleMask(torch.ones(2, 3, 4), torch.ones(2, 3)) for name in model.module_names}
    torch.testing.assert_close(
        model.forward_with_components(tokens, ones), model(tokens), atol=1e-6, rtol=0
    )


def test_delta_forward_by_hand(hand_model: ComponentModel) -> None:
    x = X[:1]
    # fc1: (x V ⊙ [½, 1]) U = [½, 2] diag(2, 3) = [1, 6];  ¼ · x Δ = ¼ [−1, −4]  →  [¾, 5].
    # fc2 original: [¾, 5] + [½, −½] = [1¼, 4½].
    fc1 = ModuleMask(torch.tensor([[0.5, 1.0]]), torch.tensor([0.25]))
    out = hand_model.forward_with_components(x, {"fc1": fc1})
    torch.testing.assert_close(out, torch.tensor([[1.25, 4.5]]))
    # fc2 too, m = [1, 0], m_Δ = ½ on h = [¾, 5]: (h ⊙ m) U = [¾, ¾]; ½ · h Δ = [0, −⅜]; + bias.
    fc2 = ModuleMask(torch.tensor([[1.0, 0.0]]), torch.tensor([0.5]))
    out = hand_model.forward_with_components(x, {"fc1": fc1, "fc2": fc2})
    torch.testing.assert_close(out, torch.tensor([[1.25, -0.125]]))


def test_embedding_delta_rows_are_indexed_by_token() -> None:
    model = _random_model(TinyLM(vocab=5, d_model=3), ["embed", "lm_head"], C=4)
    tokens = torch.tensor([[0, 4, 2]])
    comp, weight = model.components["embed"], model.target_weight("embed")
    delta = weight - comp.V @ comp.U  # (vocab, d): Δ in the embedding's own layout
    only_delta = ModuleMask(torch.zeros(1, 3, 4), torch.tensor([[1.0, 0.5, 0.0]]))
    out = model.decomposed["embed"].masked_forward(tokens, only_delta)
    expected = delta[tokens] * torch.tensor([1.0, 0.5, 0.0]).unsqueeze(-1)
    torch.testing.assert_close(out, expected)


def test_gradients_flow_into_the_factors_through_delta() -> None:
    model = _random_model(TwoLinear(), ["fc1", "fc2"], C=3)
    x = torch.randn(4, 2)
    for m_delta, vanishes in ((1.0, True), (0.5, False)):
        model.zero_grad()
        masks = {
            name: ModuleMask(torch.ones(4, 3), torch.full((4,), m_delta))
            for name in model.module_names
        }
        model.forward_with_components(x, masks).pow(2).sum().backward()
        grad = model.components["fc1"].V.grad
        assert grad is not None
        # With every mask 1 the output is W x whatever U and V are: Δ is recomputed from them.
        assert bool((grad.abs().max() < 1e-5) == vanishes), (m_delta, grad)


# ----- routing -----


def test_a_routed_away_position_gets_exactly_the_target_output() -> None:
    model = _random_model(TwoLinear(), ["fc1", "fc2"], C=3)
    x = torch.randn(3, 2)
    masks = {
        "fc1": ModuleMask(torch.rand(3, 3), torch.rand(3), torch.tensor([True, False, True])),
        "fc2": ModuleMask(torch.rand(3, 3), torch.rand(3), torch.tensor([False, False, True])),
    }
    out = model.forward_with_components(x, masks)
    target = model(x)
    assert torch.equal(out[1], target[1])  # away from both modules: the target's row, bit for bit
    # Row 0: fc1's components, then fc2's original layer exactly.
    fc1_only = model.forward_with_components(x, {"fc1": replace_route(masks["fc1"], None)})
    assert torch.equal(out[0], fc1_only[0])
    assert not torch.allclose(out[0], target[0]) and not torch.allclose(out[2], target[2])


def replace_route(mask: ModuleMask, route: Tensor | None) -> ModuleMask:
    return ModuleMask(mask.component, mask.delta, route)


def test_stream_paths_with_delta_and_routes_equal_the_dense_path() -> None:
    target = _small_resid_mlp()
    cm = ComponentModel(target, ["layers.*.mlp_in", "layers.*.mlp_out"], C=5)
    cm.init_components_from_target(0)
    cm.double()
    x = torch.randn(8, 12, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    masks = {
        name: ModuleMask(
            torch.rand(8, 5, generator=generator, dtype=torch.float64),
            torch.rand(8, generator=generator, dtype=torch.float64),
            torch.rand(8, generator=generator) < 0.5,
        )
        for name in cm.module_names
    }
    outs = []
    for factored in (False, True):
        target.factor_stream = factored
        outs.append(cm.forward_with_components(x, masks))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-12)


def _ci(n_modules: int, n_positions: int) -> dict[str, Tensor]:
    return {f"m{i}": torch.zeros(n_positions, 2) for i in range(n_modules)}


def test_uniform_k_subset_sizes_and_subsets_are_uniform() -> None:
    n_modules, n = 3, 9000
    torch.manual_seed(0)
    routes = draw_routes(RouterParams(type="uniform_k_subset"), _ci(n_modules, n))
    assert routes is not None
    uses = torch.stack(list(routes.values()), dim=-1)
    sizes = uses.sum(-1)
    # k uniform on {1, 2, 3}: chi-square with 2 degrees of freedom, 13.8 is its 0.999 quantile.
    counts = torch.bincount(sizes, minlength=n_modules + 1).double()
    assert counts[0] == 0
    expected = n / n_modules
    assert float(((counts[1:] - expected) ** 2 / expected).sum()) < 13.8
    # Each subset of size k has probability (1/L) / binom(L, k): for L = 3, 1/9 for each of the
    # six of size 1 or 2 and 1/3 for the whole set. 22.5: the 0.999 quantile at 6 d.o.f.
    code = (uses.long() * torch.tensor([1, 2, 4])).sum(-1)
    observed = torch.bincount(code, minlength=8)[1:].double()
    probs = torch.tensor([1 / 9] * 6 + [1 / 3], dtype=torch.float64)
    assert float(((observed - n * probs) ** 2 / (n * probs)).sum()) < 22.5


def test_static_probability_matches_p_and_all_draws_nothing() -> None:
    torch.manual_seed(0)
    n = 20000
    routes = draw_routes(RouterParams(type="static_probability", p=0.3), _ci(2, n))
    assert routes is not None
    for route in routes.values():
        # 5 standard deviations of a binomial share: sqrt(0.3 · 0.7 / n) ≈ 0.0032.
        assert abs(route.double().mean().item() - 0.3) < 0.016
    both = routes["m0"] & routes["m1"]  # independent per module
    assert abs(both.double().mean().item() - 0.09) < 0.011
    routes = draw_routes(RouterParams(type="static_probability", p=1.0), _ci(2, 50))
    assert routes is not None and all(bool(r.all()) for r in routes.values())
    state = torch.get_rng_state()
    assert draw_routes(RouterParams(type="all"), _ci(2, 50)) is None
    assert torch.equal(torch.get_rng_state(), state)


# ----- sampling -----


def test_binomial_masks_are_g_or_one() -> None:
    torch.manual_seed(0)
    g = torch.rand(400, 3)
    m = stochastic_masks({"a": g}, "binomial")["a"]
    is_one, is_g = m == 1, m == g
    assert bool((is_one | is_g).all())
    assert 0.4 < is_one.double().mean().item() < 0.6
    delta = delta_masks({"a": g}, "binomial")["a"]
    assert delta.shape == (400,) and set(delta.unique().tolist()) == {0.0, 1.0}
    continuous = delta_masks({"a": g}, "continuous")["a"]
    assert bool(((continuous >= 0) & (continuous < 1)).all()) and len(continuous.unique()) > 300


def test_continuous_masks_without_delta_are_the_draws_of_before() -> None:
    g = torch.rand(6, 2)
    torch.manual_seed(5)
    before = torch.addcmul(g, 1 - g, torch.rand(g.shape))
    inputs = _inputs(ComponentModel(TwoLinear(), ["fc1"], C=2), {"fc1": g}, delta=False)
    torch.manual_seed(5)
    drawn = loss_term.draw_stochastic_masks(inputs, RoutedParams())
    assert drawn["fc1"].delta is None and drawn["fc1"].route is None
    assert drawn["fc1"].component is not None and torch.equal(drawn["fc1"].component, before)


# ----- the two subset terms by hand -----


def _inputs(model: ComponentModel, ci: dict[str, Tensor], delta: bool) -> LossInputs:
    batch = X[: next(iter(ci.values())).shape[0]]
    return LossInputs(model, batch, model(batch), {}, ci, ci, "mse", 1.0, None, delta)


def _term_total(name: str, inputs: LossInputs, params: dict[str, Any]) -> float:
    term = LOSS_TERMS.get(name)
    assert isinstance(term, loss_term.LossTerm)
    configured = ConfiguredTerm(term, 1.0, RoutedParams.model_validate(params))
    return total_loss(inputs, [configured])[0].item()


def test_ci_masked_recon_subset_by_hand(
    hand_model: ComponentModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes = {"fc1": torch.tensor([True, False]), "fc2": torch.tensor([False, True])}
    monkeypatch.setattr(ci_masked_recon_subset, "draw_routes", lambda router, ci: routes)
    ci = {"fc1": torch.tensor([[1.0, 0.0], [0.5, 1.0]]), "fc2": torch.ones(2, 2)}
    # Row 0, x = [1, 2]: fc1 (x ⊙ [1, 0]) diag(2, 3) = [2, 0]; fc2 original: [2½, −½];
    #   target [1½, 1½]: squared error 1 + 4.
    # Row 1, x = [1, 0]: fc1 original: [1, 0]; fc2 [1, 0] [[1, 1], [0, 1]] + b = [1½, ½];
    #   target [1½, −½]: squared error 1.  MSE over 4 entries: 6 / 4.
    # The delta component plays no part in a CI-masked pass (m_Δ = 0).
    for delta in (False, True):
        inputs = _inputs(hand_model, ci, delta)
        for samples in (1, 3):
            value = _term_total("ci_masked_recon_subset", inputs, {"n_mask_samples": samples})
            assert value == pytest.approx(1.5)


def test_stochastic_recon_subset_by_hand(
    hand_model: ComponentModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    component = {
        "fc1": torch.tensor([[0.5, 1.0], [1.0, 1.0]]),
        "fc2": torch.tensor([[1.0, 0.0]] * 2),
    }
    delta = {"fc1": torch.tensor([0.25, 1.0]), "fc2": torch.tensor([0.5, 0.0])}
    routes = {"fc1": torch.tensor([True, True]), "fc2": torch.tensor([True, False])}
    monkeypatch.setattr(loss_term, "stochastic_masks", lambda ci, sampling: component)
    monkeypatch.setattr(loss_term, "delta_masks", lambda ci, sampling: delta)
    monkeypatch.setattr(stochastic_recon_subset, "draw_routes", lambda router, ci: routes)
    inputs = _inputs(hand_model, {"fc1": torch.zeros(2, 2), "fc2": torch.zeros(2, 2)}, True)
    # Row 0 (test_delta_forward_by_hand): [1¼, −⅛] against [1½, 1½]: ¼² + (1⅝)² = 2.703125.
    # Row 1, x = [1, 0]: fc1 with every mask 1 is the target, [1, 0]; fc2 routed away: the
    #   target's [1½, −½] exactly: 0.  MSE over 4 entries.
    assert _term_total("stochastic_recon_subset", inputs, {}) == pytest.approx(2.703125 / 4)


# ----- config -----


def _tms_data(**changes: Any) -> dict[str, Any]:
    return {**yaml.safe_load(TMS_5_2_CONFIG.read_text()), **changes}


def _subset_entry(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "coeff": 1.0, "params": params}


def test_router_blocks_load_with_their_defaults() -> None:
    config = config_from_dict(
        _tms_data(
            use_delta_component=True,
            sampling="binomial",
            losses=[
                _subset_entry("stochastic_recon_subset", {}),
                _subset_entry(
                    "ci_masked_recon_subset", {"router": {"type": "static_probability", "p": 0.5}}
                ),
            ],
        )
    )
    assert config.use_delta_component and config.sampling == "binomial"
    assert config.loss_params("stochastic_recon_subset") == RoutedParams()
    params = config.loss_params("ci_masked_recon_subset")
    assert isinstance(params, RoutedParams) and params.router.p == 0.5


ROUTER_ERRORS = [
    ({"type": "static_probability"}, "router static_probability needs p in (0, 1]"),
    ({"type": "static_probability", "p": 1.5}, "less than or equal to 1"),
    ({"type": "static_probability", "p": 0}, "greater than 0"),
    ({"type": "all", "p": 0.5}, "router all takes no p"),
    ({"type": "uniform_k_subset", "p": 0.5}, "router uniform_k_subset takes no p"),
    ({"type": "top_k"}, "'all', 'uniform_k_subset' or 'static_probability'"),
    ({"type": "all", "k": 2}, "has no parameter 'router.k'"),
]


@pytest.mark.parametrize(
    ("name", "router", "message"),
    [
        (name, router, message)
        for name, (router, message) in itertools.product(
            ("stochastic_recon_subset", "ci_masked_recon_subset"), ROUTER_ERRORS
        )
    ],
)
def test_bad_router_blocks_are_one_line_errors(
    name: str, router: dict[str, Any], message: str
) -> None:
    with pytest.raises(SPDUserError) as err:
        config_from_dict(_tms_data(losses=[_subset_entry(name, {"router": router})]))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert f"loss term '{name}'" in str(err.value)


def test_a_router_on_a_term_without_one_and_bad_sampling_are_one_line_errors() -> None:
    with pytest.raises(SPDUserError) as err:
        config_from_dict(
            _tms_data(losses=[_subset_entry("stochastic_recon", {"router": {"type": "all"}})])
        )
    assert "loss term 'stochastic_recon' has no parameter 'router'" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(SPDUserError) as err:
        config_from_dict(_tms_data(sampling="bernoulli"))
    assert "sampling" in str(err.value) and "\n" not in str(err.value)
