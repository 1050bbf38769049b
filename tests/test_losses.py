"""Every loss term and the stochastic masks (docs/method.md, 'Losses', 'Masks and forward
passes'), on cases worked out by hand.

The hand model (`hand_model`) is `TwoLinear` (out = fc2(fc1(x)) = x + b, b = [0.5, −0.5]) with
    fc1 components: V = I, U = diag(2, 3)   (so fc1 ≈ diag(2, 3) instead of I)
    fc2 components: V = I, U = I            (exact)
"""

import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from spd.config.loss_registry import LOSS_TERMS
from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.experiments.tms.models import TMSModel
from spd.experiments.tms.task import TMSTaskConfig
from spd.losses.batch import batch_loss, fresh_states, prepare_states
from spd.losses.divergence import output_divergence
from spd.losses.inputs import LossInputs
from spd.losses.masks import stochastic_masks
from spd.losses.row_selection import select_rows
from spd.losses.terms.embedding_recon import embedding_recon_loss
from spd.losses.terms.faithfulness import faithfulness_loss
from spd.losses.terms.importance_minimality import importance_minimality_loss
from spd.losses.terms.recon import recon_loss
from spd.losses.terms.recon_layerwise import layerwise_recon_loss
from spd.losses.terms.schatten import schatten_loss
from spd.losses.total import configured_terms, total_loss
from spd.models.component_model import ComponentModel, build_component_model
from tests.paths import TMS_TARGETS
from tests.toy_targets import TinyLM, TwoLinear

X = torch.tensor([[1.0, 1.0]])
TARGET_OUT = torch.tensor([[1.5, 0.5]])  # x + b


def _config(
    coeffs: dict[str, float | None], params: dict[str, dict[str, Any]] | None = None, **fields: Any
) -> Config:
    """A `TwoLinear` config computing exactly the terms of `coeffs` (with their `params`)."""
    params = params or {}
    base: dict[str, Any] = {
        "C": 2,
        "target_module_patterns": ["fc1", "fc2"],
        "pretrained_model_class": "tests.toy_targets.TwoLinear",
        "pretrained_model_path": "unused",
        "task_config": TMSTaskConfig(),
        "losses": [
            {"name": name, "coeff": coeff, "params": params.get(name, {})}
            for name, coeff in coeffs.items()
        ],
    }
    return Config(**{**base, **fields})


def _inputs(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    pre_acts: dict[str, Tensor],
    ci: dict[str, Tensor],
    ci_upper: dict[str, Tensor],
) -> LossInputs:
    return LossInputs(model, batch, target_out, pre_acts, ci, ci_upper, "mse", 1.0, None)


@pytest.fixture
def hand_model() -> ComponentModel:
    model = ComponentModel(TwoLinear(), ["fc1", "fc2"], C=2)
    with torch.no_grad():
        model.components["fc1"].V.copy_(torch.eye(2))
        model.components["fc1"].U.copy_(torch.diag(torch.tensor([2.0, 3.0])))
        model.components["fc2"].V.copy_(torch.eye(2))
        model.components["fc2"].U.copy_(torch.eye(2))
    return model


def _softmax(logits: list[float]) -> list[float]:
    z = sum(math.exp(v) for v in logits)
    return [math.exp(v) / z for v in logits]


def _kl(target_logits: list[float], pred_logits: list[float]) -> float:
    """KL(softmax(target) ‖ softmax(pred)) = Σ p log(p / q)."""
    p, q = _softmax(target_logits), _softmax(pred_logits)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


# ----- output divergence -----


def test_kl_divergence_direction_and_mean_over_rows() -> None:
    # target [0, 0] → p = [½, ½];  pred [ln 3, 0] → q = [¾, ¼]
    # KL(p ‖ q) = ½ ln(½ / ¾) + ½ ln(½ / ¼) = ½ ln(4/3);  a second, identical row adds 0.
    pred = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    expected = 0.25 * math.log(4.0 / 3.0)
    assert output_divergence(pred, target, "kl").item() == pytest.approx(expected, rel=1e-5)
    # The reverse direction, KL(q ‖ p) = ¾ ln(3/2) − ¼ ln 2, is a different number.
    reverse = 0.5 * (0.75 * math.log(1.5) - 0.25 * math.log(2.0))
    assert output_divergence(target, pred, "kl").item() == pytest.approx(reverse, rel=1e-5)
    assert reverse != pytest.approx(expected, rel=1e-2)


def test_kl_divergence_averages_over_positions_too() -> None:
    pred = torch.tensor([[[math.log(3.0), 0.0], [1.0, 2.0]]])  # (batch 1, positions 2, vocab 2)
    target = torch.tensor([[[0.0, 0.0], [1.0, 2.0]]])
    assert output_divergence(pred, target, "kl").item() == pytest.approx(
        0.25 * math.log(4.0 / 3.0), rel=1e-5
    )


def test_mse_divergence_is_the_mean_over_all_elements() -> None:
    pred = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    expected = (math.log(3.0) ** 2 + 1.0) / 4
    assert output_divergence(pred, target, "mse").item() == pytest.approx(expected, rel=1e-6)


# ----- faithfulness and reconstruction -----


def test_faithfulness_hand_case(hand_model: ComponentModel) -> None:
    # fc1: I − diag(2, 3) = diag(−1, −2) → 1 + 4 = 5; fc2 exact → 0; 8 entries in all.
    assert faithfulness_loss(hand_model).item() == pytest.approx(5 / 8)


def test_faithfulness_counts_entries_of_rectangular_matrices() -> None:
    # Target fc2 = I (2 × 2), components zero: ‖I‖² = 2 over 4 entries (fc1 not decomposed).
    model = ComponentModel(TwoLinear(), ["fc2"], C=3)
    with torch.no_grad():
        model.components["fc2"].V.zero_()
    assert faithfulness_loss(model).item() == pytest.approx(2 / 4)


def test_faithfulness_over_layers_of_different_sizes() -> None:
    # Layer "0": 4 × 3 ones → ‖W‖² = 12 over 12 entries; layer "1": 2 × 4 twos → 32 over 8.
    # Components zero: (12 + 32) / (12 + 8) = 2.2, not the mean of per-layer means (1 + 4) / 2.
    first, second = nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        first.weight.fill_(1.0)
        second.weight.fill_(2.0)
    target = nn.Sequential(first, second)
    model = ComponentModel(target, ["0", "1"], C=2)
    assert faithfulness_loss(model).item() == pytest.approx(44 / 20)


def test_recon_with_masks_on_every_layer(hand_model: ComponentModel) -> None:
    # fc1 with m = [1, ½]: [2·1, 3·½·1] = [2, 1.5]; fc2 with m = [1, 1]: + b → [2.5, 1.0]
    # MSE vs [1.5, 0.5]: (1² + 0.5²) / 2 = 0.625.
    masks = {"fc1": torch.tensor([[1.0, 0.5]]), "fc2": torch.tensor([[1.0, 1.0]])}
    assert recon_loss(hand_model, X, TARGET_OUT, masks, "mse").item() == pytest.approx(0.625)
    # The same outputs as logits under KL.
    expected_kl = _kl([1.5, 0.5], [2.5, 1.0])
    assert recon_loss(hand_model, X, TARGET_OUT, masks, "kl").item() == pytest.approx(
        expected_kl, rel=1e-5
    )


def test_layerwise_recon_replaces_one_layer_at_a_time(hand_model: ComponentModel) -> None:
    # Only fc1 (m = [1, ½]): [2, 1.5] → fc2 original → [2.5, 1.0] → MSE 0.625.
    # Only fc2 (m = [½, 1]): fc1 original gives [1, 1] → [0.5, 1] + b = [1.0, 0.5] → 0.25 / 2 = 0.125.
    # Mean over the two layers: 0.375 (both at once would give [1.5, 1.0] → 0.125).
    masks = {"fc1": torch.tensor([[1.0, 0.5]]), "fc2": torch.tensor([[0.5, 1.0]])}
    assert layerwise_recon_loss(hand_model, X, TARGET_OUT, masks, "mse").item() == pytest.approx(
        0.375
    )
    assert recon_loss(hand_model, X, TARGET_OUT, masks, "mse").item() == pytest.approx(0.125)


# ----- importance minimality and schatten -----


CI_UPPER = {
    "a": torch.tensor([[0.5, 0.0], [1.0, 0.25]]),
    "b": torch.tensor([[1.0], [0.5]]),
}


@pytest.mark.parametrize(
    ("pnorm", "expected"),
    [
        # p = 1: a rows 0.5, 1.25 → mean 0.875;  b rows 1, 0.5 → 0.75;  sum 1.625.
        (1.0, 1.625),
        # p = 2: a rows 0.25, 1.0625 → 0.65625;  b rows 1, 0.25 → 0.625;  sum 1.28125.
        (2.0, 1.28125),
    ],
)
def test_importance_minimality_hand_case(pnorm: float, expected: float) -> None:
    assert importance_minimality_loss(CI_UPPER, pnorm).item() == pytest.approx(expected, rel=1e-6)


def test_importance_minimality_eps_keeps_small_p_finite_at_zero() -> None:
    # (0 + 1e-12)^½ = 1e-6 per subcomponent; two subcomponents per example.
    g = torch.zeros(3, 2, requires_grad=True)
    loss = importance_minimality_loss({"a": g}, pnorm=0.5)
    assert loss.item() == pytest.approx(2e-6, rel=1e-4)
    loss.backward()
    assert g.grad is not None and bool(torch.isfinite(g.grad).all())


def test_importance_minimality_averages_over_positions_and_counts_upper_leak() -> None:
    # (batch 1, positions 2, C 2): position sums 1.01 and 0 → mean 0.505.
    g = torch.tensor([[[1.01, 0.0], [0.0, 0.0]]])
    assert importance_minimality_loss({"a": g}, pnorm=1.0).item() == pytest.approx(0.505, rel=1e-6)


def test_schatten_hand_case(hand_model: ComponentModel) -> None:
    # Sizes ‖V_c‖² + ‖U_c‖²: fc1 c0 1 + 4 = 5, c1 1 + 9 = 10; fc2 1 + 1 = 2 each.
    ci_upper = {"fc1": torch.tensor([[1.0, 0.5]]), "fc2": torch.tensor([[0.0, 1.0]])}
    # p = 1: fc1 5 + ½·10 = 10, fc2 0 + 2 = 2 → 12.   p = 2: 5 + ¼·10 = 7.5, fc2 2 → 9.5.
    assert schatten_loss(hand_model, ci_upper, 1.0).item() == pytest.approx(12.0, rel=1e-6)
    assert schatten_loss(hand_model, ci_upper, 2.0).item() == pytest.approx(9.5, rel=1e-6)


# ----- embedding recon -----


@pytest.fixture
def embed_model() -> ComponentModel:
    """TinyLM with embedding E = [[1, 0], [0, 1], [1, 1]], lm_head rows [1, 0], [0, 1], [0, 0]."""
    target = TinyLM(vocab=3, d_model=2)
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with torch.no_grad():
        target.embed.weight.copy_(E)
        target.lm_head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    model = ComponentModel(target, ["embed"], C=2)
    with torch.no_grad():
        model.components["embed"].V.copy_(E)  # exact factorisation E = E · I
        model.components["embed"].U.copy_(torch.eye(2))
    return model


EMB_TOKENS = torch.tensor([[0, 2]])
EMB_MASKS = {"embed": torch.tensor([[[0.5, 1.0], [1.0, 0.0]]])}


def test_embedding_recon_mse(embed_model: ComponentModel) -> None:
    # token 0: masked [0.5, 0] vs [1, 0] → 0.25 summed over the embedding dimension; token 2:
    # masked [1, 0] vs [1, 1] → 1; the mean over the two tokens: 0.625 (as the original; a mean
    # over all entries would give 0.3125).
    pre_acts = {"embed": EMB_TOKENS}
    loss = embedding_recon_loss(embed_model, pre_acts, EMB_MASKS, unembed=False)
    assert loss.item() == pytest.approx(0.625)


def test_embedding_recon_through_the_unembedding_is_kl(embed_model: ComponentModel) -> None:
    # logits: token 0 original [1, 0, 0], masked [0.5, 0, 0]; token 2 original [1, 1, 0], masked [1, 0, 0].
    expected = (_kl([1.0, 0.0, 0.0], [0.5, 0.0, 0.0]) + _kl([1.0, 1.0, 0.0], [1.0, 0.0, 0.0])) / 2
    loss = embedding_recon_loss(embed_model, {"embed": EMB_TOKENS}, EMB_MASKS, unembed=True)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_embedding_recon_without_an_embedding_fails(hand_model: ComponentModel) -> None:
    with pytest.raises(ValueError, match="no Embedding"):
        embedding_recon_loss(hand_model, {"fc1": X}, {"fc1": X}, unembed=False)


# ----- stochastic masks -----


def test_stochastic_mask_is_g_plus_one_minus_g_times_uniform_noise() -> None:
    g = torch.tensor([[0.0, 1.0, 0.25], [0.0, 1.0, 0.25]])
    torch.manual_seed(7)
    masks = stochastic_masks({"a": g})["a"]
    torch.manual_seed(7)
    r = torch.rand_like(g)
    torch.testing.assert_close(masks[:, 0], r[:, 0], rtol=0, atol=0)  # g = 0 → m = r
    assert masks[:, 1].tolist() == [1.0, 1.0]  # g = 1 → m = 1
    torch.testing.assert_close(masks[:, 2], 0.25 + 0.75 * r[:, 2])
    assert masks[0, 0] != masks[1, 0], "drawn independently per example"


def test_stochastic_masks_lie_between_g_and_one_with_gradient_one_minus_r() -> None:
    g = torch.rand(64, 2, 5, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    torch.manual_seed(3)
    m = stochastic_masks({"a": g})["a"]
    torch.manual_seed(3)
    r = torch.rand_like(g)
    assert bool(((m >= g) & (m <= 1)).all())
    m.sum().backward()
    assert g.grad is not None
    torch.testing.assert_close(g.grad, 1 - r)


# ----- the total loss -----


def _ci(model: ComponentModel) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    _, pre_acts = model.forward_with_pre_acts(X)
    ci = {"fc1": torch.tensor([[1.0, 0.5]]), "fc2": torch.tensor([[0.5, 1.0]])}
    ci_upper = {"fc1": torch.tensor([[1.0, 0.5]]), "fc2": torch.tensor([[0.5, 1.02]])}
    return pre_acts, ci, ci_upper


def test_null_coefficients_skip_their_terms(hand_model: ComponentModel) -> None:
    config = _config({"faithfulness": 2.0, "importance_minimality": 3.0, "recon": None})
    pre_acts, ci, ci_upper = _ci(hand_model)
    rng_before = torch.get_rng_state()
    total, terms = total_loss(
        _inputs(hand_model, X, TARGET_OUT, pre_acts, ci, ci_upper), configured_terms(config)
    )
    assert set(terms) == {"faithfulness", "importance_minimality"}
    assert torch.equal(torch.get_rng_state(), rng_before), "no stochastic mask was drawn"
    # faithfulness 5/8; importance (1 + 0.5) + (0.5 + 1.02) = 3.02 over one example.
    assert terms["faithfulness"].item() == pytest.approx(0.625)
    assert terms["importance_minimality"].item() == pytest.approx(3.02, rel=1e-6)
    assert total.item() == pytest.approx(2 * 0.625 + 3 * 3.02, rel=1e-6)


def test_deterministic_terms_use_the_ci_as_mask(hand_model: ComponentModel) -> None:
    config = _config({"recon": 1.0, "recon_layerwise": 10.0, "out_recon": 100.0, "schatten": 0.5})
    pre_acts, ci, ci_upper = _ci(hand_model)
    total, terms = total_loss(
        _inputs(hand_model, X, TARGET_OUT, pre_acts, ci, ci_upper), configured_terms(config)
    )
    assert set(terms) == {"recon", "recon_layerwise", "out_recon", "schatten"}
    # Masks = ci = the layerwise hand case above: full 0.125, layerwise 0.375.
    # out_recon (unmasked): fc1 → [2, 3], fc2 → + b → [2.5, 2.5]; (1 + 4) / 2 = 2.5.
    # schatten p = 1: fc1 1·5 + ½·10 = 10;  fc2 ½·2 + 1.02·2 = 3.04 → 13.04.
    expected = {"recon": 0.125, "recon_layerwise": 0.375, "out_recon": 2.5, "schatten": 13.04}
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-6), name
    assert total.item() == pytest.approx(0.125 + 3.75 + 250 + 0.5 * 13.04, rel=1e-6)
    assert all(not t.requires_grad for t in terms.values()), "reported terms are detached"
    assert total.requires_grad


@pytest.mark.parametrize("n_mask_samples", [1, 2])
def test_stochastic_terms_average_independent_draws(
    hand_model: ComponentModel, n_mask_samples: int
) -> None:
    samples = {"n_mask_samples": n_mask_samples}
    config = _config(
        {"stochastic_recon": 1.0, "stochastic_recon_layerwise": 1.0},
        {"stochastic_recon": samples, "stochastic_recon_layerwise": samples},
    )
    pre_acts, ci, ci_upper = _ci(hand_model)
    torch.manual_seed(11)
    _, terms = total_loss(
        _inputs(hand_model, X, TARGET_OUT, pre_acts, ci, ci_upper), configured_terms(config)
    )
    # Replay the draws: per sample, the full term's masks, then the layerwise term's own masks
    # (this pins the draw order of losses.total_loss).
    torch.manual_seed(11)
    full, layerwise = [], []
    for _ in range(n_mask_samples):
        full.append(recon_loss(hand_model, X, TARGET_OUT, stochastic_masks(ci), "mse").item())
        layerwise.append(
            layerwise_recon_loss(hand_model, X, TARGET_OUT, stochastic_masks(ci), "mse").item()
        )
    assert terms["stochastic_recon"].item() == pytest.approx(sum(full) / n_mask_samples, rel=1e-6)
    assert terms["stochastic_recon_layerwise"].item() == pytest.approx(
        sum(layerwise) / n_mask_samples, rel=1e-6
    )
    # Not the layerwise loss of the full term's masks: the draws are independent.
    torch.manual_seed(11)
    shared = layerwise_recon_loss(hand_model, X, TARGET_OUT, stochastic_masks(ci), "mse").item()
    assert terms["stochastic_recon_layerwise"].item() != pytest.approx(shared, rel=1e-6)


def test_embedding_recon_in_the_total_draws_masks_of_its_own(
    embed_model: ComponentModel,
) -> None:
    config = _config(
        {"stochastic_recon": 1.0, "embedding_recon": 1.0}, target_module_patterns=["embed"]
    )
    _, pre_acts = embed_model.forward_with_pre_acts(EMB_TOKENS)
    target_out = embed_model(EMB_TOKENS)
    ci = {"embed": torch.tensor([[[0.5, 0.9], [0.2, 0.0]]])}
    torch.manual_seed(5)
    _, terms = total_loss(
        _inputs(embed_model, EMB_TOKENS, target_out, pre_acts, ci, ci), configured_terms(config)
    )
    assert set(terms) == {"stochastic_recon", "embedding_recon"}
    # Replay: the full term's masks first, then the embedding term's own draw.
    torch.manual_seed(5)
    full_masks, own_masks = stochastic_masks(ci), stochastic_masks(ci)
    expected = embedding_recon_loss(embed_model, pre_acts, own_masks, unembed=False).item()
    assert terms["embedding_recon"].item() == pytest.approx(expected, rel=1e-6)
    reused = embedding_recon_loss(embed_model, pre_acts, full_masks, unembed=False).item()
    assert terms["embedding_recon"].item() != pytest.approx(reused, rel=1e-3)
    full = recon_loss(embed_model, EMB_TOKENS, target_out, full_masks, "mse").item()
    assert terms["stochastic_recon"].item() == pytest.approx(full, rel=1e-6)


# ----- rows that cannot change a reconstruction -----


def _sparse_tms() -> tuple[ComponentModel, Config, Tensor]:
    from spd.config.loading import load_config
    from spd.loading.targets import load_target_model
    from spd.models.component_model import build_component_model
    from tests.paths import TMS_5_2_ID_CONFIG

    terms = {f"losses.{name}.coeff": 1.0 for name in ("out_recon", "recon", "recon_layerwise")}
    config = load_config(TMS_5_2_ID_CONFIG, terms)
    model = build_component_model(load_target_model(config), config)
    model.init_components_from_target(0)
    # Random CI-function parameters (biases included): an inert row's CI is then not 0, so its
    # weight in the importance mean shows in the loss.
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.ci_fns.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    x = torch.rand(64, 5, generator=torch.Generator().manual_seed(3))
    x[torch.rand(64, 5, generator=torch.Generator().manual_seed(4)) < 0.85] = 0
    assert 0 < int(x.ne(0).any(-1).sum()) < 0.75 * 64  # a mix, mostly inert
    return model, config, x


def _losses_and_grads(
    model: ComponentModel, config: Config, x: Tensor, seed: int
) -> tuple[dict[str, Tensor], list[Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    result = batch_loss(model, x, config, pnorm=1.0)
    result.total.backward()
    return result.terms, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_a_sparse_batch_keeps_its_live_rows_and_one_weighted_inert_row() -> None:
    model, _, x = _sparse_tms()
    _, pre_acts = model.forward_with_pre_acts(x)
    rows = select_rows(model, pre_acts)
    live = x.ne(0).any(-1)
    n_live = int(live.sum())
    assert rows is not None and rows.n_rows == 64
    assert torch.equal(rows.index[:-1], live.nonzero().squeeze(-1))
    assert not live[rows.index[-1]]  # the representative is an inert row
    assert rows.weights.tolist() == [1.0] * n_live + [64.0 - n_live]
    assert rows.share == (n_live + 1) / 64


def test_inert_rows_are_left_out_with_the_same_losses_and_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, config, x = _sparse_tms()
    _, pre_acts = model.forward_with_pre_acts(x)
    rows = select_rows(model, pre_acts)
    assert rows is not None
    selected, _ = _losses_and_grads(model, config, x, seed=5)
    monkeypatch.setattr(model.target, "independent_rows", False)  # every row through every pass
    assert select_rows(model, pre_acts) is None
    full, _ = _losses_and_grads(model, config, x, seed=5)
    for name in ("faithfulness", "recon", "recon_layerwise", "out_recon", "importance_minimality"):
        torch.testing.assert_close(selected[name], full[name], rtol=1e-5, atol=1e-8)
    # The kept rows' CI is the full batch's, cut to those rows.
    monkeypatch.setattr(model.target, "independent_rows", True)
    kept_ci = batch_loss(model, x, config, pnorm=1.0).ci
    ci, _ = model.causal_importances(pre_acts, config.sigmoid_type)
    for name, g in ci.items():
        torch.testing.assert_close(kept_ci[name], rows.take(g))
    # The stochastic terms draw masks for the kept rows only: replay those draws.
    xs, out = rows.take(x), rows.take(model(x))
    torch.manual_seed(5)
    expected_full = rows.share * recon_loss(model, xs, out, stochastic_masks(kept_ci), "mse")
    expected_layerwise = rows.share * layerwise_recon_loss(
        model, xs, out, stochastic_masks(kept_ci), "mse"
    )
    torch.testing.assert_close(selected["stochastic_recon"], expected_full.detach())
    torch.testing.assert_close(selected["stochastic_recon_layerwise"], expected_layerwise.detach())
    # Gradients of the deterministic terms (importance minimality included) agree too.
    deterministic = config.model_copy(
        update={"losses": [s for s in config.losses if not s.name.startswith("stochastic")]}
    )
    _, a = _losses_and_grads(model, deterministic, x, seed=5)
    monkeypatch.setattr(model.target, "independent_rows", False)
    _, b = _losses_and_grads(model, deterministic, x, seed=5)
    for ga, gb in zip(a, b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)


def test_an_all_zero_batch_keeps_one_inert_row_standing_for_all() -> None:
    model, config, x = _sparse_tms()
    zeros = torch.zeros_like(x)
    _, pre_acts = model.forward_with_pre_acts(zeros)
    rows = select_rows(model, pre_acts)
    assert rows is not None and rows.index.tolist() == [0] and rows.weights.tolist() == [64.0]
    # The one row's importance counts 64 times: the same mean as all 64 identical rows.
    selected, _ = _losses_and_grads(model, config, zeros, seed=1)
    assert selected["stochastic_recon"].item() == 0.0
    _, ci_upper = model.causal_importances(pre_acts, config.sigmoid_type)
    expected = importance_minimality_loss(ci_upper, pnorm=1.0)
    torch.testing.assert_close(selected["importance_minimality"], expected.detach())


class _BatchCoupledTMS(TMSModel):
    """Claims independent rows (inherited) but adds the batch mean: every row sees the others."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + 0.1 * x.mean(0, keepdim=True)


def test_a_target_that_couples_rows_but_claims_independent_rows_is_refused() -> None:
    model, config, x = _sparse_tms()
    loss = batch_loss(model, x, config, pnorm=1.0)
    assert loss.rows is not None and model.independent_rows_checked  # the honest target passes
    coupled = _BatchCoupledTMS.from_pretrained(TMS_TARGETS / "tms_5-2-id")
    assert coupled.independent_rows
    bad = build_component_model(coupled, config)
    bad.init_components_from_target(0)
    with pytest.raises(SPDUserError) as err:
        batch_loss(bad, x, config, pnorm=1.0)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("_BatchCoupledTMS sets independent_rows = True, but the output")
    assert "remove independent_rows" in message


def test_a_mostly_live_batch_is_not_cut() -> None:
    model, _, x = _sparse_tms()
    _, pre_acts = model.forward_with_pre_acts(torch.rand_like(x) + 0.1)
    assert select_rows(model, pre_acts) is None


@pytest.mark.parametrize("name", [n for n in LOSS_TERMS.names() if n != "embedding_recon"])
def test_each_term_alone_is_the_whole_loss_times_its_coefficient(
    hand_model: ComponentModel, name: str
) -> None:
    # embedding_recon needs a decomposed Embedding: tested with TinyLM above.
    pre_acts, ci, ci_upper = _ci(hand_model)
    config = _config({name: 0.5})
    inputs = _inputs(hand_model, X, TARGET_OUT, pre_acts, ci, ci_upper)
    # A stateful term (persistent PGD) reads its state from the inputs, as in a training step.
    inputs = replace(inputs, states=fresh_states(config, X))
    prepare_states(inputs)
    total, terms = total_loss(inputs, configured_terms(config))
    assert list(terms) == [name]
    assert total.item() == pytest.approx(0.5 * terms[name].item(), rel=1e-6)
