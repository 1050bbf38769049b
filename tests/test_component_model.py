"""`ComponentModel`: picking layers by pattern, the forward modes (docs/method.md, 'Masks and forward passes'), causal importances."""

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from spd.errors import SPDUserError
from spd.models.component_model import ComponentModel, match_module_names
from spd.models.sigmoids import lower_leaky_hard_sigmoid, upper_leaky_hard_sigmoid
from tests.fixture_types import TargetFactory
from tests.toy_targets import TinyLM, TwoLinear


def test_matched_names_follow_the_target_order_without_duplicates(
    tms_target: TargetFactory,
) -> None:
    target = tms_target("tms_5-2-id")
    assert match_module_names(target, ["linear2", "hidden_layers.*", "linear1"]) == [
        "linear1",
        "hidden_layers.0",
        "linear2",
    ]
    assert match_module_names(target, ["linear*", "linear1"]) == ["linear1", "linear2"]


def test_pattern_matching_nothing_lists_the_module_names(tms_target: TargetFactory) -> None:
    with pytest.raises(SPDUserError) as info:
        ComponentModel(tms_target("tms_5-2-id"), ["linear1", "mlp_in"], C=3)
    message = str(info.value)
    assert "'mlp_in' matches no module" in message
    for name in ("linear1", "hidden_layers", "hidden_layers.0", "linear2"):
        assert name in message
    assert "\n" not in message


@pytest.mark.parametrize("pattern", ["hidden_layers", "*"])
def test_non_decomposable_module_is_a_user_error(tms_target: TargetFactory, pattern: str) -> None:
    with pytest.raises(SPDUserError) as info:
        ComponentModel(tms_target("tms_5-2-id"), [pattern], C=3)
    message = str(info.value)
    assert "'hidden_layers'" in message and "ModuleList" in message
    assert "cannot be decomposed" in message


def test_target_is_frozen_and_only_components_and_ci_fns_train(tms_target: TargetFactory) -> None:
    model = ComponentModel(tms_target(), ["linear1", "linear2"], C=3)
    trainable = [p for comp in model.components.values() for p in comp.parameters()]
    trainable += list(model.ci_fns.parameters())
    assert all(p.requires_grad for p in trainable)
    trainable_ids = {id(p) for p in trainable}
    frozen = [p for p in model.parameters() if id(p) not in trainable_ids]
    assert frozen and not any(p.requires_grad for p in frozen)  # linear1/2 weights, linear2 bias


def test_forward_modes_on_a_hand_computed_target() -> None:
    # Target: out = fc2(fc1(x)) = x + [0.5, −0.5]. fc1's components: V = I, U = diag(2, 3).
    model = ComponentModel(TwoLinear(), ["fc1", "fc2"], C=2)
    with torch.no_grad():
        model.components["fc1"].V.copy_(torch.eye(2))
        model.components["fc1"].U.copy_(torch.diag(torch.tensor([2.0, 3.0])))
    x = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    original = [[1.5, 0.5], [2.5, -1.5]]
    torch.testing.assert_close(model(x), torch.tensor(original))

    out, pre_acts = model.forward_with_pre_acts(x)
    torch.testing.assert_close(out, torch.tensor(original))
    torch.testing.assert_close(pre_acts["fc1"], x)
    torch.testing.assert_close(pre_acts["fc2"], x)  # fc1 = I

    # Only fc1 replaced: [2 x0, 3 x1] + b; with mask [1, 0] the second coordinate is cut.
    replaced = model.forward_with_components(x, {"fc1": None})
    torch.testing.assert_close(replaced, torch.tensor([[2.5, 2.5], [4.5, -3.5]]))
    masked = model.forward_with_components(x, {"fc1": torch.tensor([1.0, 0.0])})
    torch.testing.assert_close(masked, torch.tensor([[2.5, -0.5], [4.5, -0.5]]))

    # Afterwards every layer is back to the original.
    torch.testing.assert_close(model(x), torch.tensor(original))
    assert all(w.mode == "original" and w.mask is None for w in model.decomposed.values())


def test_pre_acts_are_what_each_layer_receives(tms_target: TargetFactory) -> None:
    target = tms_target("tms_5-2-id")
    w1 = target.linear1.weight.detach().clone()
    model = ComponentModel(target, ["linear1", "hidden_layers.0", "linear2"], C=3)
    x = torch.rand(4, 5)
    _, pre_acts = model.forward_with_pre_acts(x)
    assert torch.equal(pre_acts["linear1"], x)
    torch.testing.assert_close(pre_acts["hidden_layers.0"], x @ w1.T)
    torch.testing.assert_close(pre_acts["linear2"], x @ w1.T)  # the hidden layer is I
    assert all(w.captured_input is None and not w.capture_input for w in model.decomposed.values())


def test_unknown_mask_name_is_rejected() -> None:
    model = ComponentModel(TwoLinear(), ["fc1"], C=2)
    with pytest.raises(KeyError, match="fc2"):
        model.forward_with_components(torch.ones(1, 2), {"fc2": None})
    assert model.decomposed["fc1"].mode == "original"


@pytest.mark.parametrize("C", [3, {"fc1": 3, "fc2": 5}], ids=["one-C", "per-module-C"])
def test_causal_importances_feed_inner_acts_to_mlp_ci_fns(C: int | dict[str, int]) -> None:
    model = ComponentModel(
        TwoLinear(), ["fc1", "fc2"], C=C, ci_fn_type="mlp", ci_fn_hidden_dims=[4]
    )
    model.init_components_from_target(seed=0)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    _, pre_acts = model.forward_with_pre_acts(x)
    ci, ci_upper = model.causal_importances(pre_acts, "leaky_hard")
    for name in ("fc1", "fc2"):
        raw = model.ci_fn(name)(pre_acts[name] @ model.components[name].V)
        torch.testing.assert_close(ci[name], lower_leaky_hard_sigmoid(raw))
        torch.testing.assert_close(ci_upper[name], upper_leaky_hard_sigmoid(raw))
        assert ci[name].shape == (6, C if isinstance(C, int) else C[name])
        assert bool(((ci[name] >= 0) & (ci[name] <= 1)).all())


def test_causal_importances_feed_the_whole_input_to_vector_mlp_ci_fns() -> None:
    model = ComponentModel(
        TwoLinear(), ["fc1"], C=3, ci_fn_type="vector_mlp", ci_fn_hidden_dims=[4]
    )
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    _, pre_acts = model.forward_with_pre_acts(x)
    ci, _ = model.causal_importances(pre_acts, "hard")
    torch.testing.assert_close(ci["fc1"], model.ci_fn("fc1")(x).clamp(0, 1))


def test_detached_ci_fn_inputs_send_no_gradient_to_the_components() -> None:
    model = ComponentModel(TwoLinear(), ["fc1"], C=3)
    model.init_components_from_target(seed=0)
    _, pre_acts = model.forward_with_pre_acts(torch.ones(2, 2))
    for detach, expect_grad in ((True, False), (False, True)):
        model.zero_grad(set_to_none=True)
        _, ci_upper = model.causal_importances(pre_acts, "leaky_hard", detach_inputs=detach)
        ci_upper["fc1"].sum().backward()
        assert (model.components["fc1"].V.grad is not None) is expect_grad


def test_vector_mlp_on_an_embedding_is_a_user_error() -> None:
    with pytest.raises(SPDUserError, match="token index"):
        ComponentModel(TinyLM(), ["embed"], C=2, ci_fn_type="vector_mlp")


def test_tying_a_module_that_is_not_decomposed_is_a_user_error() -> None:
    with pytest.raises(SPDUserError, match="'fc2'"):
        ComponentModel(TwoLinear(), ["fc1"], C=2, tied_weights=[("fc1", "fc2")])


def test_gpt2_from_disk_linear_conv1d_and_embedding(tmp_path: Path) -> None:
    """A real (tiny, randomly initialised) GPT-2 saved and loaded by transformers."""
    config = GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    target = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    patterns = [
        "transformer.wte",
        "transformer.h.*.attn.c_attn",
        "transformer.h.*.mlp.c_fc",
        "lm_head",
    ]
    tokens = torch.tensor([[1, 4, 9, 2, 0]])
    with torch.no_grad():
        model = ComponentModel(target, patterns, C=11, output_attr="logits")
        assert model.module_names == [
            "transformer.wte",
            "transformer.h.0.attn.c_attn",
            "transformer.h.0.mlp.c_fc",
            "lm_head",
        ]
        # Exact factorisations (V = I padded to C columns, U = W in d_in × d_out layout).
        for name, comp in model.components.items():
            d_in = comp.d_in
            comp.V.copy_(torch.eye(d_in, 11))
            comp.U.copy_(
                torch.cat(
                    [comp.as_in_out(model.target_weight(name)), torch.zeros(11 - d_in, comp.d_out)]
                )
            )
        original = model(tokens)
        all_unmasked = model.forward_with_components(tokens, dict.fromkeys(model.module_names))
        torch.testing.assert_close(all_unmasked, original, atol=1e-5, rtol=1e-5)
        _, pre_acts = model.forward_with_pre_acts(tokens)
        assert torch.equal(pre_acts["transformer.wte"], tokens)
        assert pre_acts["transformer.h.0.mlp.c_fc"].shape == (1, 5, 8)
        zero = torch.zeros(1, 5, 11)
        cut = model.forward_with_components(tokens, {"transformer.h.0.mlp.c_fc": zero})
        assert not torch.allclose(cut, original, atol=1e-4)
