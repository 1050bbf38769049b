"""A small runnable config of every built-in task, for tests parametrised over the task registry.

`TASK_CONFIGS[name](root)` returns the config mapping of a quick run of task `name` (batch 8, eval
batch 4), writing anything it needs (the tiny offline LM example) under `root`. A task that is
registered without an entry here fails the tests that iterate over the registry.
"""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from spd.experiments.lm.make_offline_example import TEXT_COLUMN, build_example
from spd.experiments.lm.sources import EXAMPLE_DIRNAME
from tests.paths import REPO_ROOT, TMS_5_2_CONFIG
from tests.tiny_lm import SEQ_LEN, TINY

BATCH_SIZE = 8
EVAL_BATCH_SIZE = 4
QUICK: dict[str, Any] = {
    "steps": 2,
    "batch_size": BATCH_SIZE,
    "eval_batch_size": EVAL_BATCH_SIZE,
    "figures": [],
    "metrics": [{"name": "ci_l0"}],
    "slow_eval_on_first_step": False,
    "device": "cpu",
}
RESID_MLP1_CONFIG = REPO_ROOT / "spd" / "experiments" / "resid_mlp" / "resid_mlp1_config.yaml"


def sparse_batches(batch_size: int, seed: int, n_features: int) -> Iterator[Tensor]:
    """The data source of the generic task's config: seeded sparse vectors in [0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        values = torch.rand(batch_size, n_features, generator=generator)
        yield values * (torch.rand(batch_size, n_features, generator=generator) < 0.3)


def _shipped(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    return {**data, "pretrained_model_path": str(REPO_ROOT / data["pretrained_model_path"])}


# The toys' features are denser than in the shipped configs, so that a batch of 8 has active ones.
def tms_config(_root: Path) -> dict[str, Any]:
    task = {"task_name": "tms", "feature_probability": 0.5}
    return {**_shipped(TMS_5_2_CONFIG), **QUICK, "task_config": task}


def resid_mlp_config(_root: Path) -> dict[str, Any]:
    task = {"task_name": "resid_mlp", "feature_probability": 0.1}
    return {**_shipped(RESID_MLP1_CONFIG), **QUICK, "task_config": task}


def generic_config(_root: Path) -> dict[str, Any]:
    return {
        **_shipped(TMS_5_2_CONFIG),
        **QUICK,
        "task_config": {
            "task_name": "generic",
            "data_source": "tests.task_builders:sparse_batches",
            "data_params": {"n_features": 5},
        },
    }


def lm_config(root: Path) -> dict[str, Any]:
    example = root / EXAMPLE_DIRNAME
    if not example.exists():
        build_example(example, TINY, log=False)
    return {
        **QUICK,
        "C": 8,
        "target_module_patterns": ["model.layers.0.mlp.gate_proj"],
        "output_loss_type": "kl",
        "pretrained_model_class": "transformers.LlamaForCausalLM",
        "pretrained_model_name_hf": str(example / "model"),
        "pretrained_model_output_attr": "logits",
        "task_config": {
            "task_name": "lm",
            "dataset_name": str(example / "data"),
            "text_column": TEXT_COLUMN,
            "max_seq_len": SEQ_LEN,
            "tokenizer_name": str(example / "model"),
        },
    }


TASK_CONFIGS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "tms": tms_config,
    "resid_mlp": resid_mlp_config,
    "lm": lm_config,
    "generic": generic_config,
}
