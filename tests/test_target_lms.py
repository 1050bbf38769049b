"""The target language models (spd/experiments/lm/target_models): save/load, causality, rotary
positions, damaged directories, the GPT-2 export to transformers, and a saved model as the target
of an `lm` decomposition."""

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets.config
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

from spd.config.loading import config_from_dict
from spd.errors import SPDUserError
from spd.experiments.lm import task as lm_task
from spd.experiments.lm.preflight import check_lm_run
from spd.experiments.lm.sources import resolve_sources
from spd.experiments.lm.target_models import (
    GPT2LM,
    GPT2LMConfig,
    LlamaLM,
    LlamaLMConfig,
    TargetLM,
)
from spd.experiments.lm.target_models.hf_export import to_hf_gpt2
from spd.experiments.lm.target_models.layers import apply_rotary, rotary_angles
from spd.experiments.run_decomposition import run_decomposition
from spd.loading.targets import load_target_model
from tests.tiny_corpus import build_tiny_corpus

VOCAB = 600  # at least the tiny tokenizer's size


def _llama(**changes: object) -> LlamaLM:
    fields: dict[str, object] = {
        "architecture": "llama",
        "vocab_size": VOCAB,
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 4,
        "d_mlp": 48,
        "max_seq_len": 32,
        **changes,
    }
    torch.manual_seed(0)
    model = TargetLM.build(LlamaLMConfig.model_validate(fields))
    assert isinstance(model, LlamaLM)
    return model


def _gpt2(**changes: object) -> GPT2LM:
    fields: dict[str, object] = {
        "architecture": "gpt2",
        "vocab_size": VOCAB,
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 4,
        "d_mlp": 48,
        "max_seq_len": 32,
        **changes,
    }
    torch.manual_seed(0)
    model = TargetLM.build(GPT2LMConfig.model_validate(fields))
    assert isinstance(model, GPT2LM)
    return model


def _tokens(seq: int = 20) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, seq), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "make",
    [_llama, lambda: _llama(tie_embeddings=False), _gpt2, lambda: _gpt2(tie_embeddings=False)],
)
def test_save_load_round_trip_gives_identical_logits(
    make: Callable[[], TargetLM], tmp_path: Path
) -> None:
    model = make()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = TargetLM.from_pretrained(tmp_path)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert torch.equal(loaded(_tokens()), model(_tokens()))
    tied = loaded.lm_head.weight is loaded.embed_tokens.weight
    assert tied == model.config.tie_embeddings
    # A tied unembedding is stored once.
    assert ("lm_head.weight" in load_file(str(tmp_path / "model.safetensors"))) != tied


def test_module_names_fit_the_decomposition_patterns() -> None:
    names = {n for n, _ in _llama().named_modules()}
    for kind in (
        "attn.q_proj",
        "attn.k_proj",
        "attn.v_proj",
        "attn.o_proj",
        "mlp.c_fc",
        "mlp.down_proj",
    ):
        assert {f"layers.0.{kind}", f"layers.1.{kind}"} <= names
    gpt2 = _gpt2()
    assert isinstance(gpt2.layers[0].attn_norm, torch.nn.LayerNorm)
    assert gpt2.pos_embed.num_embeddings == gpt2.config.max_seq_len


@pytest.mark.parametrize("make", [_llama, _gpt2])
def test_attention_is_causal(make: Callable[[], TargetLM]) -> None:
    model = make()
    tokens = _tokens()
    changed = tokens.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :12], b[:, :12])  # the past does not see the future
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_rotary_rotates_each_pair_by_position_times_frequency() -> None:
    head_dim, theta = 4, 100.0
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(1, 1, 3, 4)  # positions 0, 1, 2
    out = apply_rotary(x, rotary_angles(3, head_dim, theta, x.device))
    for position in range(3):
        for pair, freq in enumerate((1.0, theta ** (-2 / head_dim))):
            angle = position * freq
            # The pair (x_i, x_{i+2}) as a complex number, multiplied by e^{i·angle}.
            z = complex(x[0, 0, position, pair], x[0, 0, position, pair + 2]) * complex(
                math.cos(angle), math.sin(angle)
            )
            assert out[0, 0, position, pair].item() == pytest.approx(z.real, abs=1e-6)
            assert out[0, 0, position, pair + 2].item() == pytest.approx(z.imag, abs=1e-6)


def test_rotary_scores_depend_on_relative_position_only() -> None:
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 8, generator=generator)
    angles = rotary_angles(12, 8, 10_000.0, q.device)

    def rotated(v: torch.Tensor, position: int) -> torch.Tensor:
        return apply_rotary(v.expand(1, 1, 12, 8), angles)[0, 0, position]

    def score(m: int, n: int) -> float:
        return float(rotated(q[0], m) @ rotated(k[0], n))

    assert score(5, 2) == pytest.approx(score(10, 7), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


def test_damaged_directories_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SPDUserError, match=r"config\.json missing"):
        TargetLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SPDUserError, match="not the config of an spd target model"):
        TargetLM.from_pretrained(tmp_path)
    model = _llama()
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["layers.0.mlp.c_fc.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(SPDUserError, match=re.escape("wrong shape ['layers.0.mlp.c_fc.weight']")):
        TargetLM.from_pretrained(tmp_path)
    with pytest.raises(SPDUserError, match="holds a 'llama' model"):
        GPT2LM.from_pretrained(tmp_path)


def test_config_refuses_heads_that_do_not_divide_the_width() -> None:
    with pytest.raises(ValueError, match="multiple of n_heads"):
        LlamaLMConfig.model_validate(
            {
                "architecture": "llama",
                "d_model": 30,
                "n_layers": 1,
                "n_heads": 4,
                "d_mlp": 8,
                "max_seq_len": 8,
            }
        )


def _decomposition_config(
    model_dir: Path, data_dir: Path, tokenizer_dir: Path, **changes: Any
) -> dict[str, Any]:
    kinds = (
        "attn.q_proj",
        "attn.k_proj",
        "attn.v_proj",
        "attn.o_proj",
        "mlp.c_fc",
        "mlp.down_proj",
    )
    return {
        "C": 4,
        "target_module_patterns": [f"layers.*.{k}" for k in kinds],
        "losses": [
            {"name": "faithfulness", "coeff": 1.0},
            {"name": "stochastic_recon", "coeff": 1.0},
            {"name": "stochastic_recon_layerwise", "coeff": 1.0},
            {"name": "importance_minimality", "coeff": 1e-3},
        ],
        "output_loss_type": "kl",
        "steps": 2,
        "batch_size": 2,
        "train_log_freq": 1,
        "eval_freq": 2,
        "slow_eval_freq": 2,
        "eval_batch_size": 2,
        "n_eval_steps": 1,
        "metrics": [{"name": "ci_l0"}, {"name": "ce_and_kl"}],
        "figures": [],
        "pretrained_model_class": "spd.experiments.lm.target_models.LlamaLM",
        "pretrained_model_name_hf": str(model_dir),
        "pretrained_model_output_attr": None,
        "task_config": {
            "task_name": "lm",
            "dataset_name": str(data_dir),
            "text_column": "story",
            "max_seq_len": 16,
            "tokenizer_name": str(tokenizer_dir),
        },
        **changes,
    }


def test_a_saved_model_is_a_decomposition_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    data_dir, tokenizer_dir = build_tiny_corpus(tmp_path / "corpus")
    model_dir = tmp_path / "model"
    _llama(max_seq_len=16).save_pretrained(model_dir)
    fields = _decomposition_config(
        model_dir, data_dir, tokenizer_dir, out_dir=str(tmp_path / "out")
    )
    config = resolve_sources(config_from_dict(fields))
    check_lm_run(config)
    assert isinstance(load_target_model(config), LlamaLM)
    run = run_decomposition(config, "lm", lm_task.make_data, lm_task.summarize, show_progress=False)
    summary = json.loads((run.path / "summary.json").read_text())
    assert {"ci_l0/layers.1.attn.k_proj", "ci_l0/layers.0.mlp.down_proj"} <= summary.keys()
    assert len(run.result.model.module_names) == 12

    # The preflight holds the run to the model's context and output.
    longer = _decomposition_config(model_dir, data_dir, tokenizer_dir)
    longer["task_config"] = {**longer["task_config"], "max_seq_len": 64}
    with pytest.raises(SPDUserError, match="beyond the 16-token context"):
        check_lm_run(config_from_dict(longer))
    with pytest.raises(SPDUserError, match="pretrained_model_output_attr: null"):
        check_lm_run(
            config_from_dict(
                _decomposition_config(
                    model_dir, data_dir, tokenizer_dir, pretrained_model_output_attr="logits"
                )
            )
        )


def test_gpt2_exports_to_the_transformers_gpt2_with_the_same_logits(tmp_path: Path) -> None:
    model = _gpt2()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # weights far from the initial ones, so every mapping matters
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    to_hf_gpt2(model).save_pretrained(tmp_path)
    hf_model = GPT2LMHeadModel.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(_tokens()).logits, model(_tokens()), atol=1e-5, rtol=0)
    with pytest.raises(SPDUserError, match="tie_embeddings: true"):
        to_hf_gpt2(_gpt2(tie_embeddings=False))
