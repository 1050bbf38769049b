"""A whole-model decomposition of a tiny random Llama (every attention and MLP matrix of both
layers, and the embedding) through `run_decomposition`, with every loss term the registry holds,
per-module C, the delta component, a shared CI function and the faithfulness warm-up; and the
registered whole-model experiments' configs."""

import json
import math
from pathlib import Path
from typing import Any

import datasets.config
import pytest
import torch

from spd.config.loading import config_from_dict, load_config
from spd.config.loss_registry import LOSS_TERMS
from spd.errors import SPDUserError
from spd.experiments.lm import task as lm_task
from spd.experiments.lm.sources import resolve_sources
from spd.experiments.lm.target_models import LlamaLMConfig, TargetLM
from spd.experiments.registry import get_experiment
from spd.experiments.run_decomposition import run_decomposition
from spd.persistence.checkpoints import read_checkpoint
from tests.tiny_corpus import build_tiny_corpus

STEPS = 3
MATRIX_KINDS = {
    "attn.q_proj": 3,
    "attn.k_proj": 3,
    "attn.v_proj": 4,
    "attn.o_proj": 5,
    "mlp.c_fc": 7,
    "mlp.down_proj": 6,
}
# Non-default parameters that make a term do what the whole-model recipes use it for; every
# other term runs with its defaults.
TERM_PARAMS: dict[str, dict[str, Any]] = {
    "importance_minimality": {"pnorm": 2.0, "p_anneal_final_p": 0.3, "beta": 0.1},
    "pgd_recon_subset": {"scope": "shared_across_batch"},
    "persistent_pgd_recon_subset": {"scope": {"type": "repeat_across_batch", "n_sources": 2}},
}


def _every_loss_term() -> list[dict[str, Any]]:
    """One entry per registered term (so a newly registered term is covered here too). None is
    skipped: the decomposition includes an Embedding, so `embedding_recon` applies as well."""
    return [
        {"name": term.name, "coeff": 1.0, "params": TERM_PARAMS.get(term.name, {})}
        for term in LOSS_TERMS.in_order()
    ]


def _config(model_dir: Path, data_dir: Path, tokenizer_dir: Path, out_dir: Path) -> dict[str, Any]:
    patterns = [f"layers.*.{kind}" for kind in MATRIX_KINDS]
    return {
        "C": [{"module_pattern": f"layers.*.{k}", "C": c} for k, c in MATRIX_KINDS.items()]
        + [{"module_pattern": "embed_tokens", "C": 8}],
        "target_module_patterns": [*patterns, "embed_tokens"],
        "ci_fn_type": "shared_mlp",
        "ci_fn_hidden_dims": [8],
        "use_delta_component": True,
        "losses": _every_loss_term(),
        "output_loss_type": "kl",
        "faithfulness_warmup_steps": 2,
        "compile": "off",
        "steps": STEPS,
        "batch_size": 2,
        "lr_schedule": "cosine",
        "train_log_freq": 1,
        "eval_freq": STEPS,
        "slow_eval_freq": STEPS,
        "eval_batch_size": 2,
        "n_eval_steps": 1,
        "save_freq": 1,
        "keep_last_checkpoints": STEPS,
        "metrics": [{"name": "ce_and_kl_per_group"}, {"name": "ci_l0_per_group"}],
        "figures": [],
        "out_dir": str(out_dir),
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
    }


def test_every_loss_term_trains_a_whole_tiny_llama(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    data_dir, tokenizer_dir = build_tiny_corpus(tmp_path / "corpus")
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    target = TargetLM.build(
        LlamaLMConfig(
            architecture="llama",
            vocab_size=600,  # at least the tiny tokenizer's size
            d_model=16,
            n_layers=2,
            n_heads=2,
            d_mlp=32,
            max_seq_len=16,
            tie_embeddings=False,  # the embedding is decomposed on its own
        )
    )
    target.save_pretrained(model_dir)
    config = resolve_sources(
        config_from_dict(_config(model_dir, data_dir, tokenizer_dir, tmp_path / "out"))
    )

    run = run_decomposition(config, "lm", lm_task.make_data, lm_task.summarize, show_progress=False)

    modules = run.result.model.module_names
    assert len(modules) == 2 * len(MATRIX_KINDS) + 1
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if "train/loss/total" in row]
    assert [row["step"] for row in train_rows] == list(range(STEPS + 1))
    names = [term.name for term in LOSS_TERMS.in_order()]
    for row in train_rows:
        for name in ["total", *names]:
            value = row[f"train/loss/{name}"]
            assert math.isfinite(value), f"step {row['step']}: {name} = {value}"
    evaluation = next(row for row in rows if "eval/ce_kl/kl/ci/layer_1" in row)
    assert {
        "eval/ce_kl/ce_unrecovered/stochastic/total",
        "eval/ci_l0/group/layer_0",
    } <= evaluation.keys()
    assert all(math.isfinite(v) for k, v in evaluation.items() if k.startswith("eval/ce_kl/kl/"))

    # Every component and CI-function tensor moves between the first and the last checkpoint.
    checkpoints = sorted((run.path / "checkpoints").glob("model_*.pth"))
    assert len(checkpoints) >= 2
    first, last = (
        read_checkpoint(path)["decomposition"] for path in (checkpoints[0], checkpoints[-1])
    )
    for part in ("components", "ci_fns"):
        unchanged = [key for key in last[part] if torch.equal(first[part][key], last[part][key])]
        assert not unchanged, f"{part} not trained: {unchanged}"
    # Checkpoint keys name a module with '-' for '.'.
    trained = {key.split(".")[0] for key in last["components"]}
    assert trained == {module.replace(".", "-") for module in modules}


WHOLE_MODEL_EXPERIMENTS = (
    "ss_llama_simple_mlp-1L",
    "ss_llama_simple_mlp-2L",
    "ss_llama_simple_mlp-2L-global",
)


@pytest.mark.parametrize("name", WHOLE_MODEL_EXPERIMENTS)
def test_registered_whole_model_configs_follow_the_recipe(name: str) -> None:
    config = load_config(get_experiment(name).config_path)
    assert set(config.target_module_patterns) == {f"layers.*.{kind}" for kind in MATRIX_KINDS}
    assert isinstance(config.C, list)
    assert {c.module_pattern for c in config.C} == set(config.target_module_patterns)
    assert config.use_delta_component and config.output_loss_type == "kl"
    assert config.faithfulness_warmup_steps > 0
    assert config.ci_fn_type == ("global_shared_transformer" if "global" in name else "shared_mlp")
    assert {loss.name for loss in config.losses} == {
        "faithfulness",
        "stochastic_recon_subset",
        "pgd_recon_subset",
        "importance_minimality",
    }
    assert {"ce_and_kl_per_group", "ci_l0_per_group"} <= {m.name for m in config.metrics}


def test_a_target_not_pretrained_yet_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path))
    config = load_config(get_experiment("ss_llama_simple_mlp-2L").config_path)
    with pytest.raises(SPDUserError, match="has not been pretrained yet") as info:
        resolve_sources(config)
    assert "spd-pretrain spd/experiments/lm/pretrain/ss_llama_simple_mlp-2L.yaml" in str(info.value)
