"""Persistent PGD (`persistent_pgd_recon`, `persistent_pgd_recon_subset`; docs/method.md,
'Persistent PGD'): the term at the current sources by hand, k updates of the sources against k
hand-applied signed and Adam steps, clamping, the scopes' shapes and row mapping, the validation
lines, the original's blocks, and two real gloo ranks keeping their shared sources equal."""

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from spd.config.loading import load_config
from spd.config.original_later_blocks import translate_loss_blocks
from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.experiments.registry import get_experiment
from spd.experiments.tms.task import TMSTaskConfig
from spd.loading.targets import load_target_model
from spd.losses.batch import batch_loss
from spd.losses.inputs import TermState, loss_inputs
from spd.losses.persistent_pgd import AdamOptimizer, PersistentPGDParams, PersistentSources
from spd.losses.term import StateContext
from spd.losses.total import build_term_states, configured_terms
from spd.models.component_model import ComponentModel
from spd.train.memory_estimate import step_bytes
from spd.train.schedules import lr_at_step
from spd.train.setup import term_states
from tests.paths import REPO_ROOT, TMS_5_2_CONFIG
from tests.resumable_runs import TINY, TMS_CONFIG, override_args, run_tms
from tests.toy_targets import TinyLM, TwoLinear, two_linear_config

X = torch.tensor([[1.0, 2.0], [1.0, 0.0], [-0.5, 1.5], [2.0, -1.0]])
NAME = "persistent_pgd_recon"


def _model() -> ComponentModel:
    """TwoLinear with random factors (C 3), so that every source has a gradient."""
    torch.manual_seed(0)
    model = ComponentModel(TwoLinear(), ["fc1", "fc2"], C=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p))
    return model


def _config(params: dict[str, Any], coeff: float = 2.0, name: str = NAME, **fields: Any) -> Config:
    return two_linear_config(
        C=3,
        use_delta_component=True,
        steps=4,
        losses=[{"name": name, "coeff": coeff, "params": params}],
        **fields,
    )


def _states(config: Config, rows: int) -> dict[str, TermState]:
    """The states a training run builds (the run's lr schedules), for `rows` rows per micro-batch."""
    return build_term_states(
        configured_terms(config),
        lambda c: StateContext(c.term.name, c.coeff, config.steps, rows, lr_at_step=lr_at_step),
    )


def _live_sources(states: Mapping[str, TermState], name: str = NAME) -> dict[str, Tensor]:
    state = states[name]
    assert isinstance(state, PersistentSources) and state.sources is not None
    return state.sources


def _sources(states: Mapping[str, TermState], name: str = NAME) -> dict[str, Tensor]:
    return {k: s.detach().clone() for k, s in _live_sources(states, name).items()}


def _hand_layer(model: ComponentModel, name: str, x: Tensor, s: Tensor, g: Tensor) -> Tensor:
    """U (m ⊙ V x) + m_Δ (W − V U) x + b with m = g + (1 − g) s[:C], m_Δ = s[C], by hand."""
    comp = model.components[name]
    weight = model.decomposed[name].original.weight
    assert isinstance(weight, Tensor)
    C = g.shape[-1]
    m, m_delta = g + (1 - g) * s[..., :C], s[..., C]
    out = ((x @ comp.V) * m) @ comp.U + m_delta.unsqueeze(-1) * (x @ (weight.T - comp.V @ comp.U))
    return out if comp.bias is None else out + comp.bias


def _hand_loss(
    model: ComponentModel, ci: Mapping[str, Tensor], s: Mapping[str, Tensor], x: Tensor
) -> Tensor:
    """The MSE of the hand-masked TwoLinear from the target's output."""
    hidden = _hand_layer(model, "fc1", x, s["fc1"], ci["fc1"])
    out = _hand_layer(model, "fc2", hidden, s["fc2"], ci["fc2"])
    return ((out - model.target(x)) ** 2).mean()


def _ci(model: ComponentModel, config: Config) -> dict[str, Tensor]:
    return {k: g.detach() for k, g in loss_inputs(model, X, config, 1.0).ci.items()}


def _hand_grad(
    model: ComponentModel, ci: Mapping[str, Tensor], s: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    live = {k: v.clone().requires_grad_(True) for k, v in s.items()}
    grads = torch.autograd.grad(_hand_loss(model, ci, live, X), list(live.values()))
    return dict(zip(live, grads, strict=True))


def _train_sources(model: ComponentModel, config: Config, k: int) -> dict[str, TermState]:
    """k training steps of the sources alone (the model's gradients are discarded): the loss,
    its backward, the update; returns the states."""
    states = _states(config, X.shape[0])
    for step in range(k):
        batch_loss(model, X, config, 1.0, states).total.backward()
        model.zero_grad(set_to_none=True)
        for state in states.values():
            state.update(step)
    return states


def test_the_term_is_the_hand_built_loss_at_the_current_sources() -> None:
    model = _model()
    config = _config({"scope": {"type": "per_position"}, "optimizer": {"type": "sign"}})
    states = _states(config, X.shape[0])
    for step in range(2):
        result = batch_loss(model, X, config, 1.0, states)
        s = _sources(states)
        assert s["fc1"].shape == (4, 4)  # per position: 4 rows, C 3 + the delta mask
        expected = _hand_loss(model, _ci(model, config), s, X)
        torch.testing.assert_close(result.terms[NAME], expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(result.total, 2.0 * expected, rtol=1e-6, atol=1e-7)
        result.total.backward()
        # The model's gradient is that of the loss at fixed sources: g gets one, s is a constant.
        assert model.components["fc1"].V.grad is not None
        states[NAME].update(step)


def test_sign_sources_after_k_steps_equal_k_hand_updates() -> None:
    model = _model()
    # A linear schedule over the run's 4 steps: step sizes 0.3, 0.225, 0.15.
    optimizer = {"type": "sign", "step_size": 0.3, "lr_schedule": "linear"}
    config = _config({"optimizer": optimizer, "init": "random"})
    torch.manual_seed(5)
    states = _train_sources(model, config, k=3)
    torch.manual_seed(5)  # the same initial draw
    initial = {k: torch.rand(4) for k in ("fc1", "fc2")}
    ci = _ci(model, config)
    s = initial
    for step in range(3):
        grads = _hand_grad(model, ci, s)
        size = 0.3 * (1 - step / 4)
        s = {k: (v + size * grads[k].sign()).clamp(0, 1) for k, v in s.items()}
    got = _sources(states)
    for k in s:
        torch.testing.assert_close(got[k], s[k], rtol=0, atol=1e-6)
        assert not torch.allclose(got[k], initial[k])


def test_adam_sources_after_k_steps_equal_k_hand_updates() -> None:
    model = _model()
    # eps 0.5 makes the update depend on the gradient's scale: the coeff (2) must be divided out.
    adam = {"type": "adam", "lr": 0.05, "beta1": 0.8, "beta2": 0.9, "eps": 0.5}
    config = _config({"optimizer": adam, "init": "zeroes", "scope": {"type": "single"}})
    states = _train_sources(model, config, k=3)
    ci = _ci(model, config)
    s = {k: torch.zeros(4) for k in ("fc1", "fc2")}
    m = {k: torch.zeros(4) for k in s}
    v = {k: torch.zeros(4) for k in s}
    for t in range(1, 4):
        grads = _hand_grad(model, ci, s)
        for k in s:
            m[k] = 0.8 * m[k] + 0.2 * grads[k]
            v[k] = 0.9 * v[k] + 0.1 * grads[k] ** 2
            m_hat, v_hat = m[k] / (1 - 0.8**t), v[k] / (1 - 0.9**t)
            s[k] = (s[k] + 0.05 * m_hat / (v_hat.sqrt() + 0.5)).clamp(0, 1)
    got = _sources(states)
    for k in s:
        torch.testing.assert_close(got[k], s[k], rtol=0, atol=1e-6)
        assert (got[k] > 0).any()  # they moved off the zeroes


def test_steps_past_the_box_are_clamped_to_0_and_1() -> None:
    model = _model()
    config = _config({"optimizer": {"type": "sign", "step_size": 0.7}, "init": "zeroes"})
    ci = _ci(model, config)
    s = {k: torch.zeros(4) for k in ("fc1", "fc2")}
    below = above = False
    for k in (1, 2):
        grads = _hand_grad(model, ci, s)
        below |= any(bool(((v == 0) & (grads[n] < 0)).any()) for n, v in s.items())
        above |= any(bool(((v == 0.7) & (grads[n] > 0)).any()) for n, v in s.items())
        s = {n: (v + 0.7 * grads[n].sign()).clamp(0, 1) for n, v in s.items()}
        got = _sources(_train_sources(model, config, k=k))
        for n, v in s.items():
            torch.testing.assert_close(got[n], v, rtol=0, atol=1e-7)
    # Both bounds were reached by a step that went past them (0 − 0.7, 0.7 + 0.7).
    assert below and above


TOKENS = torch.tensor([[0, 1, 2], [2, 2, 0], [1, 0, 0], [2, 1, 1]])


@pytest.mark.parametrize(
    ("scope", "shape"),
    [
        ({"type": "single"}, (4,)),
        ({"type": "broadcast_across_batch"}, (3, 4)),
        ({"type": "repeat_across_batch", "n_sources": 2}, (2, 3, 4)),
        ({"type": "per_position"}, (4, 3, 4)),
    ],
)
def test_each_scope_has_its_shape_and_maps_examples_to_sources(
    scope: dict[str, Any], shape: tuple[int, ...]
) -> None:
    # A sequence model: 4 examples of 3 positions, C 3 plus the delta mask.
    torch.manual_seed(0)
    model = ComponentModel(TinyLM(vocab=3, d_model=4), ["embed", "lm_head"], C=3)
    config = Config(
        C=3,
        target_module_patterns=["embed", "lm_head"],
        pretrained_model_class="tests.toy_targets.TinyLM",
        pretrained_model_path="unused",
        use_delta_component=True,
        output_loss_type="kl",
        task_config=TMSTaskConfig(),
        losses=[{"name": NAME, "coeff": 1.0, "params": {"scope": scope}}],  # pyright: ignore[reportArgumentType]
    )
    states = _states(config, TOKENS.shape[0])
    inputs = loss_inputs(model, TOKENS, config, 1.0, states)
    state = states[NAME]
    assert isinstance(state, PersistentSources)
    state.prepare(inputs)
    sources = _sources(states)
    assert {k: tuple(s.shape) for k, s in sources.items()} == {"embed": shape, "lm_head": shape}
    masks = state.masks(inputs)
    for name, g in inputs.ci.items():
        s = sources[name]
        for i in range(4):
            kind = scope["type"]
            source_i = (
                s[i % 2] if kind == "repeat_across_batch" else s[i] if kind == "per_position" else s
            )
            mask = masks[name]
            assert mask.component is not None and mask.delta is not None
            expected = g[i] + (1 - g[i]) * source_i[..., :3]
            torch.testing.assert_close(mask.component[i], expected.expand(3, 3))
            torch.testing.assert_close(mask.delta[i], source_i[..., 3].expand(3))


def test_the_cpu_row_selection_keeps_each_rows_own_source(monkeypatch: pytest.MonkeyPatch) -> None:
    # TMS (independent rows): most rows of a sparse batch are inert and left out of the step, so
    # per_position sources are looked up by each kept row's index in the full batch. The term,
    # and the sources' gradient, must equal the full batch's.
    config = load_config(
        TMS_5_2_CONFIG,
        {
            **TINY,
            "use_delta_component": True,
            "losses": [{"name": NAME, "coeff": 1.0, "params": {"scope": {"type": "per_position"}}}],
        },
    )
    torch.manual_seed(0)
    model = ComponentModel(load_target_model(config), ["linear1", "linear2"], C=20)
    x = torch.rand(32, 5) * (torch.rand(32, 5) < 0.05)
    results = {}
    for cut in (True, False):
        if not cut:
            monkeypatch.setattr("spd.losses.inputs.select_rows", lambda *args, **kwargs: None)
        torch.manual_seed(1)
        states = _states(config, 32)
        result = batch_loss(model, x, config, 1.0, states)
        assert (result.rows is not None) == cut
        result.total.backward()
        sources = _live_sources(states)
        results[cut] = (result.terms[NAME], {k: s.grad for k, s in sources.items()})
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-8)
    for k, grad in results[False][1].items():
        assert grad is not None and grad.abs().sum() > 0
        torch.testing.assert_close(results[True][1][k], grad, rtol=1e-4, atol=1e-9)


# ----- validation -----


def _tms_config(params: dict[str, Any], **changes: Any) -> Config:
    return load_config(
        TMS_5_2_CONFIG,
        {
            **TINY,
            **changes,
            "losses": [{"name": "persistent_pgd_recon_subset", "coeff": 1.0, "params": params}],
        },
    )


def test_n_sources_that_do_not_divide_the_rank_micro_batch_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scope = {"scope": {"type": "repeat_across_batch", "n_sources": 16}}
    config = _tms_config(scope, gradient_accumulation_steps=2)  # 32 / 2 = 16 rows: divides
    term_states(config)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # 16 / 2 = 8 rows per rank: 16 does not divide them
    with pytest.raises(SPDUserError) as err:
        term_states(config)
    assert str(err.value) == (
        "loss term 'persistent_pgd_recon_subset': scope repeat_across_batch n_sources 16 does "
        "not divide the 8 rows of each rank's micro-batch (batch_size / "
        "gradient_accumulation_steps / ranks); choose a divisor of it"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_warmup_steps": -1}, "parameter 'n_warmup_steps': Input should be greater than or"),
        ({"optimizer": {"type": "adam", "lr": 0.0}}, "parameter 'optimizer.adam.lr': Input should"),
        (
            {"optimizer": {"type": "sign", "step_size": -0.1}},
            "parameter 'optimizer.sign.step_size': Input should be greater than 0",
        ),
        (
            {"scope": {"type": "shared_across_batch"}},
            "parameter 'scope.type': Input should be 'single', 'broadcast_across_batch', "
            "'repeat_across_batch' or 'per_position'",
        ),
        ({"scope": {"type": "repeat_across_batch"}}, "needs n_sources"),
        ({"scope": {"type": "single", "n_sources": 2}}, "scope single takes no n_sources"),
        ({"optimizer": {"type": "rmsprop"}}, "parameter 'optimizer': Input tag 'rmsprop'"),
    ],
)
def test_bad_settings_are_one_line_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(SPDUserError) as err:
        _tms_config(params)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert "loss term 'persistent_pgd_recon_subset'" in str(err.value)


def test_a_bad_n_sources_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    losses = [{"name": NAME, "coeff": 1.0, "params": {"scope": {"type": "repeat_across_batch", "n_sources": 5}}}]  # fmt: skip
    result = run_tms([str(TMS_CONFIG), *override_args(steps=2, losses=losses)], out)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"spd: error: loss term '{NAME}': scope repeat_across_batch n_sources 5 does not divide "
        "the 32 rows of each rank's micro-batch (batch_size / gradient_accumulation_steps / "
        "ranks); choose a divisor of it"
    ]
    assert not out.exists() or not any(out.iterdir())


# ----- the original's blocks -----


@pytest.mark.parametrize(
    ("block", "params"),
    [
        (
            {
                "optimizer": {"type": "adam", "lr": 0.1, "betas": [0.9, 0.99]},
                "scope": {"type": "repeat_across_batch", "n_masks": 8},
                "routing": {"type": "uniform_k_subset"},
            },
            {
                "optimizer": {"type": "adam", "lr": 0.1, "beta1": 0.9, "beta2": 0.99},
                "scope": {"type": "repeat_across_batch", "n_sources": 8},
                "router": {"type": "uniform_k_subset"},
            },
        ),
        ({"batch_invariant": True, "n_masks": 8}, {"scope": {"type": "repeat_across_batch", "n_sources": 8}}),
        ({"batch_invariant": True}, {"scope": {"type": "broadcast_across_batch"}}),
        ({"batch_invariant": False}, {"scope": {"type": "per_position"}}),
    ],
)  # fmt: skip
def test_the_originals_subset_block_translates(
    block: dict[str, Any], params: dict[str, Any]
) -> None:
    entry = {"classname": "PersistentPGDReconSubsetLoss", "coeff": 0.5, **block}
    (spec,) = translate_loss_blocks([entry], None)
    assert spec == {"name": "persistent_pgd_recon_subset", "coeff": 0.5, "params": params}


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"batch_invariant": False, "n_masks": 4}, "n_masks 4 with batch_invariant false"),
        ({"n_masks": 4, "scope": {"type": "single"}}, "either as scope: or as n_masks, not both"),
        ({"scope": {"type": "unique_per_datapoint"}}, "parameter 'scope.type': Input should be"),
    ],
)
def test_bad_original_blocks_are_one_line_errors(block: dict[str, Any], message: str) -> None:
    entry = {"classname": "PersistentPGDReconLoss", "coeff": 1.0, **block}
    with pytest.raises(SPDUserError) as err:
        translate_loss_blocks([entry], None)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("loss_metric_configs[0] (PersistentPGDReconLoss): ")


# ----- data parallelism -----


def test_two_gloo_ranks_keep_their_shared_sources_equal(tmp_path: Path) -> None:
    # tests/ppgd_dp_worker.py: the tiny TMS run under torchrun, two ranks on different data, with
    # a shared (repeat_across_batch) and a per-position persistent term.
    worker = Path(__file__).with_name("ppgd_dp_worker.py")
    env = {k: v for k, v in os.environ.items() if k != "SPD_OUT_DIR"} | {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*launcher, str(worker), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["world_size"] == 2 and rank0["steps"] == rank1["steps"] > 0
    shared0, shared1 = rank0["states"][NAME], rank1["states"][NAME]
    for name, s in shared0["sources"].items():
        # Rank 0's random draw, broadcast; then every step's gradient averaged over the ranks.
        assert torch.equal(rank0["initial"][NAME][name], rank1["initial"][NAME][name]), name
        assert torch.equal(s, shared1["sources"][name]), name
        assert not torch.equal(s, rank0["initial"][NAME][name]), f"{name}: never moved"
    own0 = rank0["states"]["persistent_pgd_recon_subset"]["sources"]
    own1 = rank1["states"]["persistent_pgd_recon_subset"]["sources"]
    # Per-position sources are each rank's own draws, on its own data, not averaged.
    assert all(not torch.equal(s, own1[name]) for name, s in own0.items())


def test_the_default_optimiser_is_the_published_recipe() -> None:
    assert PersistentPGDParams().optimizer == AdamOptimizer(lr=0.1, beta1=0.9, beta2=0.99)


def test_the_memory_estimate_counts_the_sources_and_adams_moments() -> None:
    per_position = {"scope": {"type": "per_position"}}
    sign = _tms_config({"optimizer": {"type": "sign"}, **per_position}, use_delta_component=True)
    adam = _tms_config({"optimizer": {"type": "adam"}, **per_position}, use_delta_component=True)
    target = load_target_model(sign)
    cpu = torch.device("cpu")
    # 4 bytes × Adam's two moments × 32 rows × 2 modules × (C 20 + the delta mask).
    assert step_bytes(adam, target, cpu) - step_bytes(sign, target, cpu) == 4 * 2 * 32 * 2 * 21


def test_the_shipped_tms_5_2_ppgd_config_is_tms_5_2_with_the_published_recipe() -> None:
    config = load_config(get_experiment("tms_5-2-ppgd").config_path)
    base = load_config(TMS_5_2_CONFIG)
    same = ("C", "target_module_patterns", "tied_weights", "lr", "steps", "batch_size", "seed")
    assert all(getattr(config, key) == getattr(base, key) for key in same)
    assert config.use_delta_component
    params = config.loss_params("persistent_pgd_recon_subset")
    assert isinstance(params, PersistentPGDParams)
    assert params.optimizer == AdamOptimizer(lr=0.1, beta1=0.9, beta2=0.99)
    assert params.scope.type == "repeat_across_batch" and params.scope.n_sources == 8
    assert list(term_states(config)) == ["persistent_pgd_recon_subset"]
