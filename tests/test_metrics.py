"""Built-in metrics and figures on planted cases whose values are known, selection and validation,
and evaluation memory staying flat over a run."""

import gc
import math
import tracemalloc
from collections.abc import Iterator

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import Tensor

from spd.config.evaluators import registry
from spd.config.schema import Config, MetricSpec
from spd.errors import SPDUserError
from spd.eval.context import EvalBatch, EvalContext, diagonal_permutation
from spd.eval.evaluate import evaluate
from spd.experiments.tms.models import TMSModel, TMSModelConfig
from spd.models.component_model import ComponentModel, build_component_model
from spd.train.optimize import optimize
from tests.tiny_runs import tiny_tms_config

C = 6
N_FEATURES = 5


def make_model(config: Config) -> ComponentModel:
    torch.manual_seed(0)
    target = TMSModel(TMSModelConfig(n_features=N_FEATURES, n_hidden=2, n_hidden_layers=0))
    model = build_component_model(target, config)
    model.init_components_from_target(0)
    return model


@pytest.fixture
def config() -> Config:
    return tiny_tms_config(C=C, tied_weights=None)


@pytest.fixture
def model(config: Config) -> ComponentModel:
    return make_model(config)


def context_with_ci(
    model: ComponentModel, config: Config, *batches: dict[str, Tensor]
) -> EvalContext:
    """An evaluation context whose eval-batch CI values are the planted `batches`."""
    x = torch.zeros(1, N_FEATURES)
    ctx = EvalContext(model=model, config=config, inputs=[x], step=7)
    ctx._batches = [EvalBatch(x, x, ci, ci) for ci in batches]
    return ctx


def context_with_one_hot_ci(
    model: ComponentModel, config: Config, ci: dict[str, Tensor]
) -> EvalContext:
    """An evaluation context whose CI on one-hot inputs (value 0.75, and 1, the TMS figures'
    value) is the planted `ci`."""
    ctx = EvalContext(model=model, config=config, inputs=[torch.zeros(1, N_FEATURES)], step=7)
    ctx._one_hot[0.75] = ci
    ctx._one_hot[1.0] = ci
    return ctx


def metric(name: str) -> object:
    return registry("metric")[name].fn


def test_ci_l0_counts_components_above_threshold(model: ComponentModel, config: Config) -> None:
    # linear1: batch 1 has 1, 2, 3, 0 components above 0.1 (mean 1.5), batch 2 has 2, 2 (mean 2).
    batch1 = torch.zeros(4, C)
    batch1[0, 0] = 0.5
    batch1[1, :2] = 0.2
    batch1[2, 1:4] = 1.0
    batch1[3, :] = 0.1  # at the threshold: not counted
    batch2 = torch.zeros(2, C)
    batch2[:, 4:] = 0.9
    linear2 = torch.full((4, C), 0.3)  # all 6 above, in both batches
    ctx = context_with_ci(
        model,
        config,
        {"linear1": batch1, "linear2": linear2},
        {"linear1": batch2, "linear2": linear2[:2]},
    )
    result = registry("metric")["ci_l0"].fn(ctx)
    assert result == pytest.approx(
        {"ci_l0/linear1": 1.75, "ci_l0/linear2": 6.0, "ci_l0/total": 7.75}
    )
    assert registry("metric")["ci_l0"].fn(ctx, threshold=0.4)["ci_l0/linear1"] == pytest.approx(
        (1 + 2) / 2
    )  # rows: 1, 0, 3, 0; then 2, 2


def test_component_activation_density(model: ComponentModel, config: Config) -> None:
    ci = torch.zeros(4, C)
    ci[:, 0] = 0.8  # fires on every example
    ci[2, 3] = 0.6  # fires on one of four
    ctx = context_with_ci(model, config, {"linear1": ci, "linear2": torch.zeros(4, C)})
    result = registry("metric")["component_activation_density"].fn(ctx)
    assert result["density/linear1/n_active"] == 2
    assert result["density/linear1/mean"] == pytest.approx((1 + 0.25) / C)
    assert result["density/linear2/n_active"] == 0 and result["density/linear2/mean"] == 0


def plant_subcomponents(model: ComponentModel, layer: str, columns: Tensor) -> None:
    """Make subcomponent c (< n_features) hold `columns[c]` as its column c and nothing else."""
    comp = model.components[layer]
    with torch.no_grad():
        comp.V.zero_()
        comp.U.zero_()
        for c in range(columns.shape[0]):
            comp.V[c, c] = 1.0
            comp.U[c] = columns[c]


def test_ground_truth_recovery_mmcs_ml2r(model: ComponentModel, config: Config) -> None:
    comp = model.components["linear1"]
    target_columns = comp.as_in_out(model.target_weight("linear1")).detach()  # row j: W[:, j]
    plant_subcomponents(model, "linear1", 2 * target_columns)
    ctx = context_with_ci(model, config)
    result = registry("metric")["ground_truth_recovery"].fn(ctx, layer="linear1")
    assert result == pytest.approx({"mmcs/linear1": 1.0, "ml2r/linear1": 2.0})

    # Rotate subcomponent 0's column by 60°: feature 0's best cosine becomes 0.5, norms unchanged.
    angle = math.pi / 3
    rotation = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    )
    rotated = target_columns.clone()
    rotated[0] = rotation @ target_columns[0]
    plant_subcomponents(model, "linear1", rotated)
    result = registry("metric")["ground_truth_recovery"].fn(ctx, layer="linear1")
    assert result == pytest.approx({"mmcs/linear1": (0.5 + 4) / 5, "ml2r/linear1": 1.0})


def test_mmcs_is_the_signed_cosine_so_an_anti_aligned_subcomponent_is_no_match(
    model: ComponentModel, config: Config
) -> None:
    # Feature 0's only non-zero subcomponent column is −W[:, 0]: cosine −1. Signed, the best
    # match for feature 0 is then a zero column (cosine 0, norm 0), so MMCS = (0 + 4) / 5 and
    # ML2R = (0 + 4) / 5; an absolute cosine would score the flipped column 1 and give 1, 1.
    comp = model.components["linear1"]
    target_columns = comp.as_in_out(model.target_weight("linear1")).detach()
    flipped = target_columns.clone()
    flipped[0] = -flipped[0]
    plant_subcomponents(model, "linear1", flipped)
    ctx = context_with_ci(model, config)
    result = registry("metric")["ground_truth_recovery"].fn(ctx, layer="linear1")
    assert result == pytest.approx({"mmcs/linear1": 4 / 5, "ml2r/linear1": 4 / 5})


def test_n_large_subcomponents(model: ComponentModel, config: Config) -> None:
    comp = model.components["linear1"]
    with torch.no_grad():
        comp.V.zero_()
        comp.U.zero_()
        for c, norm in enumerate([0.5, 0.05, 0.2, 0.0, 0.11, 0.1]):
            comp.V[0, c] = 2.0
            comp.U[c, 0] = norm / 2.0
    result = registry("metric")["n_large_subcomponents"].fn(
        context_with_ci(model, config), threshold=0.1
    )
    assert result["n_large_subcomponents/linear1"] == 3  # 0.5, 0.2, 0.11


def shuffled_identity(perm: list[int]) -> Tensor:
    matrix = torch.zeros(N_FEATURES, C)
    for feature, column in enumerate(perm):
        matrix[feature, column] = 1.0
    return matrix


def test_identity_ci_error(model: ComponentModel, config: Config) -> None:
    identity = shuffled_identity([3, 0, 5, 1, 4])
    identity[2, 2] = 0.3  # off the pattern by more than the tolerance: one error
    identity[4, 0] = 0.05  # within tolerance
    dense = torch.zeros(N_FEATURES, C)
    dense[:, 2] = 0.95  # one dense column, as expected for k=1
    dense[1, 4] = 0.5  # one error
    ctx = context_with_one_hot_ci(model, config, {"linear1": identity, "linear2": dense})
    fn = registry("metric")["identity_ci_error"].fn
    result = fn(ctx, identity_layers=["linear1"], dense_layers={"linear2": 1})
    assert result == {"identity_ci_error/linear1": 1.0, "identity_ci_error/linear2": 1.0}
    # One pattern scores its layers side by side: the dense linear2 breaks the identity pattern.
    assert fn(ctx, identity_layers=["linear*"])["identity_ci_error/linear*"] > 1
    assert fn(ctx) == {}  # no layer selected: nothing to score


def test_dedicated_subcomponents(model: ComponentModel, config: Config) -> None:
    ci = shuffled_identity([2, 0, 1, 3, 3]) * 0.9  # features 3 and 4 share subcomponent 3
    ci[0, 4] = 0.05  # quiet enough
    ctx = context_with_one_hot_ci(
        model, config, {"linear1": ci, "linear2": shuffled_identity([0, 1, 2, 3, 4])}
    )
    fn = registry("metric")["dedicated_subcomponents"].fn
    # `/sole`: additionally no other subcomponent of the layer group is active on that feature.
    # `/layers_per_feature`: every feature has some CI above 0.5 in its one layer.
    assert fn(ctx, layers=["linear1", "linear2"]) == {
        "dedicated_subcomponents/linear1": 3.0,
        "dedicated_subcomponents/linear1/sole": 3.0,
        "dedicated_subcomponents/linear1/layers_per_feature": 1.0,
        "dedicated_subcomponents/linear2": 5.0,
        "dedicated_subcomponents/linear2/sole": 5.0,
        "dedicated_subcomponents/linear2/layers_per_feature": 1.0,
    }
    # One pattern over both layers: every feature is served by both, with one dedicated
    # subcomponent in linear2 but not in linear1 for features 3 and 4.
    assert fn(ctx, layers=["linear*"]) == {
        "dedicated_subcomponents/linear*": 3.0,
        "dedicated_subcomponents/linear*/sole": 3.0,
        "dedicated_subcomponents/linear*/layers_per_feature": 2.0,
    }


def test_permuted_ci_figure_shows_the_permuted_matrix(
    model: ComponentModel, config: Config
) -> None:
    planted = shuffled_identity([4, 2, 0, 5, 1]) * 0.8
    ctx = context_with_one_hot_ci(model, config, {"linear1": planted, "linear2": planted})
    figures = registry("figure")["permuted_ci"].fn(ctx)
    shown = np.asarray(figures["permuted_ci"].axes[0].images[0].get_array())
    assert shown.shape == (N_FEATURES, C)
    np.testing.assert_allclose(shown[:, :N_FEATURES], 0.8 * np.eye(N_FEATURES))
    assert diagonal_permutation(planted)[:N_FEATURES] == [4, 2, 0, 5, 1]


def test_uv_matrices_figure_shows_v_and_u_in_ci_order(
    model: ComponentModel, config: Config
) -> None:
    perm = [4, 2, 0, 5, 1]
    ctx = context_with_one_hot_ci(
        model, config, {"linear1": shuffled_identity(perm), "linear2": shuffled_identity(perm)}
    )
    figure = registry("figure")["uv_matrices"].fn(ctx)["uv_matrices"]
    order = [*perm, 3]
    comp = model.components["linear1"]
    v_shown = np.asarray(figure.axes[0].images[0].get_array())
    u_shown = np.asarray(
        next(ax for ax in figure.axes if ax.get_title().startswith("linear1: U"))
        .images[0]
        .get_array()
    )
    np.testing.assert_allclose(v_shown, comp.V.detach()[:, order].numpy())
    np.testing.assert_allclose(u_shown, comp.U.detach()[order, :].numpy())


def test_ci_histograms_count_every_value(model: ComponentModel, config: Config) -> None:
    values = torch.tensor([[0.0, 0.05, 0.5, 0.51, 0.99, 1.0]])
    ctx = context_with_ci(model, config, {"linear1": values, "linear2": values.repeat(3, 1)})
    figure = registry("figure")["ci_histograms"].fn(ctx, bins=2)["ci_histograms"]
    heights = [[patch.get_height() for patch in ax.patches] for ax in figure.axes if ax.patches]
    assert heights == [[2, 4], [6, 12]]  # bins [0, 0.5) and [0.5, 1]


def test_feature_vectors_figure_has_target_and_largest_subcomponents(
    model: ComponentModel, config: Config
) -> None:
    figure = registry("figure")["feature_vectors"].fn(
        context_with_ci(model, config), n_subcomponents=3
    )
    panels = figure["feature_vectors_linear1"].axes
    assert [ax.get_title().split(" ")[0] for ax in panels] == [
        "target",
        "subcomponent",
        "subcomponent",
        "subcomponent",
    ]
    assert all(len(ax.patches) == N_FEATURES for ax in panels)  # one arrow per input feature


def test_unknown_metric_and_parameter_are_config_errors() -> None:
    with pytest.raises(
        SPDUserError, match=r"unknown metric 'ci_l1'; available: .*ci_l0.*identity_ci_error"
    ):
        tiny_tms_config(metrics=[{"name": "ci_l1"}])
    with pytest.raises(
        SPDUserError, match=r"metric 'ci_l0' takes no parameter 'thresh'; it takes: threshold"
    ):
        tiny_tms_config(metrics=[{"name": "ci_l0", "params": {"thresh": 0.2}}])
    with pytest.raises(SPDUserError, match=r"unknown figure 'permuted'; available: .*permuted_ci"):
        tiny_tms_config(figures=[{"name": "permuted"}])


def test_slow_metrics_and_figures_run_only_on_slow_evaluations(config: Config) -> None:
    config = config.model_copy(
        update={
            "metrics": [
                MetricSpec(name="ci_l0"),
                MetricSpec(name="identity_ci_error", params={"identity_layers": ["linear1"]}),
            ]
        }
    )
    model = make_model(config)
    inputs = [torch.rand(8, N_FEATURES)]
    fast_metrics, fast_figures = evaluate(model, config, inputs, step=3, include_slow=False)
    slow_metrics, slow_figures = evaluate(model, config, inputs, step=3, include_slow=True)
    assert set(fast_metrics) == {"eval/ci_l0/linear1", "eval/ci_l0/linear2", "eval/ci_l0/total"}
    assert set(slow_metrics) == set(fast_metrics) | {"eval/identity_ci_error/linear1"}
    assert fast_figures == {}
    assert set(slow_figures) == {
        "permuted_ci",
        "feature_vectors_linear1",
        "uv_matrices",
        "ci_histograms",
    }


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), Tensor))


EVERY_METRIC = [
    {"name": "ci_l0"},
    {"name": "component_activation_density"},
    {"name": "ground_truth_recovery", "params": {"layer": "linear1"}},
    {"name": "n_large_subcomponents"},
    {"name": "identity_ci_error", "params": {"identity_layers": ["linear1", "linear2"]}},
    {"name": "dedicated_subcomponents"},
]


@pytest.mark.parametrize(
    "figures",
    [
        # Figures dominate the cost (tracemalloc slows matplotlib several-fold): the default suite
        # takes the cheapest one, the slow suite all of them.
        ["permuted_ci"],
        pytest.param(
            ["permuted_ci", "feature_vectors", "uv_matrices", "ci_histograms"],
            marks=pytest.mark.slow,
        ),
    ],
)
def test_evaluation_memory_does_not_grow_over_evaluations(figures: list[str]) -> None:
    """Traced memory after (and the peak during) evaluation 20 ≈ after (during) evaluation 2.

    Each evaluation runs every built-in metric and the given figures on fresh inputs, and its
    figures are closed as `optimize` does. A leak of one evaluation's inputs, context or figures
    adds megabytes per evaluation; the tolerance is a fraction of that.
    """
    config = tiny_tms_config(metrics=EVERY_METRIC, figures=[{"name": n} for n in figures])
    model = make_model(config)
    generator = torch.Generator().manual_seed(0)

    def one_evaluation(step: int) -> tuple[int, int]:
        tracemalloc.reset_peak()
        x = torch.rand(256, N_FEATURES, generator=generator)
        x = x * (torch.rand(256, N_FEATURES, generator=generator) < 0.2)
        _, made = evaluate(model, config, [x], step, include_slow=True)
        assert set(made) >= {"permuted_ci"}
        for figure in made.values():
            plt.close(figure)
        del made, x
        gc.collect()
        return tracemalloc.get_traced_memory()  # (retained now, peak during this evaluation)

    one_evaluation(0)  # first use imports and caches lazily; not part of the comparison
    samples: dict[int, tuple[int, int, int]] = {}
    tracemalloc.start()
    try:
        for n in range(1, 21):
            current, peak = one_evaluation(n)
            if n in (2, 20):
                samples[n] = (current, peak, _live_tensors())
    finally:
        tracemalloc.stop()
    (current2, peak2, tensors2), (current20, peak20, tensors20) = samples[2], samples[20]
    assert current20 <= 1.1 * current2 + 512 * 1024, (current2, current20)
    assert peak20 <= 1.1 * peak2 + 512 * 1024, (peak2, peak20)
    assert tensors20 == tensors2


def test_optimize_leaves_no_figure_open() -> None:
    config = tiny_tms_config(
        steps=2, eval_freq=1, slow_eval_freq=1, figures=[{"name": "permuted_ci"}]
    )
    target = TMSModel(TMSModelConfig(n_features=N_FEATURES, n_hidden=2, n_hidden_layers=0))
    plt.close("all")
    generator = torch.Generator().manual_seed(0)

    def batches() -> Iterator[Tensor]:
        while True:
            yield torch.rand(64, N_FEATURES, generator=generator)

    class FigureCounter:
        def __init__(self) -> None:
            self.seen = 0

        def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
            pass

        def save_figure(self, step: int, name: str, figure: Figure) -> None:
            self.seen += 1

    counter = FigureCounter()
    optimize(
        target,
        config,
        torch.device("cpu"),
        batches(),
        batches(),
        sinks=[counter],
        show_progress=False,
    )
    assert counter.seen == 3  # steps 0, 1, 2
    assert plt.get_fignums() == []
