"""A tiny story corpus and its tokenizer, the data of the pretraining and target-LM tests."""

from pathlib import Path
from typing import Any

from spd.experiments.lm.make_offline_example import TEXT_COLUMN, train_tokenizer, write_corpus
from tests.tiny_lm import TINY


def build_tiny_corpus(root: Path) -> tuple[Path, Path]:
    """Write data/{train,test}.jsonl (column 'story') and a BPE tokenizer under `root`;
    returns (data directory, tokenizer directory)."""
    data_dir, tokenizer_dir = root / "data", root / "tokenizer"
    texts = write_corpus(data_dir, TINY)
    train_tokenizer(texts, TINY.vocab_size).save_pretrained(str(tokenizer_dir))
    return data_dir, tokenizer_dir


def tiny_pretrain_config(data_dir: Path, tokenizer_dir: Path, **changes: Any) -> dict[str, Any]:
    """A pretraining config of a 1-layer Llama (width 32) on the tiny corpus, as a dict."""
    config: dict[str, Any] = {
        "name": "tiny",
        "device": "cpu",
        "model": {
            "architecture": "llama",
            "d_model": 32,
            "n_layers": 1,
            "n_heads": 2,
            "d_mlp": 64,
            "max_seq_len": 32,
        },
        "data": {
            "dataset_name": str(data_dir),
            "text_column": TEXT_COLUMN,
            "tokenizer_name": str(tokenizer_dir),
            "max_seq_len": 32,
        },
        "steps": 12,
        "batch_size": 4,
        "lr": 1e-2,
        "log_freq": 2,
        "eval_freq": 6,
        "eval_batch_size": 4,
        "n_eval_batches": 2,
        "save_freq": 4,
    }
    return {**config, **changes}
