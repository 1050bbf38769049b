"""Subcomponents of each layer kind and the fused kernel of the `mlp` CI functions (docs/method.md,
'Objects', 'Masks and forward passes'); the CI-function types themselves are in test_ci_fns.py."""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from spd.config.schema import TiedWeightsMode
from spd.models import scalar_mlp as scalar_mlp_module
from spd.models.component_model import ComponentModel
from spd.models.components import (
    Components,
    EmbeddingComponents,
    WeightLayout,
)
from spd.models.scalar_mlp import scalar_mlp
from tests.fixture_types import TargetFactory
from tests.toy_targets import TinyLM

# One hand-worked case shared by Linear and Conv1D (d_in 3, d_out 2, C 2):
#   x = [1, 2, 3];  V (d_in × C) = [[1, 0], [0, 1], [1, 1]]  →  x V = [1 + 3, 2 + 3] = [4, 5]
#   mask [1, 0.5] → [4, 2.5];  U (C × d_out) = [[1, 2], [3, 4]]
#   → [4·1 + 2.5·3, 4·2 + 2.5·4] = [11.5, 18];  + bias [0.1, −0.1] → [11.6, 17.9]
#   no mask: [4·1 + 5·3, 4·2 + 5·4] = [19, 28] + bias → [19.1, 27.9]
HAND_V = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
HAND_U = [[1.0, 2.0], [3.0, 4.0]]
HAND_BIAS = [0.1, -0.1]
HAND_X = [[1.0, 2.0, 3.0]]
HAND_MASK = [[1.0, 0.5]]
HAND_MASKED_OUT = [[11.6, 17.9]]
HAND_UNMASKED_OUT = [[19.1, 27.9]]


def _set_factors(
    comp: Components, V: Tensor | list[list[float]], U: Tensor | list[list[float]]
) -> None:
    with torch.no_grad():
        comp.V.copy_(torch.as_tensor(V))
        comp.U.copy_(torch.as_tensor(U))


class _Holder(nn.Module):
    """Wraps one layer under the name `layer` so a ComponentModel can pick it by pattern."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _linear_with_bias() -> nn.Linear:
    linear = nn.Linear(3, 2)
    with torch.no_grad():
        linear.bias.copy_(torch.tensor(HAND_BIAS))
    return linear


def _conv1d_with_bias() -> nn.Module:
    conv = Conv1D(nf=2, nx=3)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor(HAND_BIAS))
    return conv


@pytest.mark.parametrize(
    "make_layer", [_linear_with_bias, _conv1d_with_bias], ids=["linear", "conv1d"]
)
def test_masked_forward_of_linear_and_conv1d_equals_hand_product(
    make_layer: Callable[[], nn.Module],
) -> None:
    model = ComponentModel(_Holder(make_layer()), ["layer"], C=2)
    _set_factors(model.components["layer"], HAND_V, HAND_U)
    x = torch.tensor(HAND_X)
    masked = model.forward_with_components(x, {"layer": torch.tensor(HAND_MASK)})
    unmasked = model.forward_with_components(x, {"layer": None})
    torch.testing.assert_close(masked, torch.tensor(HAND_MASKED_OUT))
    torch.testing.assert_close(unmasked, torch.tensor(HAND_UNMASKED_OUT))


def test_weight_layout_follows_the_target_kind() -> None:
    # V U = [[1, 2], [3, 4], [1·1 + 1·3, 1·2 + 1·4]] = [[1, 2], [3, 4], [4, 6]]  (d_in × d_out).
    in_out = [[1.0, 2.0], [3.0, 4.0], [4.0, 6.0]]
    linear = Components(3, 2, 2, "out_in")
    conv = Components(3, 2, 2, "in_out")
    for comp in (linear, conv):
        _set_factors(comp, HAND_V, HAND_U)
    assert (
        linear.weight.tolist() == torch.tensor(in_out).T.tolist()
    )  # nn.Linear stores (d_out, d_in)
    assert conv.weight.tolist() == in_out  # Conv1D stores (d_in, d_out)


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_sum_of_subcomponents_equals_component_weight(layout: WeightLayout) -> None:
    torch.manual_seed(0)
    comp = Components(4, 3, C=5, weight_layout=layout)
    _set_factors(comp, torch.randn(4, 5), torch.randn(5, 3))
    subs = comp.subcomponent_weights()
    assert subs.shape == (5, 4, 3)
    for c in range(5):  # each one is the outer product V[:, c] U[c, :], rank one
        assert torch.allclose(subs[c], torch.outer(comp.V[:, c], comp.U[c]))
        assert torch.linalg.matrix_rank(subs[c]) == 1
    assert torch.allclose(comp.as_in_out(comp.weight), subs.sum(0), atol=1e-6)


def test_components_that_factor_the_target_reproduce_linear_and_conv1d() -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 3)
    for layer in (nn.Linear(3, 4), Conv1D(nf=4, nx=3)):
        model = ComponentModel(_Holder(layer), ["layer"], C=3)
        comp = model.components["layer"]
        # V = I and U = W (in d_in × d_out layout) is an exact factorisation.
        _set_factors(comp, torch.eye(3), comp.as_in_out(model.target_weight("layer")))
        assert torch.allclose(comp.weight, model.target_weight("layer"))
        assert torch.allclose(
            model.forward_with_components(x, {"layer": None}), model(x), atol=1e-6
        )


def test_linear_bias_is_kept_from_the_target_and_not_trained() -> None:
    model = ComponentModel(_Holder(_linear_with_bias()), ["layer"], C=2)
    comp = model.components["layer"]
    assert comp.bias is not None and comp.bias.tolist() == pytest.approx(HAND_BIAS)
    assert {name for name, _ in comp.named_parameters()} == {"_V", "_U"}


# Embedding (vocab 3, d 2, C 2):  V = [[1, 0], [0, 1], [1, 1]] (one row per token), U = I.
#   tokens [0, 2] with masks [0.5, 1] and [1, 0]:
#   token 0: V[0] ⊙ m = [0.5, 0] → U → [0.5, 0];  token 2: V[2] ⊙ m = [1, 0] → [1, 0].
EMB_V = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]


def test_embedding_inner_acts_equal_the_one_hot_product() -> None:
    torch.manual_seed(0)
    comp = EmbeddingComponents(vocab_size=5, embedding_dim=3, C=4)
    _set_factors(comp, torch.randn(5, 4), torch.randn(4, 3))
    tokens = torch.tensor([[0, 4, 2], [1, 1, 3]])
    one_hot = F.one_hot(tokens, num_classes=5).float()
    assert torch.equal(comp.inner_acts(tokens), comp.V[tokens])
    assert torch.allclose(comp.inner_acts(tokens), one_hot @ comp.V)


def test_masked_embedding_forward_equals_hand_product() -> None:
    target = TinyLM(vocab=3, d_model=2)
    with torch.no_grad():
        target.lm_head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    model = ComponentModel(target, ["embed"], C=2)
    _set_factors(model.components["embed"], EMB_V, torch.eye(2))
    tokens = torch.tensor([[0, 2]])
    mask = torch.tensor([[[0.5, 1.0], [1.0, 0.0]]])
    # lm_head rows [1, 0], [0, 1], [1, 1] read the embeddings [0.5, 0] and [1, 0]:
    expected = [[[0.5, 0.0, 0.5], [1.0, 0.0, 1.0]]]
    out = model.forward_with_components(tokens, {"embed": mask})
    torch.testing.assert_close(out, torch.tensor(expected))


@pytest.mark.parametrize("mode", ["shared_storage", "single_parameter"])
def test_tied_components_are_the_transpose_of_their_source(
    tms_target: TargetFactory, mode: TiedWeightsMode
) -> None:
    model = ComponentModel(
        tms_target(),
        ["linear1", "linear2"],
        C=4,
        tied_weights=[("linear1", "linear2")],
        tied_weights_mode=mode,
    )
    model.init_components_from_target(seed=0)
    first, second = model.components["linear1"], model.components["linear2"]
    assert second.is_tied and not first.is_tied
    assert torch.equal(second.V, first.U.T) and torch.equal(second.U, first.V.T)
    torch.testing.assert_close(second.weight, first.weight.T)
    second(torch.ones(1, 2)).sum().backward()
    if mode == "single_parameter":
        assert list(second.parameters()) == []  # nothing of its own to train
        # A loss on the tied layer trains the source's factors.
        assert first.V.grad is not None and first.U.grad is not None
    else:
        # Parameters of its own over the source's numbers: they get their own gradient, and
        # a change to either is a change to both.
        own_V, own_U = second.V, second.U
        assert isinstance(own_V, nn.Parameter) and isinstance(own_U, nn.Parameter)
        assert own_V.grad is not None and own_U.grad is not None
        assert first.V.grad is None and first.U.grad is None
        assert own_V.untyped_storage().data_ptr() == first.U.untyped_storage().data_ptr()
        with torch.no_grad():
            own_U[0, 1] = 7.0
        assert first.V[1, 0] == 7.0
    # TMS: linear2's target is linear1's transpose, so the two layers are equally faithful.
    gap1 = model.target_weight("linear1") - first.weight
    gap2 = model.target_weight("linear2") - second.weight
    assert torch.allclose(gap1.T, gap2)


def test_new_components_start_at_zero_until_initialised() -> None:
    # A regression test: factors once came from `torch.empty`, whose stray memory made a loss NaN.
    model = ComponentModel(TinyLM(), ["embed", "lm_head"], C=4)
    for comp in model.components.values():
        assert torch.equal(comp.V, torch.zeros_like(comp.V))
        assert torch.equal(comp.U, torch.zeros_like(comp.U))


def test_init_from_target_uses_unit_directions_scaled_by_the_projection() -> None:
    torch.manual_seed(0)
    weight = torch.randn(3, 4)  # nn.Linear layout (d_out, d_in)
    comp = Components(4, 3, C=6, weight_layout="out_in")
    comp.init_from_target(weight, torch.Generator().manual_seed(1))
    w = weight.T
    assert torch.allclose(comp.V.norm(dim=0), torch.ones(6))
    for c in range(6):
        v, u_hat = comp.V[:, c], comp.U[c] / comp.U[c].norm()
        # U_c = (v_cᵀ W û_c) û_c, whatever the sign of the projection.
        assert torch.allclose(comp.U[c], (v @ w @ u_hat) * u_hat, atol=1e-6)


def _scalar_mlp_reference(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """Plain autograd: out[..., c] = Σ_k w2[c, k] gelu(x[..., c] w1[c, k] + b1[c, k]) + b2[c]."""
    return (w2 * F.gelu(x[..., None] * w1 + b1)).sum(-1) + b2


def _scalar_mlp_inputs(dtype: torch.dtype, zero_rows: bool) -> list[Tensor]:
    """x (2, 5, C) and the weights; with `zero_rows`, 8 of x's 10 rows are zero, so the fused
    function takes its shared-zero-row path (and gradients reach those rows through it)."""
    generator = torch.Generator().manual_seed(4)
    C, H = 3, 4
    shapes = [(2, 5, C), (C, H), (C, H), (C, H), (C,)]
    tensors = [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
    if zero_rows:
        tensors[0][0, 1:] = 0
        tensors[0][1, :4] = 0
    return [t.requires_grad_(True) for t in tensors]


def _set_block(monkeypatch: pytest.MonkeyPatch, elements: int) -> None:
    """Blocks of about `elements` hidden-layer elements, whatever the number of threads."""
    per_thread = elements // torch.get_num_threads()
    monkeypatch.setattr(scalar_mlp_module, "CPU_BLOCK_ELEMENTS", per_thread)


# Block elements: every subcomponent in one block; one per block; two per block (the last
# block short: C = 3); the hidden layer has 10 (dense) or 2 (zero rows) rows × H = 4.
BLOCKINGS = pytest.mark.parametrize(
    "block_elements", [2**30, 1, 80], ids=["one-block", "blocks-of-1", "blocks-of-2"]
)


@BLOCKINGS
@pytest.mark.parametrize("zero_rows", [False, True], ids=["dense", "mostly-zero-rows"])
def test_fused_scalar_mlp_matches_autograd_values_and_gradients(
    zero_rows: bool, block_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_block(monkeypatch, block_elements)
    fused_in = _scalar_mlp_inputs(torch.float32, zero_rows)
    ref_in = [t.detach().clone().requires_grad_(True) for t in fused_in]
    fused, ref = scalar_mlp(*fused_in), _scalar_mlp_reference(*ref_in)
    assert torch.allclose(fused, ref, atol=1e-5)
    upstream = torch.randn(fused.shape, generator=torch.Generator().manual_seed(5))
    (fused * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for a, b in zip(fused_in, ref_in, strict=True):
        assert a.grad is not None and b.grad is not None
        assert torch.allclose(a.grad, b.grad, atol=1e-5)
    if zero_rows:  # the gradient through the shared zero rows is not zero
        assert fused_in[0].grad is not None and fused_in[0].grad[1, 0].abs().sum() > 0


@pytest.mark.parametrize("keep_hidden", [True, False], ids=["kept", "recomputed"])
@BLOCKINGS
@pytest.mark.parametrize("zero_rows", [False, True], ids=["dense", "mostly-zero-rows"])
def test_fused_scalar_mlp_gradcheck_float64(
    zero_rows: bool, block_elements: int, keep_hidden: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small hidden layers are kept for the backward pass, large ones recomputed; both must agree.
    _set_block(monkeypatch, block_elements)
    monkeypatch.setattr(scalar_mlp_module, "KEEP_HIDDEN_MAX", 2**30 if keep_hidden else 0)
    inputs = tuple(_scalar_mlp_inputs(torch.float64, zero_rows))
    assert torch.autograd.gradcheck(scalar_mlp, inputs)


@pytest.mark.parametrize("keep_hidden", [True, False], ids=["kept", "recomputed"])
def test_blocked_scalar_mlp_equals_one_block_on_a_training_sized_layer(
    keep_hidden: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # C = 7 subcomponents, 300 rows, hidden 16: blocks of 2 (4 blocks, the last short) against
    # one block, values and all five gradients, in float32 as training runs.
    monkeypatch.setattr(scalar_mlp_module, "KEEP_HIDDEN_MAX", 2**30 if keep_hidden else 0)
    generator = torch.Generator().manual_seed(11)
    C, N, H = 7, 300, 16
    shapes = [(N, C), (C, H), (C, H), (C, H), (C,)]
    base = [torch.randn(s, generator=generator) for s in shapes]
    upstream = torch.randn(N, C, generator=generator)
    results = []
    for block_elements in (2**30, 2 * N * H):
        _set_block(monkeypatch, block_elements)
        inputs = [t.clone().requires_grad_(True) for t in base]
        out = scalar_mlp(*inputs)
        (out * upstream).sum().backward()
        results.append([out.detach(), *(t.grad for t in inputs)])
    for one_block, blocked in zip(*results, strict=True):
        assert one_block is not None and blocked is not None
        torch.testing.assert_close(blocked, one_block, rtol=1e-6, atol=1e-6)


def test_a_shared_storage_tie_shares_again_after_the_model_is_moved(
    tms_target: TargetFactory,
) -> None:
    # `.to(dtype)` (like `.to(device)`) gives every parameter a new tensor of its own.
    model = ComponentModel(
        tms_target(), ["linear1", "linear2"], C=4, tied_weights=[("linear1", "linear2")]
    )
    model.init_components_from_target(seed=0)
    model.to(torch.float64)
    first, second = model.components["linear1"], model.components["linear2"]
    assert second.V.dtype == torch.float64
    assert second.V.untyped_storage().data_ptr() == first.U.untyped_storage().data_ptr()
    assert second.U.untyped_storage().data_ptr() == first.V.untyped_storage().data_ptr()
    torch.testing.assert_close(second.weight, first.weight.T)
