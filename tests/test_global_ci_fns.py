"""The CI functions that read layer inputs with shared hidden units: `shared_mlp` (per layer),
`global_shared_mlp` and `global_shared_transformer` (every layer at once; docs/method.md,
'Global CI functions').

Their maths (sorted concatenation and split, an embedding's token as its one-hot vector, the
attention over the sequence: bidirectional, position-aware, sequences of one for a toy model),
their gradients, saving and loading, their memory declaration, their parameter checks and a few
training steps of tms_5-2 with each global type and the training options on. What every
registered type must do (shapes, gradients, save/load, sizes) is also in tests/test_ci_fns.py.
"""

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from spd.analysis.analyze import PassOptions, analyze_run
from spd.analysis.browser import write_browser
from spd.config.loading import config_from_dict, read_yaml
from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.loading.targets import load_target_model
from spd.models.ci_fns.base import ci_function_type
from spd.models.ci_fns.global_shared_mlp import GlobalSharedMLPCIFn
from spd.models.ci_fns.global_shared_transformer import GlobalSharedTransformerCIFn
from spd.models.ci_fns.shared_mlp import SharedMLPCIFn
from spd.models.component_model import ComponentModel, build_component_model, layer_shape
from spd.persistence.checkpoints import checkpoint_path, latest_checkpoint
from spd.persistence.run_dir import RunDirectory, read_metrics
from spd.train.memory_estimate import ACTIVATION_OVERHEAD
from tests.fixture_types import ConfigFactory, TargetFactory
from tests.paths import TMS_5_2_CONFIG
from tests.resumable_runs import assert_bitwise_equal, decomposition_tensors, run, tiny_config
from tests.test_compilation import STEPS
from tests.test_compilation import _run as run_losses_and_params  # pyright: ignore[reportPrivateUsage]
from tests.tiny_runs import run_tiny_tms

GLOBAL_TYPES = ["global_shared_mlp", "global_shared_transformer"]
NEW_TYPES = ["shared_mlp", *GLOBAL_TYPES]
TRANSFORMER = {"d_model": 8, "n_blocks": 2, "n_heads": 2, "mlp_hidden": 12}
VOCAB = 7
# Per decomposed layer, in the target's order (not sorted: embed < up < down is not name order).
MODULE_C = {"embed": 3, "up": 4, "down": 2}
SORTED = ["down", "embed", "up"]


class _SeqTarget(nn.Module):
    """tokens → embed (7 → 6) → up (6 → 5) → tanh → down (5 → 4): a tiny sequence model with an
    embedding and two linear layers, each position on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 6)
        self.up = nn.Linear(6, 5)
        self.down = nn.Linear(5, 4)

    def forward(self, tokens: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq 4"]:
        return self.down(torch.tanh(self.up(self.embed(tokens))))


def _params(ci_fn_type: str) -> dict[str, Any]:
    return TRANSFORMER if ci_fn_type == "global_shared_transformer" else {}


def _randomize(module: nn.Module, seed: int) -> None:
    """Every parameter random (biases start at zero, norm gains at one), so that all matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


def _seq_model(ci_fn_type: str, seed: int = 0) -> ComponentModel:
    torch.manual_seed(0)
    target = _SeqTarget()
    torch.manual_seed(seed)
    model = ComponentModel(
        target,
        ["embed", "up", "down"],
        C=MODULE_C,
        ci_fn_type=ci_fn_type,
        ci_fn_hidden_dims=[6],
        ci_fn_params=_params(ci_fn_type),
    )
    _randomize(model.ci_fns, seed)
    return model


def _tokens(batch: int = 2, seq: int = 5, seed: int = 1) -> Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _raw(model: ComponentModel, tokens: Tensor) -> dict[str, Tensor]:
    """Raw CI (before the sigmoid) of every layer; a global function reads the inputs as they are."""
    _, pre_acts = model.forward_with_pre_acts(tokens)
    if model.ci_fn_type.reads == "all_inputs":
        return model.ci_fns(pre_acts)
    return {name: model.ci_fn(name)(x) for name, x in pre_acts.items()}


# ----- shapes and order -----


@pytest.mark.parametrize("name", NEW_TYPES)
def test_each_layer_gets_its_own_width_of_ci_in_the_models_order(name: str) -> None:
    model = _seq_model(name)
    _, pre_acts = model.forward_with_pre_acts(_tokens())
    ci, ci_upper = model.causal_importances(pre_acts, "leaky_hard")
    assert list(ci) == list(ci_upper) == list(MODULE_C)
    for layer, C in MODULE_C.items():
        assert ci[layer].shape == ci_upper[layer].shape == (2, 5, C)
        assert bool(((ci[layer] >= 0) & (ci[layer] <= 1)).all())


@pytest.mark.parametrize("name", GLOBAL_TYPES)
def test_the_output_is_split_per_layer_in_sorted_name_order(name: str) -> None:
    model = _seq_model(name)
    module = model.ci_fns
    # The last map outputs its bias alone: 0, 1, … across the Σ C outputs.
    if isinstance(module, GlobalSharedMLPCIFn):
        last_weight, last_bias = module.mlp.weights[-1], module.mlp.biases[-1]
    else:
        assert isinstance(module, GlobalSharedTransformerCIFn)
        last_weight, last_bias = module.head, module.head_bias
    with torch.no_grad():
        last_weight.zero_()
        last_bias.copy_(torch.arange(last_bias.numel(), dtype=torch.float32))
    raw = _raw(model, _tokens())
    start = 0
    for layer in SORTED:
        expected = torch.arange(start, start + MODULE_C[layer], dtype=torch.float32)
        assert torch.equal(raw[layer], expected.expand(2, 5, -1)), layer
        start += MODULE_C[layer]


def _gelu_mlp(h: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    for w, b in zip(weights, biases, strict=True):
        h = F.gelu(h) @ w + b
    return h


def test_the_global_mlp_is_one_mlp_on_the_sorted_concatenation_with_one_hot_tokens() -> None:
    model = _seq_model("global_shared_mlp")
    module = model.ci_fns
    assert isinstance(module, GlobalSharedMLPCIFn)
    tokens = _tokens()
    _, pre_acts = model.forward_with_pre_acts(tokens)
    # By hand: [down's input (5) | one-hot token (7) | up's input (6)] @ one (18, 6) matrix.
    projection = module.mlp.projection
    assert projection.weight is not None
    matrix = torch.cat(
        [projection.weight[:5], projection.tables["embed"], projection.weight[5:]], dim=0
    )
    x = torch.cat([pre_acts["down"], F.one_hot(tokens, VOCAB).float(), pre_acts["up"]], dim=-1)
    out = _gelu_mlp(x @ matrix + projection.bias, list(module.mlp.weights), list(module.mlp.biases))
    raw = _raw(model, tokens)
    torch.testing.assert_close(torch.cat([raw[n] for n in SORTED], dim=-1), out)


def test_shared_mlp_reads_an_embeddings_token_as_its_one_hot_vector() -> None:
    model = _seq_model("shared_mlp")
    tokens = _tokens()
    fn = model.ci_fn("embed")
    assert isinstance(fn, SharedMLPCIFn)
    projection = fn.mlp.projection
    h = F.one_hot(tokens, VOCAB).float() @ projection.tables["input"] + projection.bias
    expected = _gelu_mlp(h, list(fn.mlp.weights), list(fn.mlp.biases))
    torch.testing.assert_close(_raw(model, tokens)["embed"], expected)


class _ThreeLinear(nn.Module):
    """a → tanh → b → tanh → c, each 4 → 4: three layers of one shape, each with its own input."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: Float[Tensor, "... 4"]) -> Float[Tensor, "... 4"]:
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_the_global_mlps_outputs_move_with_their_inputs() -> None:
    """Permute the layers cyclically (a → b → c → a): a copy of the function whose input blocks
    and output blocks are permuted so (in the documented layout: sorted names, each layer's
    input and outputs in one block), fed a's input in b's slot and so on, gives a's CI as b's.
    A function whose input and output slots disagree, or are not in sorted order, fails."""
    torch.manual_seed(0)
    model = ComponentModel(_ThreeLinear(), ["a", "b", "c"], C=3, ci_fn_type="global_shared_mlp")
    _randomize(model.ci_fns, 3)
    f = model.ci_fns
    assert isinstance(f, GlobalSharedMLPCIFn)
    _, pre_acts = model.forward_with_pre_acts(torch.randn(8, 4))
    raw = f(pre_acts)
    moved = {"a": "b", "b": "c", "c": "a"}
    slot = {name: i for i, name in enumerate(["a", "b", "c"])}
    g = copy.deepcopy(f)
    with torch.no_grad():
        weight, out_w, out_b = g.mlp.projection.weight, g.mlp.weights[-1], g.mlp.biases[-1]
        assert weight is not None
        for source, dest in moved.items():
            i, j = slot[source], slot[dest]
            weight[4 * j : 4 * j + 4] = f.mlp.projection.weight[4 * i : 4 * i + 4]  # pyright: ignore[reportOptionalSubscript]
            out_w[:, 3 * j : 3 * j + 3] = f.mlp.weights[-1][:, 3 * i : 3 * i + 3]
            out_b[3 * j : 3 * j + 3] = f.mlp.biases[-1][3 * i : 3 * i + 3]
    # The permuted inputs in a mapping of another order: the slots go by name, not position.
    permuted = {moved[name]: pre_acts[name] for name in ["c", "a", "b"]}
    out = g(permuted)
    for source, dest in moved.items():
        torch.testing.assert_close(out[dest], raw[source])
    assert not torch.allclose(raw["a"], raw["b"])  # the check above is not between equal values


# ----- the transformer's attention -----


def test_the_transformers_attention_sees_later_and_earlier_tokens() -> None:
    model = _seq_model("global_shared_transformer")
    tokens = _tokens(batch=2, seq=6)
    raw = _raw(model, tokens)
    later = tokens.clone()
    later[:, -1] = (later[:, -1] + 1) % VOCAB
    changed = _raw(model, later)
    earlier = tokens.clone()
    earlier[:, 0] = (earlier[:, 0] + 1) % VOCAB
    changed_first = _raw(model, earlier)
    for layer in MODULE_C:
        # Bidirectional: changing the last token moves the first position's CI, and vice versa.
        assert (changed[layer][:, 0] - raw[layer][:, 0]).abs().max() > 1e-4, layer
        assert (changed_first[layer][:, -1] - raw[layer][:, -1]).abs().max() > 1e-4, layer
        # Rows of a batch do not see each other.
        one_row = _raw(model, tokens[:1])[layer]
        torch.testing.assert_close(one_row, raw[layer][:1], rtol=1e-5, atol=1e-6)


def test_the_transformer_knows_positions() -> None:
    """Without positions, attention is permutation-equivariant: a reversed sequence would give
    the reversed CI. Rotary positions break that."""
    model = _seq_model("global_shared_transformer")
    tokens = _tokens(batch=1, seq=6)
    raw = _raw(model, tokens)["up"]
    reversed_raw = _raw(model, tokens.flip(-1))["up"].flip(-2)
    assert (raw - reversed_raw).abs().max() > 1e-3


def test_a_toy_models_rows_are_sequences_of_one() -> None:
    """(batch, d) inputs: each row's CI is its own, as the CPU row selection assumes."""
    torch.manual_seed(0)
    model = ComponentModel(
        _ThreeLinear(), ["a", "b", "c"], C=3, ci_fn_type="global_shared_transformer"
    )
    _randomize(model.ci_fns, 4)
    x = torch.randn(6, 4)
    raw = _raw(model, x)
    for layer in ("a", "b", "c"):
        assert raw[layer].shape == (6, 3)
        torch.testing.assert_close(_raw(model, x[2:3])[layer], raw[layer][2:3])


# ----- gradients, saving, sizes -----


@pytest.mark.parametrize("name", NEW_TYPES)
def test_gradients_reach_every_parameter_on_sequences(name: str) -> None:
    model = _seq_model(name)
    _, pre_acts = model.forward_with_pre_acts(_tokens(batch=3, seq=6))
    _, ci_upper = model.causal_importances(pre_acts, "normal")
    sum(c.sum() for c in ci_upper.values()).backward()  # pyright: ignore[reportAttributeAccessIssue]
    for param_name, p in model.ci_fns.named_parameters():
        assert p.grad is not None, param_name
        if param_name.endswith("qkv"):
            # Each of the query, key and value maps gets a gradient of its own.
            for block in p.grad.chunk(3, dim=-1):
                assert bool(block.abs().sum() > 0), param_name
        assert bool(p.grad.abs().sum() > 0), param_name


@pytest.mark.parametrize("name", NEW_TYPES)
def test_a_saved_and_loaded_function_gives_identical_ci_on_sequences(
    name: str, tmp_path: Path
) -> None:
    saved = _seq_model(name, seed=0)
    torch.save(saved.decomposition_state(), tmp_path / "state.pt")
    loaded = _seq_model(name, seed=1)
    tokens = _tokens()
    before = _raw(loaded, tokens)
    expected = _raw(saved, tokens)
    assert not torch.equal(before["up"], expected["up"])
    loaded.load_decomposition_state(torch.load(tmp_path / "state.pt", weights_only=True))
    after = _raw(loaded, tokens)
    for layer in MODULE_C:
        assert torch.equal(after[layer], expected[layer])


def _saved_per_token(model: ComponentModel, batch: int, seq: int) -> float:
    """Elements autograd keeps per token while computing CI, from two batch sizes (what does
    not grow with the batch, as the parameters and the rotary angles, cancels)."""

    def saved(rows: int) -> int:
        kept: dict[tuple[int, int], int] = {}

        def pack(t: Tensor) -> Tensor:
            kept[(t.data_ptr(), t.numel())] = t.numel()
            return t

        _, pre_acts = model.forward_with_pre_acts(_tokens(batch=rows, seq=seq))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.causal_importances(pre_acts, "leaky_hard")
        return sum(kept.values())

    return (saved(2 * batch) - saved(batch)) / (batch * seq)


@pytest.mark.parametrize("name", NEW_TYPES)
def test_the_declared_activation_memory_per_token_is_what_autograd_keeps(name: str) -> None:
    model = _seq_model(name)
    ci_type = ci_function_type(name)
    layers = {n: layer_shape(c) for n, c in model.components.items()}
    params = ci_type.params_model.model_validate(_params(name))
    per_token = {}
    for seq in (4, 8):
        declared = ci_type.activation_elements(layers, [6], params, seq_len=seq)
        per_token[seq] = _saved_per_token(model, batch=2, seq=seq)
        assert declared <= per_token[seq] <= ACTIVATION_OVERHEAD * declared, (seq, declared)
    if name == "global_shared_transformer":
        # The attention probabilities: n_blocks × n_heads more per token for each position more.
        blocks, heads = TRANSFORMER["n_blocks"], TRANSFORMER["n_heads"]
        assert per_token[8] - per_token[4] == blocks * heads * 4
        assert ci_type.activation_elements(layers, [6], params, seq_len=8) - (
            ci_type.activation_elements(layers, [6], params, seq_len=4)
        ) == (blocks * heads * 4)
    else:
        assert per_token[8] == per_token[4]


# ----- the parameters are checked when the config loads -----


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"d_model": 10, "n_heads": 4}, "d_model 10 is not divisible by n_heads 4"),
        ({"d_model": 6, "n_heads": 2}, "head dimension d_model / n_heads = 3 is odd"),
        ({"n_blocks": 0}, "'n_blocks'"),
        ({"d_modle": 8}, "'d_modle'.*its parameters: d_model, n_blocks"),
    ],
)
def test_bad_transformer_parameters_are_one_line(params: dict[str, Any], message: str) -> None:
    data = read_yaml(TMS_5_2_CONFIG) | {
        "ci_fn_type": "global_shared_transformer",
        "ci_fn_params": params,
    }
    with pytest.raises(SPDUserError, match=message) as info:
        config_from_dict(data)
    assert "\n" not in str(info.value)


def test_the_transformers_parameters_load_with_their_defaults() -> None:
    data = read_yaml(TMS_5_2_CONFIG) | {"ci_fn_type": "global_shared_transformer"}
    config = config_from_dict(data | {"ci_fn_params": {"d_model": 32, "n_heads": 8}})
    assert config.ci_fn_params == {
        "d_model": 32,
        "n_blocks": 2,
        "n_heads": 8,
        "mlp_hidden": 256,
        "rope_theta": 10000.0,
    }


# ----- training -----


def _tiny(name: str, **changes: Any) -> Config:
    return tiny_config(
        ci_fn_type=name,
        ci_fn_hidden_dims=[8],
        ci_fn_params=TRANSFORMER if name == "global_shared_transformer" else {},
        **changes,
    )


def _initial_ci_params(config: Config) -> dict[str, Tensor]:
    """The CI function's parameters as a run of `config` starts them (`spd.train.setup`)."""
    torch.manual_seed(config.seed)
    model = build_component_model(load_target_model(config), config)
    return {k: v.clone() for k, v in model.decomposition_state()["ci_fns"].items()}


DELTA_SUBSET_ACCUMULATION = {
    "use_delta_component": True,
    "gradient_accumulation_steps": 2,
    "losses.stochastic_recon_subset.coeff": 1.0,
}
BF16 = {"autocast_bf16": True}


# Two cases in the default suite (about 8 s), the rest with the slow tests.
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("global_shared_transformer", DELTA_SUBSET_ACCUMULATION),
        ("global_shared_mlp", BF16),
        pytest.param("global_shared_mlp", DELTA_SUBSET_ACCUMULATION, marks=pytest.mark.slow),
        pytest.param("global_shared_transformer", BF16, marks=pytest.mark.slow),
        pytest.param("global_shared_mlp", {}, marks=pytest.mark.slow),
        pytest.param("global_shared_transformer", {}, marks=pytest.mark.slow),
    ],
    ids=["transformer-delta_subset_accumulation", "mlp-bf16", "mlp-delta_subset_accumulation",
         "transformer-bf16", "mlp-plain", "transformer-plain"],
)  # fmt: skip
def test_tms_trains_a_few_steps_with_a_global_ci_function(
    name: str, options: dict[str, Any], tmp_path: Path
) -> None:
    config = _tiny(name, steps=6, save_freq=None, **options)
    run_dir = RunDirectory.create(tmp_path, "run")
    model = run(config, run_dir).model
    losses = [v for row in read_metrics(run_dir.path) for k, v in row.items() if "loss" in k]
    assert losses and all(math.isfinite(v) for v in losses)
    initial = _initial_ci_params(config)
    for key, value in model.decomposition_state()["ci_fns"].items():
        assert not torch.equal(value, initial[key]), key


@pytest.mark.parametrize(
    "name",
    ["global_shared_transformer", pytest.param("global_shared_mlp", marks=pytest.mark.slow)],
)
def test_stop_and_resume_with_a_global_ci_function_is_bitwise_identical(
    name: str, tmp_path: Path
) -> None:
    config = _tiny(name, steps=8, save_freq=4, eval_freq=4)
    straight = RunDirectory.create(tmp_path, "straight")
    run(config, straight)
    resumed = RunDirectory.create(tmp_path, "resumed")
    assert run(config, resumed, stop_after=3).stopped_at == 4
    run(config, resumed, resume_from=latest_checkpoint(resumed.path))
    assert_bitwise_equal(
        decomposition_tensors(checkpoint_path(resumed, 8)),
        decomposition_tensors(checkpoint_path(straight, 8)),
    )


def test_a_global_run_is_analysed_and_browsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path))
    run_dir = run_tiny_tms(
        ci_fn_type="global_shared_transformer", ci_fn_params=TRANSFORMER, steps=10
    ).path
    analyze_run(run_dir, PassOptions(n_tokens=500, batch_size=100, show_progress=False))
    html = write_browser(run_dir).read_text()
    payload = json.loads(html.split('type="application/json">')[1].split("</script>")[0])
    assert {layer["name"] for layer in payload["layers"]} == {"linear1", "linear2"}


@pytest.mark.slow  # compilation takes 20 s to minutes on the 2-core CPU
@pytest.mark.parametrize("name", GLOBAL_TYPES)
def test_a_compiled_run_with_a_global_ci_function_equals_the_eager_run(
    name: str, quick_tms_config: ConfigFactory, tms_target: TargetFactory, device: torch.device
) -> None:
    def config(mode: str) -> Config:
        return quick_tms_config(
            steps=STEPS,
            train_log_freq=1,
            eval_freq=100,
            slow_eval_freq=100,
            compile=mode,
            ci_fn_type=name,
            ci_fn_params=_params(name),
        )

    eager_losses, eager_params = run_losses_and_params(config("off"), tms_target(), device)
    losses, params = run_losses_and_params(config("on"), tms_target(), device)
    assert len(losses) == STEPS + 1
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(params, eager_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
