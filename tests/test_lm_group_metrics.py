"""The per-layer-group LM metrics (`ce_and_kl_per_group`, `ci_l0_per_group`) on a tiny random
2-layer Llama whose layer-0 components reproduce the target exactly with CI 1 everywhere, and
whose layer-1 components are random: checked against values computed by hand with edited copies
of the target."""

import copy
import html
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM

from spd.config.evaluators import registry
from spd.config.loading import config_from_dict
from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.eval.context import EvalContext
from spd.eval.layer_groups import default_groups, parse_group_key
from spd.models.ci_fns.mlp import MLPCIFn
from spd.models.component_model import ComponentModel
from spd.tracking.report import write_run_report
from tests.task_builders import tms_config

C = 32
VOCAB = 48
PATTERNS = ["model.layers.*.mlp.up_proj", "model.layers.*.mlp.down_proj", "model.layers.*.self_attn.o_proj"]  # fmt: skip
LAYER_0 = [f"model.layers.0.{m}" for m in ("self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")]
LAYER_1 = [name.replace(".0.", ".1.") for name in LAYER_0]


def _config(tmp_path: Path, metrics: list[dict[str, object]]) -> Config:
    """A valid config (only its seed, sampling and sigmoid matter to the metrics)."""
    return config_from_dict({**tms_config(tmp_path), "metrics": metrics})


def _planted_model() -> ComponentModel:
    """Layer 0: V = [I | 0], U = [W; random]: V U = W (the target), CI 1 on every subcomponent.
    Layer 1: random V and U, the CI function as initialised."""
    torch.manual_seed(0)
    llama = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        initializer_range=0.3,  # logits far from uniform, so that KL and CE gaps are sizeable
    )
    model = ComponentModel(
        LlamaForCausalLM(llama).eval(), PATTERNS, C=C, ci_fn_hidden_dims=[4], output_attr="logits"
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in LAYER_0:
            comp = model.components[name]
            comp._V.zero_()  # pyright: ignore[reportPrivateUsage]
            comp._V[:, : comp.d_in] = torch.eye(comp.d_in)  # pyright: ignore[reportPrivateUsage]
            comp._U.normal_(generator=generator)  # pyright: ignore[reportPrivateUsage]
            comp._U[: comp.d_in] = comp.as_in_out(model.target_weight(name))  # pyright: ignore[reportPrivateUsage]
            ci_fn = model.ci_fn(name)
            assert isinstance(ci_fn, MLPCIFn)
            ci_fn.weights[1].zero_()
            ci_fn.biases[1].fill_(2.0)  # the hard sigmoid clamps 2 to 1
        for name in LAYER_1:
            comp = model.components[name]
            comp._V.normal_(generator=generator)  # pyright: ignore[reportPrivateUsage]
            comp._U.normal_(generator=generator).mul_(0.3)  # pyright: ignore[reportPrivateUsage]
    return model


@pytest.fixture(scope="module")
def planted() -> tuple[ComponentModel, list[Tensor]]:
    tokens = [torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(s)) for s in (2, 3)]  # fmt: skip
    return _planted_model(), tokens


def _scores(
    tmp_path: Path,
    planted: tuple[ComponentModel, list[Tensor]],
    metrics: list[dict[str, object]],
) -> dict[str, float]:
    """The configured metrics' values (validated by the config, run as `evaluate` runs them)."""
    model, tokens = planted
    config = _config(tmp_path, metrics)
    ctx = EvalContext(model=model, config=config, inputs=tokens, step=3)
    scores: dict[str, float] = {}
    for spec in config.metrics:
        scores.update(registry("metric")[spec.name].fn(ctx, **spec.params))
    return scores


def _by_hand(
    model: ComponentModel, tokens: list[Tensor], weights: dict[str, Tensor]
) -> tuple[float, float, float]:
    """(mean KL to the target, mean CE, mean target CE) of a copy of the target whose modules in
    `weights` have those (out, in) weights, computed with plain softmaxes."""
    edited = copy.deepcopy(model.target)
    with torch.no_grad():
        for name, weight in weights.items():
            # The target's modules are wrapped (`DecomposedModule`), running `original` outside a
            # component pass.
            linear = edited.get_submodule(name).original
            assert isinstance(linear, torch.nn.Linear)
            linear.weight.copy_(weight)
    kls, ces, ces_target = [], [], []
    with torch.no_grad():
        for t in tokens:
            log_p = model.target(t).logits.log_softmax(-1)
            log_q = edited(t).logits.log_softmax(-1)
            kls.append(float((log_p.exp() * (log_p - log_q)).sum(-1).mean()))
            labels = t[:, 1:].flatten()
            ces.append(float(F.nll_loss(log_q[:, :-1].flatten(0, 1), labels)))
            ces_target.append(float(F.nll_loss(log_p[:, :-1].flatten(0, 1), labels)))
    n = len(tokens)
    return sum(kls) / n, sum(ces) / n, sum(ces_target) / n


def test_default_groups_follow_the_block_index() -> None:
    llama = ["model.embed_tokens", "model.layers.10.mlp.c_fc", "model.layers.2.self_attn.q_proj", "model.layers.2.mlp.down_proj", "lm_head"]  # fmt: skip
    assert default_groups(llama) == {
        "layer_2": ["model.layers.2.self_attn.q_proj", "model.layers.2.mlp.down_proj"],
        "layer_10": ["model.layers.10.mlp.c_fc"],
        "model.embed_tokens": ["model.embed_tokens"],
        "lm_head": ["lm_head"],
        "total": llama,
    }
    gpt2 = ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]
    assert default_groups(gpt2) == {
        "layer_0": gpt2[:1],
        "layer_1": gpt2[1:],
        "total": gpt2,
    }
    # `h.` must be a whole name part: `mesh.3` is not block 3.
    assert default_groups(["mesh.3.linear"]) == {
        "mesh.3.linear": ["mesh.3.linear"],
        "total": ["mesh.3.linear"],
    }


def test_a_group_reproducing_the_target_scores_zero_and_the_others_match_by_hand(
    tmp_path: Path, planted: tuple[ComponentModel, list[Tensor]]
) -> None:
    model, tokens = planted
    scores = _scores(
        tmp_path,
        planted,
        [
            {
                "name": "ce_and_kl_per_group",
                "params": {"masks": ["ci", "stochastic", "rounded", "unmasked"]},
            }
        ],
    )
    # Layer 0 under any mask with CI 1 is the target itself.
    for kind in ("ci", "stochastic", "rounded", "unmasked"):
        assert scores[f"ce_kl/kl/{kind}/layer_0"] == pytest.approx(0.0, abs=1e-6), kind
        assert scores[f"ce_kl/ce_diff/{kind}/layer_0"] == pytest.approx(0.0, abs=1e-5), kind
    # Layer 1 unmasked is the target with W replaced by V U, zeroed with W = 0: by hand.
    product = {n: model.components[n].weight.detach().clone() for n in LAYER_1}
    assert all(w.shape == model.target_weight(n).shape for n, w in product.items())
    kl_unmasked, ce_unmasked, ce_target = _by_hand(model, tokens, product)
    kl_zero, ce_zero, _ = _by_hand(model, tokens, {n: torch.zeros_like(w) for n, w in product.items()})  # fmt: skip
    assert kl_unmasked > 1e-2 and kl_zero > 1e-2
    assert scores["ce_kl/ce_target"] == pytest.approx(ce_target, rel=1e-5)
    assert scores["ce_kl/kl/unmasked/layer_1"] == pytest.approx(kl_unmasked, rel=1e-4)
    assert scores["ce_kl/kl/zero/layer_1"] == pytest.approx(kl_zero, rel=1e-4)
    assert scores["ce_kl/ce_diff/unmasked/layer_1"] == pytest.approx(ce_unmasked - ce_target, rel=1e-4, abs=1e-6)  # fmt: skip
    assert scores["ce_kl/ce_unrecovered/unmasked/layer_1"] == pytest.approx(
        (ce_unmasked - ce_target) / (ce_zero - ce_target), rel=1e-3
    )
    assert scores["ce_kl/ce_unrecovered/zero/layer_1"] == pytest.approx(1.0)
    assert scores["ce_kl/kl/ci/layer_1"] > 1e-3
    # Every per-group key reads back as (statistic, mask, group).
    assert parse_group_key("ce_kl/ce_unrecovered/ci/layer_1") == ("ce_unrecovered", "ci", "layer_1")


def test_the_total_group_is_every_module_masked(
    tmp_path: Path, planted: tuple[ComponentModel, list[Tensor]]
) -> None:
    scores = _scores(
        tmp_path,
        planted,
        [
            {"name": "ce_and_kl_per_group", "params": {"masks": ["ci", "rounded", "unmasked"]}},
            {"name": "ce_and_kl", "params": {}},
        ],
    )
    for stat in ("kl", "ce_diff", "ce_unrecovered"):
        for kind in ("ci", "rounded", "unmasked", "zero"):
            assert scores[f"ce_kl/{stat}/{kind}/total"] == pytest.approx(
                scores[f"ce_kl/{stat}/{kind}"], rel=1e-6, abs=1e-9
            ), (stat, kind)
    assert not any(k.endswith("/stochastic/layer_0") for k in scores)


def test_ci_l0_per_group_sums_its_modules(
    tmp_path: Path, planted: tuple[ComponentModel, list[Tensor]]
) -> None:
    groups = {"mlp_out": ["*.down_proj"], "attn_and_up": ["*.o_proj", "*.up_proj"]}
    scores = _scores(
        tmp_path,
        planted,
        [
            {"name": "ci_l0", "params": {"threshold": 0.1}},
            {"name": "ci_l0_per_group", "params": {"threshold": 0.1}},
        ],
    )
    # CI 1 on each of layer 0's 3 × C subcomponents.
    assert scores["ci_l0/group/layer_0"] == 3 * C
    assert 0 < scores["ci_l0/group/layer_1"] < 3 * C
    assert scores["ci_l0/group/layer_0"] + scores["ci_l0/group/layer_1"] == pytest.approx(
        scores["ci_l0/group/total"]
    )
    assert scores["ci_l0/group/total"] == pytest.approx(scores["ci_l0/total"])
    custom = _scores(tmp_path, planted, [{"name": "ci_l0_per_group", "params": {"groups": groups}}])
    assert set(custom) == {"ci_l0/group/mlp_out", "ci_l0/group/attn_and_up", "ci_l0/group/total"}
    down = [n for n in LAYER_0 + LAYER_1 if n.endswith("down_proj")]
    assert custom["ci_l0/group/mlp_out"] == pytest.approx(sum(scores[f"ci_l0/{n}"] for n in down))
    assert custom["ci_l0/group/mlp_out"] + custom["ci_l0/group/attn_and_up"] == pytest.approx(
        custom["ci_l0/group/total"]
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"groups": {"a/b": ["*"]}}, "should match pattern"),
        ({"masks": ["ci", "adversarial_typo"]}, "unknown mask kind 'adversarial_typo'"),
        ({"groups": {"mlp": "*.c_fc"}}, "valid list"),
    ],
)
def test_bad_parameters_fail_when_the_config_loads(
    tmp_path: Path, params: dict[str, object], message: str
) -> None:
    with pytest.raises(SPDUserError, match=message) as err:
        _config(tmp_path, [{"name": "ce_and_kl_per_group", "params": params}])
    assert "\n" not in str(err.value)


def test_a_group_matching_no_module_names_the_modules(
    tmp_path: Path, planted: tuple[ComponentModel, list[Tensor]]
) -> None:
    with pytest.raises(SPDUserError, match=r"layer group 'mlp' .* matches no decomposed module.*model.layers.0.self_attn.o_proj"):  # fmt: skip
        _scores(tmp_path, planted, [{"name": "ci_l0_per_group", "params": {"groups": {"mlp": ["*.c_fc"]}}}])  # fmt: skip


def test_the_report_shows_a_table_per_statistic(
    tmp_path: Path, planted: tuple[ComponentModel, list[Tensor]]
) -> None:
    scores = _scores(
        tmp_path,
        planted,
        [{"name": "ce_and_kl_per_group", "params": {}}, {"name": "ci_l0_per_group", "params": {}}],
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"step": 5, **{f"eval/{k}": v + 1.0 for k, v in scores.items()}}]
    # The summary's final/ copy is what the table shows when both are there.
    rows.append({"step": 5, **{f"final/{k}": v for k, v in scores.items()}})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    page = write_run_report(run_dir).read_text()
    section = page.split('<section id="groups">')[1].split("</section>")[0]
    tables = section.split("<h3>")[1:]
    assert [html.unescape(t.split("</h3>")[0]).split(" (")[0] for t in tables] == ["CE unrecovered", "KL to the target", "CE minus the target's CE"]  # fmt: skip
    unrecovered = tables[0]
    assert "<th>group</th><th>CI-L0</th><th>ci</th><th>rounded</th><th>stochastic</th><th>unmasked</th><th>zero</th>" in unrecovered  # fmt: skip
    row = unrecovered.split("<tr><td>layer_1</td>")[1].split("</tr>")[0]
    cells = [c.split("</td>")[0] for c in row.split('<td class="num">')[1:]]
    expected = [scores["ci_l0/group/layer_1"]] + [
        scores[f"ce_kl/ce_unrecovered/{kind}/layer_1"]
        for kind in ("ci", "rounded", "stochastic", "unmasked", "zero")
    ]
    assert cells == [f"{value:.4g}" for value in expected]
    assert [g.split("</td>")[0] for g in unrecovered.split("<tr><td>")[1:]] == ["layer_0", "layer_1", "total"]  # fmt: skip
