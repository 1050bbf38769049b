"""What a run needs is checked before the launch: LM data and targets, ties, the target itself,
and a user's data module, each failure one line naming the run and the key.

The language-model checks use the tiny offline example (built once, seconds) and a tiny GPT-2
saved untrained (its learned position table is what limits the sequence length).
"""

import sys
from pathlib import Path
from typing import Any

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from spd.config.loading import config_from_dict
from spd.errors import SPDUserError
from spd.experiments.generic.data_source import import_data_source
from spd.experiments.lm.make_offline_example import TEXT_COLUMN, build_example
from spd.experiments.lm.sources import EXAMPLE_DIRNAME
from spd.experiments.tasks import get_task
from spd.launch.plan import LaunchSettings, plan_runs
from tests.tiny_lm import SEQ_LEN, TINY


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output root holding the tiny example, a GPT-2 of SEQ_LEN positions, and bad inputs."""
    root = tmp_path_factory.mktemp("out")
    build_example(root / EXAMPLE_DIRNAME, TINY, log=False)
    gpt2 = GPT2Config(
        vocab_size=TINY.vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=SEQ_LEN
    )
    GPT2LMHeadModel(gpt2).save_pretrained(root / "gpt2")
    (root / "bad_tokenizer").mkdir()
    (root / "bad_tokenizer" / "tokenizer_config.json").write_text("{}")
    (root / "empty_data").mkdir()
    (root / "empty_data" / "train.jsonl").write_text("")
    (root / "empty_data" / "test.jsonl").write_text('{"story": "a"}\n')
    return root


def _config(root: Path, **changes: Any) -> dict[str, Any]:
    task = {
        "task_name": "lm",
        "dataset_name": str(root / EXAMPLE_DIRNAME / "data"),
        "text_column": TEXT_COLUMN,
        "max_seq_len": SEQ_LEN,
        "tokenizer_name": str(root / EXAMPLE_DIRNAME / "model"),
        **changes.pop("task", {}),
    }
    return {
        "C": 4,
        "target_module_patterns": ["transformer.h.0.mlp.c_fc"],
        "faithfulness_coeff": 1.0,
        "stochastic_recon_coeff": 1.0,
        "importance_minimality_coeff": 1e-3,
        "output_loss_type": "kl",
        "steps": 10,
        "batch_size": 2,
        "eval_batch_size": 2,
        "metrics": [],
        "pretrained_model_class": "transformers.GPT2LMHeadModel",
        "pretrained_model_name_hf": str(root / "gpt2"),
        "pretrained_model_output_attr": "logits",
        "task_config": task,
        **changes,
    }


BAD_LM_RUNS: list[tuple[str, dict[str, Any], str]] = [
    (
        "missing data file",
        {"task": {"dataset_name": "json", "data_files": "/nowhere/train.jsonl"}},
        "task_config.data_files",
    ),
    ("empty split", {"task": {"dataset_name": "{root}/empty_data"}}, "is empty"),
    ("unknown split", {"task": {"eval_split": "validation"}}, "task_config.eval_split"),
    ("unknown text column", {"task": {"text_column": "text"}}, "task_config.text_column"),
    ("beyond the positions", {"task": {"max_seq_len": 2 * SEQ_LEN}}, "task_config.max_seq_len"),
    (
        "incomplete tokenizer",
        {"task": {"tokenizer_name": "{root}/bad_tokenizer"}},
        "task_config.tokenizer_name",
    ),
    ("unknown output", {"pretrained_model_output_attr": "logitz"}, "pretrained_model_output_attr"),
    (
        "tie of different shapes",
        {
            "target_module_patterns": ["transformer.h.0.mlp.c_fc", "transformer.h.0.attn.c_attn"],
            "tied_weights": [["transformer.h.0.mlp.c_fc", "transformer.h.0.attn.c_attn"]],
        },
        "tied_weights",
    ),
]


def _filled(value: Any, root: Path) -> Any:
    if isinstance(value, dict):
        return {k: _filled(v, root) for k, v in value.items()}
    return value.replace("{root}", str(root)) if isinstance(value, str) else value


def test_a_good_lm_run_passes(example: Path) -> None:
    check = get_task("lm").check
    assert check is not None
    check(config_from_dict(_config(example)))


@pytest.mark.parametrize(
    ("kind", "changes", "key"), BAD_LM_RUNS, ids=[k for k, _, _ in BAD_LM_RUNS]
)
def test_bad_lm_input_is_refused_before_the_run(
    example: Path, kind: str, changes: dict[str, Any], key: str
) -> None:
    check = get_task("lm").check
    assert check is not None, "the LM task checks nothing before a run"
    config = config_from_dict(_config(example, **_filled(changes, example)))
    with pytest.raises(SPDUserError) as raised:
        check(config)
    assert key in str(raised.value), kind
    assert "\n" not in str(raised.value)


def test_launch_names_the_run_and_key(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPD_OUT_DIR", str(example))
    settings = LaunchSettings(launch_id="L")
    overrides = {"task_config.max_seq_len": SEQ_LEN, "task_config.text_column": "text"}
    with pytest.raises(SPDUserError, match=r"run 'lm_example_emb' .*task_config\.text_column"):
        plan_runs(["lm_example_emb"], overrides, None, settings)
    assert not (example / "L").exists(), "something was written for a launch that cannot start"


def test_missing_local_target_stops_the_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path))
    overrides = {"pretrained_model_path": str(tmp_path / "not_trained")}
    with pytest.raises(SPDUserError, match=r"run 'tms_5-2' .*target checkpoint not found"):
        plan_runs(["tms_5-2"], overrides, None, LaunchSettings(launch_id="L"))


def test_data_module_that_raises_at_import_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "harden_broken_data.py").write_text("raise RuntimeError('no data here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SPDUserError, match=r"fails to import \(RuntimeError: no data here\)"):
        import_data_source("harden_broken_data:batches")
    sys.modules.pop("harden_broken_data", None)
