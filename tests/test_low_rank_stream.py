"""The factored residual stream (`spd.models.low_rank_stream`) against the plain dense path."""

import pytest
import torch
from torch import Tensor

from spd.config.loading import load_config
from spd.experiments.resid_mlp.models import ResidMLP, ResidMLPModelConfig
from spd.experiments.resid_mlp.task import make_data
from spd.losses.row_selection import select_rows
from spd.models.component_model import build_component_model
from spd.models.low_rank_stream import LowRankStream, shared_products
from spd.train.data_shard import data_shard
from tests.logged_runs import LOG_EVERY_STEP, logged_run
from tests.paths import REPO_ROOT

RESID_MLP2_CONFIG = REPO_ROOT / "spd" / "experiments" / "resid_mlp" / "resid_mlp2_config.yaml"


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("n_rows", [3, 500])  # few rows: wide-first order; many: small-first
def test_projection_equals_the_dense_product(n_rows: int) -> None:
    stream = (
        LowRankStream.of(_randn(n_rows, 4, seed=0), _randn(4, 60, seed=1))
        + LowRankStream(terms=((_randn(n_rows, 7, seed=2), _randn(7, 60, seed=3)),))
        + LowRankStream(dense_part=_randn(n_rows, 60, seed=4), offset=_randn(60, seed=5))
    )
    dense = (
        _randn(n_rows, 4, seed=0) @ _randn(4, 60, seed=1)
        + _randn(n_rows, 7, seed=2) @ _randn(7, 60, seed=3)
        + _randn(n_rows, 60, seed=4)
        + _randn(60, seed=5)
    )
    matrix = _randn(60, 5, seed=6)
    torch.testing.assert_close(stream.dense(), dense)
    torch.testing.assert_close(stream.project(matrix), dense @ matrix)
    index = torch.tensor([2, 0])
    torch.testing.assert_close(stream.take_rows(index).project(matrix), (dense @ matrix)[index])


def _small_resid_mlp(**model: object) -> ResidMLP:
    config = ResidMLPModelConfig.model_validate(
        {"n_features": 12, "d_embed": 80, "d_mlp": 6, "n_layers": 2, **model}
    )
    target = ResidMLP(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in target.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        if config.own_unembed:
            target.W_U.copy_(torch.randn(target.W_U.shape, generator=generator))
    return target


@pytest.mark.parametrize(
    "model",
    [{}, {"act_fn": "gelu", "mlp_bias": True, "own_unembed": True}],
    ids=["relu", "gelu-bias-unembed"],
)
def test_every_forward_mode_equals_the_dense_path(model: dict[str, object]) -> None:
    target = _small_resid_mlp(**model)
    config = load_config(RESID_MLP2_CONFIG, {"C": 9})
    cm = build_component_model(target, config)
    cm.init_components_from_target(0)
    cm.double()  # float64: the two paths differ only by the order of the sums
    x = _randn(16, 12, seed=7)
    masks = {name: torch.rand(16, 9, dtype=torch.float64) for name in cm.module_names}
    results = {}
    for factored in (False, True):
        target.factor_stream = factored
        out, pre_acts = cm.forward_with_pre_acts(x)
        results[factored] = [
            out,
            *pre_acts.values(),
            cm.forward_with_components(x, masks),
            cm.forward_with_components(x, {"layers.1.mlp_in": masks["layers.1.mlp_in"]}),
            cm.forward_with_components(x, dict.fromkeys(cm.module_names)),
        ]
    for dense, factored in zip(results[False], results[True], strict=True):
        torch.testing.assert_close(factored, dense, rtol=1e-10, atol=1e-12)
    # The factored path really ran: it gives the layer inputs in factored form.
    _, streamed, streams = cm.forward_with_pre_act_streams(x)
    assert set(streams) == {"layers.0.mlp_in", "layers.1.mlp_in"}
    assert set(streamed) == {"layers.0.mlp_out", "layers.1.mlp_out"}


def test_optimize_gives_the_dense_path_losses_and_parameters() -> None:
    """Thirty steps of `optimize()` on a two-layer residual MLP (with row selection active),
    factored stream against the dense path: every logged loss and the final parameters agree."""
    overrides = {
        "C": 10,
        "steps": 30,
        "batch_size": 256,
        **LOG_EVERY_STEP,
        "importance_minimality_coeff": 1e-3,
        "task_config": {"task_name": "resid_mlp", "feature_probability": 0.05},
    }
    config = load_config(RESID_MLP2_CONFIG, overrides)
    rows: dict[bool, list[dict[str, float]]] = {}
    params: dict[bool, dict[str, Tensor]] = {}
    for factored in (False, True):
        target = _small_resid_mlp()
        target.factor_stream = factored
        rows[factored], params[factored] = logged_run(target, config, make_data)
    assert len(rows[True]) == len(rows[False])
    assert {r["step"] for r in rows[True]} == set(range(31))
    # Row selection was on: most rows of these batches are all-zero.
    cm = build_component_model(_small_resid_mlp(), config)
    _, pre_acts, streams = cm.forward_with_pre_act_streams(
        next(make_data(config, cm.target, torch.device("cpu"), data_shard(config))[0])
    )
    selection = select_rows(cm, pre_acts, streams)
    assert selection is not None and selection.share < 0.75
    for dense, factored in zip(rows[False], rows[True], strict=True):
        for key, value in dense.items():
            if key.startswith("train/loss/"):
                assert factored[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
    for name, value in params[False].items():
        torch.testing.assert_close(params[True][name], value, rtol=1e-3, atol=1e-5)


def test_shared_products_form_each_product_once_and_keep_gradients() -> None:
    basis = torch.randn(4, 30, requires_grad=True)
    matrix = torch.randn(30, 6)
    stream = LowRankStream.of(torch.randn(50, 4), basis)
    with shared_products():
        with torch.no_grad():
            untracked = stream.project(matrix)  # formed without a graph: must not be reused
        first = stream.project(matrix)
        second = stream.project(matrix.T.T)  # a fresh view of the same matrix
        reused = first.grad_fn is not None and second.grad_fn is not None
        (first.sum() + second.sum()).backward()
    torch.testing.assert_close(untracked, first.detach())
    assert reused and basis.grad is not None
    # Each use of the one shared product still sends its gradient back to the basis.
    expected = 2 * stream.terms[0][0].sum(0)[:, None] * matrix.sum(1)[None, :]
    torch.testing.assert_close(basis.grad, expected)
    # The shared product is one node: its matmul is in both results' graphs.
    first_fn, second_fn = first.grad_fn, second.grad_fn
    assert first_fn is not None and second_fn is not None
    assert first_fn.next_functions[1][0] is second_fn.next_functions[1][0]
