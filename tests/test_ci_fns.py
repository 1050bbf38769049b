"""The CI-function types (`spd/models/ci_fns/`, docs/method.md 'Causal importance').

Every registered type is built, trained, saved and sized the same way (parametrised over
`CI_FNS.names()`); a type that reads every layer's input at once needs nothing of
`ComponentModel` beyond its own module; the two built-in types' maths by hand; the old `gate_*`
config keys and checkpoints still load.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from jaxtyping import Float
from pydantic import Field
from torch import Tensor, nn

from spd.config.ci_fn_registry import CI_FNS
from spd.config.loading import config_from_dict, load_config, read_yaml
from spd.config.schema import StrictModel
from spd.errors import SPDUserError
from spd.models.ci_fns.base import CIFunctionType, LayerShape, ci_function_type
from spd.models.ci_fns.mlp import MLPCIFn
from spd.models.ci_fns.vector_mlp import VectorMLPCIFn
from spd.models.component_model import ComponentModel, layer_shape
from spd.persistence.checkpoints import read_checkpoint
from spd.train.memory_estimate import ACTIVATION_OVERHEAD
from tests.paths import REPO_ROOT, TMS_5_2_CONFIG

HIDDEN_DIMS = [[5], [3, 4]]
HIDDEN_IDS = ["one_hidden", "two_hidden"]
C = 3
FIXTURE_CHECKPOINT = REPO_ROOT / "tests" / "fixtures" / "tms_5-2_step20_c5f8abb.pth"


class _Target(nn.Module):
    """Two decomposed layers of different widths: 3 → 4 → 2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: Float[Tensor, "... 3"]) -> Float[Tensor, "... 2"]:
        return self.fc2(torch.relu(self.fc1(x)))


def _model(ci_fn_type: str, hidden_dims: list[int], seed: int = 0) -> ComponentModel:
    torch.manual_seed(0)
    target = _Target()  # the same target whatever the seed of the decomposition
    torch.manual_seed(seed)
    model = ComponentModel(
        target, ["fc1", "fc2"], C=C, ci_fn_type=ci_fn_type, ci_fn_hidden_dims=hidden_dims
    )
    model.init_components_from_target(seed)
    _randomize(model.ci_fns, seed)
    return model


def _ci(
    model: ComponentModel, x: Tensor, sigmoid: str = "leaky_hard"
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    _, pre_acts = model.forward_with_pre_acts(x)
    return model.causal_importances(pre_acts, sigmoid)  # pyright: ignore[reportArgumentType]


def _inputs(rows: int, seed: int = 1) -> Tensor:
    return torch.randn(rows, 3, generator=torch.Generator().manual_seed(seed))


def _layers(model: ComponentModel) -> dict[str, LayerShape]:
    return {name: layer_shape(comp) for name, comp in model.components.items()}


# ----- every registered type -----

ALL_TYPES = CI_FNS.names()


def test_the_builtin_types_are_registered() -> None:
    assert {
        "mlp",
        "vector_mlp",
        "shared_mlp",
        "global_shared_mlp",
        "global_shared_transformer",
    } <= set(ALL_TYPES)


@pytest.mark.parametrize("hidden_dims", HIDDEN_DIMS, ids=HIDDEN_IDS)
@pytest.mark.parametrize("name", ALL_TYPES)
def test_ci_has_one_value_per_subcomponent_in_the_unit_interval(
    name: str, hidden_dims: list[int]
) -> None:
    model = _model(name, hidden_dims)
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1))
    ci, ci_upper = _ci(model, x)
    assert list(ci) == list(ci_upper) == ["fc1", "fc2"]
    for name_ in ("fc1", "fc2"):
        assert ci[name_].shape == ci_upper[name_].shape == (2, 5, C)
        assert bool(((ci[name_] >= 0) & (ci[name_] <= 1)).all())


@pytest.mark.parametrize("hidden_dims", HIDDEN_DIMS, ids=HIDDEN_IDS)
@pytest.mark.parametrize("name", ALL_TYPES)
def test_the_gradient_reaches_every_ci_function_parameter(
    name: str, hidden_dims: list[int]
) -> None:
    model = _model(name, hidden_dims)
    _, ci_upper = _ci(model, _inputs(16), sigmoid="normal")
    sum(c.sum() for c in ci_upper.values()).backward()  # pyright: ignore[reportAttributeAccessIssue]
    params = dict(model.ci_fns.named_parameters())
    assert params
    for param_name, p in params.items():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), param_name


@pytest.mark.parametrize("hidden_dims", HIDDEN_DIMS, ids=HIDDEN_IDS)
@pytest.mark.parametrize("name", ALL_TYPES)
def test_a_saved_and_loaded_decomposition_gives_identical_ci(
    name: str, hidden_dims: list[int], tmp_path: Path
) -> None:
    saved = _model(name, hidden_dims, seed=0)
    torch.save(saved.decomposition_state(), tmp_path / "state.pt")
    loaded = _model(name, hidden_dims, seed=1)
    x = _inputs(8)
    before = _ci(loaded, x)[0]
    assert not all(torch.equal(before[k], v) for k, v in _ci(saved, x)[0].items())
    loaded.load_decomposition_state(torch.load(tmp_path / "state.pt", weights_only=True))
    for ci_saved, ci_loaded in zip(_ci(saved, x), _ci(loaded, x), strict=True):
        for layer in ci_saved:
            assert torch.equal(ci_saved[layer], ci_loaded[layer])


@pytest.mark.parametrize("hidden_dims", HIDDEN_DIMS, ids=HIDDEN_IDS)
@pytest.mark.parametrize("name", ALL_TYPES)
def test_the_declared_parameter_count_is_the_built_modules(
    name: str, hidden_dims: list[int]
) -> None:
    model = _model(name, hidden_dims)
    ci_type = ci_function_type(name)
    declared = ci_type.parameter_count(_layers(model), hidden_dims, ci_type.params_model())
    assert declared == sum(p.numel() for p in model.ci_fns.parameters())


def _saved_elements(model: ComponentModel, rows: int) -> int:
    """Elements of the distinct tensors autograd saves while computing CI of `rows` inputs."""
    saved: dict[tuple[int, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        saved[(t.data_ptr(), t.numel())] = t.numel()
        return t

    _, pre_acts = model.forward_with_pre_acts(_inputs(rows))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.causal_importances(pre_acts, "leaky_hard")
    return sum(saved.values())


@pytest.mark.parametrize("hidden_dims", HIDDEN_DIMS, ids=HIDDEN_IDS)
@pytest.mark.parametrize("name", ALL_TYPES)
def test_the_declared_activation_memory_is_what_autograd_keeps(
    name: str, hidden_dims: list[int]
) -> None:
    """Per row, measured as the difference of two batch sizes (the parameters cancel): at least
    what the type declares, and at most what the memory estimate charges for it (the declared
    elements times `ACTIVATION_OVERHEAD`)."""
    model = _model(name, hidden_dims)
    ci_type = ci_function_type(name)
    declared = ci_type.activation_elements(_layers(model), hidden_dims, ci_type.params_model())
    per_row = (_saved_elements(model, 128) - _saved_elements(model, 64)) / 64
    assert declared <= per_row <= ACTIVATION_OVERHEAD * declared, (declared, per_row)


# ----- a type that reads every layer's input at once -----


class _ConcatParams(StrictModel):
    bias_init: float = Field(default=0.0, description="Initial value of every output bias")


class _ConcatLinear(nn.Module):
    """One linear map from all layers' inputs, concatenated, to all layers' raw CI."""

    def __init__(self, layers: Mapping[str, LayerShape], bias_init: float) -> None:
        super().__init__()
        self.names = list(layers)
        self.widths = [shape.C for shape in layers.values()]
        self.linear = nn.Linear(sum(s.d_in for s in layers.values()), sum(self.widths))
        with torch.no_grad():
            self.linear.bias.fill_(bias_init)

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = self.linear(torch.cat([inputs[name] for name in self.names], dim=-1))
        return dict(zip(self.names, out.split(self.widths, dim=-1), strict=True))


class _ConcatLinearType(CIFunctionType[_ConcatParams]):
    name = "test_concat_linear"
    params_model = _ConcatParams
    reads = "all_inputs"

    def build(
        self, layers: Mapping[str, LayerShape], hidden_dims: Sequence[int], params: _ConcatParams
    ) -> nn.Module:
        return _ConcatLinear(layers, params.bias_init)

    def parameter_count(
        self, layers: Mapping[str, LayerShape], hidden_dims: Sequence[int], params: _ConcatParams
    ) -> int:
        d_in = sum(s.d_in for s in layers.values())
        C_total = sum(s.C for s in layers.values())
        return (d_in + 1) * C_total

    def activation_elements(
        self,
        layers: Mapping[str, LayerShape],
        hidden_dims: Sequence[int],
        params: _ConcatParams,
        seq_len: int = 1,
    ) -> int:
        return sum(s.d_in + s.C for s in layers.values())


@pytest.fixture
def concat_type(monkeypatch: pytest.MonkeyPatch) -> str:
    """The type above, registered for one test."""
    CI_FNS.names()  # the built-ins first, so they are not registered inside the patch
    ci_type = _ConcatLinearType()
    monkeypatch.setitem(CI_FNS._plugins, ci_type.name, ci_type)  # pyright: ignore[reportPrivateUsage]
    return ci_type.name


def test_a_type_reading_all_inputs_gets_every_layers_input_at_once(concat_type: str) -> None:
    model = ComponentModel(
        _Target(), ["fc1", "fc2"], C=C, ci_fn_type=concat_type, ci_fn_params={"bias_init": 0.25}
    )
    module = model.ci_fns
    assert isinstance(module, _ConcatLinear)
    assert torch.equal(module.linear.bias, torch.full((2 * C,), 0.25))
    x = _inputs(6)
    _, pre_acts = model.forward_with_pre_acts(x)
    ci, _ = model.causal_importances(pre_acts, "hard")
    raw = module.linear(torch.cat([x, pre_acts["fc2"]], dim=-1))
    torch.testing.assert_close(ci["fc1"], raw[:, :C].clamp(0, 1))
    torch.testing.assert_close(ci["fc2"], raw[:, C:].clamp(0, 1))
    ci_type = ci_function_type(concat_type)
    count = ci_type.parameter_count(_layers(model), [], _ConcatParams())
    assert count == sum(p.numel() for p in model.ci_fns.parameters())


def test_a_types_params_are_checked_when_the_config_loads(concat_type: str) -> None:
    data = read_yaml(TMS_5_2_CONFIG) | {"ci_fn_type": concat_type}
    config = config_from_dict(data | {"ci_fn_params": {"bias_init": 1}})
    assert config.ci_fn_params == {"bias_init": 1.0}
    assert config_from_dict(data).ci_fn_params == {"bias_init": 0.0}
    with pytest.raises(SPDUserError) as info:
        config_from_dict(data | {"ci_fn_params": {"bias_inti": 1.0}})
    message = str(info.value)
    assert "'ci_fn_params'" in message and "bias_inti" in message and "bias_init" in message
    assert "\n" not in message


# ----- config keys and checkpoints -----


def test_params_for_a_type_without_any_are_refused() -> None:
    with pytest.raises(SPDUserError, match=r"ci_fn_params.*'mlp'.*'width'.*none"):
        config_from_dict(read_yaml(TMS_5_2_CONFIG) | {"ci_fn_params": {"width": 3}})


def test_an_unknown_type_lists_the_registered_ones() -> None:
    with pytest.raises(
        SPDUserError,
        match=r"ci_fn_type.*'transformer'.*available: global_shared_mlp, "
        r"global_shared_transformer, mlp, shared_mlp, vector_mlp",
    ):
        config_from_dict(read_yaml(TMS_5_2_CONFIG) | {"ci_fn_type": "transformer"})


def _warning_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "warning" in line]


def test_the_old_gate_keys_load_with_one_warning_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = read_yaml(TMS_5_2_CONFIG)
    del data["ci_fn_type"], data["ci_fn_hidden_dims"]
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({**data, "gate_type": "vector_mlp", "gate_hidden_dims": [8]}))
    config = load_config(path)
    assert (config.ci_fn_type, config.ci_fn_hidden_dims) == ("vector_mlp", [8])
    load_config(path)  # a launcher validates a file more than once: still one line per key
    lines = _warning_lines(capsys)
    assert lines == [
        f"spd: warning: {path}: config key 'gate_type' is now 'ci_fn_type'; write 'ci_fn_type'",
        f"spd: warning: {path}: config key 'gate_hidden_dims' is now 'ci_fn_hidden_dims'; "
        "write 'ci_fn_hidden_dims'",
    ]


def test_an_old_and_a_new_name_of_one_key_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(read_yaml(TMS_5_2_CONFIG) | {"gate_type": "mlp"}))
    with pytest.raises(
        SPDUserError, match=r"both 'gate_type' .* and 'ci_fn_type'; keep 'ci_fn_type'"
    ):
        load_config(path)


def test_a_checkpoint_with_gates_and_gate_keys_loads_its_ci_functions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stored = read_checkpoint(FIXTURE_CHECKPOINT)
    # Written by an earlier version: the CI functions under 'gates', the config with gate_* keys.
    assert "gates" in stored["decomposition"] and "ci_fns" not in stored["decomposition"]
    assert {"gate_type", "gate_hidden_dims"} <= stored["config"].keys()
    model = ComponentModel.from_pretrained(FIXTURE_CHECKPOINT)
    state = model.decomposition_state()
    assert (
        "gates" not in state and state["ci_fns"].keys() == stored["decomposition"]["gates"].keys()
    )
    for key, value in stored["decomposition"]["gates"].items():
        assert torch.equal(state["ci_fns"][key], value)
    # (the stored config's flat loss keys give warning lines of their own)
    lines = [line for line in _warning_lines(capsys) if "'gate_" in line]
    assert len(lines) == 2 and "'ci_fn_type'" in lines[0] and "'ci_fn_hidden_dims'" in lines[1]


# ----- the built-in types by hand -----


def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _randomize(module: nn.Module, seed: int) -> None:
    """Give every parameter (biases start at zero) random values so that all of them matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))


def test_mlp_ci_fn_hand_case() -> None:
    # C = 1, hidden 1: w1 = 1, b1 = 0, w2 = 2, b2 = 0.5  →  2·gelu(x) + 0.5.
    ci_fn = MLPCIFn(C=1, hidden_dims=[1])
    with torch.no_grad():
        ci_fn.weights[0].fill_(1.0)
        ci_fn.biases[0].fill_(0.0)
        ci_fn.weights[1].fill_(2.0)
        ci_fn.biases[1].fill_(0.5)
    out = ci_fn(torch.tensor([[1.0], [-0.5]]))
    assert out.squeeze(-1).tolist() == pytest.approx([2 * _gelu(1.0) + 0.5, 2 * _gelu(-0.5) + 0.5])
    assert 2 * _gelu(1.0) + 0.5 == pytest.approx(2.1826894921)


def _mlp_ci_fn_loop(ci_fn: MLPCIFn, x: Float[Tensor, "... C"]) -> Float[Tensor, "... C"]:
    """One independent scalar MLP per subcomponent, evaluated one subcomponent at a time."""
    n_layers = len(ci_fn.weights)
    outs = []
    for c in range(x.shape[-1]):
        h = x[..., c : c + 1]
        for k in range(n_layers):
            h = h @ ci_fn.weights[k][c] + ci_fn.biases[k][c]
            if k < n_layers - 1:
                h = F.gelu(h)
        outs.append(h[..., 0])
    return torch.stack(outs, dim=-1)


@pytest.mark.parametrize("hidden_dims", [[5], [3, 4]], ids=["one_hidden", "two_hidden"])
def test_mlp_ci_fn_matches_a_per_component_loop(hidden_dims: list[int]) -> None:
    ci_fn = MLPCIFn(C=6, hidden_dims=hidden_dims)
    _randomize(ci_fn, seed=0)
    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ci_fn(x), _mlp_ci_fn_loop(ci_fn, x), atol=1e-5)


def _vector_ci_fn_loop(
    ci_fn: VectorMLPCIFn, x: Float[Tensor, "... d_in"]
) -> Float[Tensor, "... C"]:
    outs = []
    for c in range(ci_fn.C):
        h = x @ ci_fn.in_weight[:, c, :] + ci_fn.in_bias[c]
        for w, b in zip(ci_fn.weights, ci_fn.biases, strict=True):
            h = F.gelu(h) @ w[c] + b[c]
        outs.append(h[..., 0])
    return torch.stack(outs, dim=-1)


@pytest.mark.parametrize("hidden_dims", [[5], [3, 4]], ids=["one_hidden", "two_hidden"])
def test_vector_mlp_ci_fn_matches_a_per_component_loop(hidden_dims: list[int]) -> None:
    ci_fn = VectorMLPCIFn(C=4, d_in=3, hidden_dims=hidden_dims)
    _randomize(ci_fn, seed=2)
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(3))
    out = ci_fn(x)
    assert out.shape == (2, 5, 4)
    assert torch.allclose(out, _vector_ci_fn_loop(ci_fn, x), atol=1e-5)


def test_vector_mlp_ci_fn_hand_case() -> None:
    # C = 1, d_in 2, hidden 1: in_weight [1, −1], in_bias 0.5, w 3, b −1  →  3·gelu(x0 − x1 + 0.5) − 1.
    ci_fn = VectorMLPCIFn(C=1, d_in=2, hidden_dims=[1])
    with torch.no_grad():
        ci_fn.in_weight.copy_(torch.tensor([[[1.0]], [[-1.0]]]))
        ci_fn.in_bias.fill_(0.5)
        ci_fn.weights[0].fill_(3.0)
        ci_fn.biases[0].fill_(-1.0)
    out = ci_fn(torch.tensor([[2.0, 1.0]]))
    assert out.item() == pytest.approx(3 * _gelu(1.5) - 1)


@pytest.mark.parametrize(
    ("make", "expected_stds"),
    [
        # (1 → 16 → 1): hidden √(2/1), output 1/√16 (was √(2/16) = 0.354 before parity).
        (lambda: MLPCIFn(4000, [16]), [math.sqrt(2.0), 0.25]),
        # (1 → 16 → 4 → 1): hidden √2, √(2/16); output 1/√4.
        (lambda: MLPCIFn(4000, [16, 4]), [math.sqrt(2.0), math.sqrt(2 / 16), 0.5]),
        # vector input of 10 → 8 → 1: hidden √(2/10), output 1/√8.
        (lambda: VectorMLPCIFn(4000, 10, [8]), [math.sqrt(2 / 10), math.sqrt(1 / 8)]),
    ],
)
def test_ci_function_init_gain_two_before_gelu_and_one_at_the_output(
    make: Callable[[], nn.Module], expected_stds: list[float]
) -> None:
    # Tens of thousands of draws per layer: the empirical std is within ~1 % of the formula.
    torch.manual_seed(0)
    ci_fn = make()
    weights = [
        p for name, p in ci_fn.named_parameters() if "weight" in name
    ]  # in order: (in_weight,) then the later layers
    assert len(weights) == len(expected_stds)
    for w, expected in zip(weights, expected_stds, strict=True):
        assert w.numel() >= 4000
        assert float(w.detach().std()) == pytest.approx(expected, rel=0.03)
        assert abs(float(w.detach().mean())) < 0.05 * expected
