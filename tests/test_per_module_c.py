"""Per-module C (docs/method.md, 'Per-module C'): widths, training, resume, loading, analysis, errors."""

from pathlib import Path
from typing import Any

import pytest
import torch

from spd.analysis.analyze import PassOptions, analyze_run
from spd.analysis.store import load_analysis
from spd.config.module_c import module_C
from spd.config.schema import ModuleC
from spd.errors import SPDUserError
from spd.eval.context import EvalContext
from spd.eval.metrics import ci_l0, component_activation_density
from spd.experiments.run_decomposition import run_decomposition
from spd.experiments.tms.task import make_data, summarize
from spd.launch.plan import LaunchSettings, plan_runs
from spd.loading.targets import load_target_model
from spd.losses.masks import stochastic_masks
from spd.models.component_model import ComponentModel
from spd.models.tie_check import check_decomposition
from spd.persistence.checkpoints import checkpoint_path, latest_checkpoint
from spd.persistence.run_dir import RunDirectory, read_metrics
from spd.tracking.wandb_sink import wandb_run_name
from spd.train.alive_tracker import AliveTracker
from tests.resumable_runs import assert_bitwise_equal, decomposition_tensors, run, tiny_config
from tests.toy_targets import TwoLinear

PAIRS = [{"module_pattern": "linear1", "C": 3}, {"module_pattern": "linear2", "C": 5}]
WIDTHS = {"linear1": 3, "linear2": 5}
# TMS 5-2 decomposes linear1 and linear2, tied in the shipped config: untied for different C.
SHORT: dict[str, Any] = {"C": PAIRS, "tied_weights": None, "steps": 30, "save_freq": 10}


def _one_line(error: pytest.ExceptionInfo[SPDUserError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_number_is_every_module_and_pairs_give_each_its_own() -> None:
    names = ["a.q", "a.k", "b.q"]
    assert module_C(4, names) == {"a.q": 4, "a.k": 4, "b.q": 4}
    pairs = [ModuleC(module_pattern="*.q", C=2), ModuleC(module_pattern="a.k", C=7)]
    assert module_C(pairs, names) == {"a.q": 2, "a.k": 7, "b.q": 2}


def test_generated_run_name_shows_each_pairs_C() -> None:
    assert wandb_run_name(tiny_config(**SHORT), "tms").startswith("tms-C3_5-lr")


@pytest.mark.parametrize("ci_fn_type", ["mlp", "vector_mlp"])
def test_two_layer_toy_has_factors_ci_and_masks_of_each_module_width(ci_fn_type: str) -> None:
    model = ComponentModel(
        TwoLinear(), ["fc1", "fc2"], C={"fc1": 3, "fc2": 5}, ci_fn_type=ci_fn_type
    )
    model.init_components_from_target(seed=0)
    assert model.module_C == {"fc1": 3, "fc2": 5}
    assert [tuple(c.V.shape) for c in model.components.values()] == [(2, 3), (2, 5)]
    assert [tuple(c.U.shape) for c in model.components.values()] == [(3, 2), (5, 2)]
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    out, pre_acts = model.forward_with_pre_acts(x)
    ci, ci_upper = model.causal_importances(pre_acts, "leaky_hard")
    assert {n: tuple(t.shape) for n, t in ci.items()} == {"fc1": (6, 3), "fc2": (6, 5)}
    assert {n: tuple(t.shape) for n, t in ci_upper.items()} == {"fc1": (6, 3), "fc2": (6, 5)}
    masks = stochastic_masks(ci)
    assert {n: tuple(m.shape) for n, m in masks.items()} == {"fc1": (6, 3), "fc2": (6, 5)}
    assert model.forward_with_components(x, masks).shape == out.shape
    tracker = AliveTracker(model.module_C, 0.5, 100, torch.device("cpu"))
    tracker.update({"fc1": torch.tensor([[0.9, 0.0, 0.0]]), "fc2": torch.tensor([[0.0] * 4 + [1]])})
    assert tracker.n_alive() == {"fc1": 3, "fc2": 5}  # nothing has waited 100 examples yet
    assert [tuple(c.shape) for c in tracker.state_dict().values()] == [(3,), (5,)]
    assert tracker.state_dict()["fc2"].tolist() == [1, 1, 1, 1, 0]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> RunDirectory:
    run_dir = RunDirectory.create(tmp_path_factory.mktemp("straight"), "straight")
    assert run(tiny_config(**SHORT), run_dir).stopped_at is None
    return run_dir


def test_a_run_with_per_module_C_resumes_bit_exactly_and_loads(
    straight: RunDirectory, tmp_path: Path
) -> None:
    config = tiny_config(**SHORT)
    run_dir = RunDirectory.create(tmp_path, "resumed")
    assert run(config, run_dir, stop_after=14).stopped_at == 15
    run(config, run_dir, resume_from=latest_checkpoint(run_dir.path))
    final = checkpoint_path(run_dir, 30)
    assert_bitwise_equal(
        decomposition_tensors(final), decomposition_tensors(checkpoint_path(straight, 30))
    )
    assert read_metrics(run_dir.path) == read_metrics(straight.path)
    loaded = ComponentModel.from_pretrained(final)
    assert loaded.module_C == WIDTHS
    assert {n: c.V.shape[1] for n, c in loaded.components.items()} == WIDTHS


def test_metrics_count_over_each_module_width(straight: RunDirectory) -> None:
    config = tiny_config(**SHORT)
    model = ComponentModel.from_pretrained(straight.path)
    x = torch.rand(50, 5, generator=torch.Generator().manual_seed(1))
    ctx = EvalContext(model, config, [x], step=0)
    with torch.no_grad():
        _, pre_acts = model.forward_with_pre_acts(x)
        ci, _ = model.causal_importances(pre_acts, config.sigmoid_type)
    l0, density = ci_l0(ctx), component_activation_density(ctx)
    for name, width in WIDTHS.items():
        assert ci[name].shape == (50, width)
        assert l0[f"ci_l0/{name}"] == pytest.approx(float((ci[name] > 0.1).sum(-1).float().mean()))
        fired = (ci[name] > 0.1).float().mean(0)
        assert density[f"density/{name}/mean"] == pytest.approx(float(fired.mean()))
        assert density[f"density/{name}/n_active"] == float((fired > 0).sum())


def test_analysis_pass_on_a_per_module_C_run(straight: RunDirectory) -> None:
    straight.write_config(tiny_config(**SHORT))
    analyze_run(straight.path, PassOptions(n_tokens=400, batch_size=100, show_progress=False))
    analysis = load_analysis(straight.path)
    for name, width in WIDTHS.items():
        layer = analysis.layer(name)
        assert (layer.name, layer.C) == (name, width)
        assert layer["onehot_ci"].shape == (5, width)


def test_one_number_and_one_pair_for_every_module_train_identically(tmp_path: Path) -> None:
    short = {"steps": 10, "save_freq": 10}
    number, pairs = RunDirectory.create(tmp_path, "number"), RunDirectory.create(tmp_path, "pairs")
    run(tiny_config(**short), number)
    run(tiny_config(**short, C=[{"module_pattern": "*", "C": 20}]), pairs)
    assert_bitwise_equal(
        decomposition_tensors(checkpoint_path(number, 10)),
        decomposition_tensors(checkpoint_path(pairs, 10)),
    )


@pytest.mark.parametrize(
    ("C", "expected"),
    [
        ([], "'C': Value error, an empty list gives no module a C"),
        (
            [{"module_pattern": "linear*", "C": 3}, {"module_pattern": "linear*", "C": 4}],
            "module_pattern 'linear*' is listed twice; keep one pair",
        ),
        ([{"module_pattern": "linear1", "C": 0}], "'C.0.C' (got 0): Input should be greater"),
    ],
)
def test_config_errors_fail_at_load_in_one_line(C: object, expected: str) -> None:
    with pytest.raises(SPDUserError) as error:
        tiny_config(C=C)
    assert expected in _one_line(error)


@pytest.mark.parametrize(
    ("C", "tied", "expected"),
    [
        (
            [{"module_pattern": "linear*", "C": 3}, {"module_pattern": "linear1", "C": 4}],
            None,
            "C: module 'linear1' is matched by both 'linear*' and 'linear1'; narrow the patterns",
        ),
        (
            [{"module_pattern": "linear1", "C": 3}],
            None,
            "C: no module_pattern matches the decomposed module(s) 'linear2'; add a",
        ),
        (
            [*PAIRS, {"module_pattern": "hidden*", "C": 2}],
            None,
            "C: module_pattern 'hidden*' matches no decomposed module (decomposed: 'linear1', "
            "'linear2'); correct or drop the pair",
        ),
        (
            PAIRS,
            [["linear1", "linear2"]],
            "tied_weights ['linear1', 'linear2']: C is 3 and 5; give tied modules the same C",
        ),
    ],
)
def test_errors_needing_the_target_fail_before_anything_is_written(
    C: object, tied: object, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(C=C, tied_weights=tied)
    with pytest.raises(SPDUserError) as error:
        check_decomposition(load_target_model(config), config)
    assert expected in _one_line(error)
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path))
    with pytest.raises(SPDUserError) as error:
        run_decomposition(config, "tms", make_data, summarize, show_progress=False)
    assert expected in _one_line(error)
    with pytest.raises(SPDUserError) as error:
        plan_runs(["tms_5-2"], {"C": C, "tied_weights": tied}, None, LaunchSettings(launch_id="L"))
    assert "run 'tms_5-2' is invalid, nothing was launched: " in _one_line(error)
    assert expected in _one_line(error)
    assert list(tmp_path.iterdir()) == []


def test_a_mapping_names_every_module_and_gives_tied_modules_one_C() -> None:
    with pytest.raises(SPDUserError) as error:
        ComponentModel(TwoLinear(), ["fc1", "fc2"], C={"fc1": 3})
    assert "give one C per decomposed module" in _one_line(error)
    with pytest.raises(SPDUserError) as error:
        ComponentModel(
            TwoLinear(), ["fc1", "fc2"], C={"fc1": 3, "fc2": 5}, tied_weights=[("fc1", "fc2")]
        )
    assert "tied_weights ['fc1', 'fc2']: C is 3 and 5" in _one_line(error)
