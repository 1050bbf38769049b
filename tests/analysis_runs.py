"""Run directories with planted decompositions of the tiny offline LM example, for the analysis tests.

The tiny example is the real pipeline (`make_offline_example.build_example`: corpus, BPE tokenizer,
a Llama trained a few steps, saved to disk). The planted run decomposes its token embedding by hand:
`PLANTED` fires exactly on one token, `TWIN` on the same token, `OTHER` on a second token, and every
other subcomponent never fires.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from spd.config.loading import config_from_dict
from spd.config.schema import Config
from spd.data.lm_data import load_tokenizer
from spd.experiments.lm.make_offline_example import TEXT_COLUMN, build_example
from spd.experiments.lm.sources import EXAMPLE_DIRNAME
from spd.loading.targets import load_target_model
from spd.models.ci_fns.mlp import MLPCIFn
from spd.models.component_model import ComponentModel
from spd.persistence.checkpoints import save_checkpoint
from spd.persistence.run_dir import CONFIG_FILE, RunDirectory, save_config
from tests.tiny_lm import SEQ_LEN, TINY

C = 6
PLANTED, TWIN, OTHER = 1, 3, 4
PLANTED_TEXT, OTHER_TEXT = ".", " the"


@dataclass(frozen=True)
class PlantedRun:
    run_dir: Path
    tokenizer: PreTrainedTokenizerBase
    config: Config
    planted_token: int
    other_token: int


def build_tiny_example(root: Path) -> Path:
    example = root / EXAMPLE_DIRNAME
    build_example(example, TINY, log=False)
    return example


def _token_id(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text!r} is not one token: {ids}"
    return int(ids[0])


def planted_run(example: Path, run_path: Path, patterns: list[str] | None = None) -> PlantedRun:
    """A run directory (config + checkpoint) whose embedding subcomponents fire on chosen tokens.

    With extra `patterns`, those layers are decomposed too (initialised from the target, CI
    functions untrained), so the pass sees more than one layer.
    """
    tokenizer = load_tokenizer(str(example / "model"))
    config = config_from_dict(
        {
            "C": C,
            "target_module_patterns": ["model.embed_tokens", *(patterns or [])],
            "ci_fn_hidden_dims": [1],
            "steps": 1,
            "batch_size": 4,
            "eval_batch_size": 4,
            "metrics": [],
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
    )
    model = ComponentModel(
        load_target_model(config),
        config.target_module_patterns,
        C=C,
        ci_fn_hidden_dims=[1],
        output_attr="logits",
    )
    model.init_components_from_target(0)
    planted, other = _token_id(tokenizer, PLANTED_TEXT), _token_id(tokenizer, OTHER_TEXT)
    comp = model.components["model.embed_tokens"]
    ci_fn = model.ci_fn("model.embed_tokens")
    assert isinstance(ci_fn, MLPCIFn)
    with torch.no_grad():
        # Inner activation V[token, c] is 1 on the chosen token and 0 elsewhere; the CI function
        # maps 0 to a raw CI of -2 (CI 0 after the hard sigmoid) and 1 to about 1.4 (CI 1).
        comp._V.zero_()
        comp._V[planted, PLANTED] = 1.0
        comp._V[planted, TWIN] = 1.0
        comp._V[other, OTHER] = 1.0
        ci_fn.weights[0].fill_(1.0)
        ci_fn.biases[0].zero_()
        ci_fn.weights[1].fill_(4.0)
        ci_fn.biases[1].fill_(-2.0)
    directory = RunDirectory(run_path)
    run_path.mkdir(parents=True)
    save_config(config, run_path / CONFIG_FILE)
    save_checkpoint(directory, 1, model, config)
    return PlantedRun(run_path, tokenizer, config, planted, other)
