"""`spd-pretrain`: training lowers the loss, resumes bit-exactly, stops on SIGTERM with exit 75,
reads text, local files and pretokenised streamed datasets, and refuses bad input in one line.

Everything runs on a tiny generated story corpus with its own BPE tokenizer (tests/tiny_corpus.py).
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import datasets.config
import pytest
import torch
import yaml
from safetensors.torch import load_file

from spd.errors import cli_exit_code
from spd.experiments.lm.pretrain import cli as pretrain_script
from spd.experiments.lm.pretrain.checks import prepare_run
from spd.experiments.lm.pretrain.config import load_pretrain_config, pretrain_config_from_dict
from spd.experiments.lm.pretrain.run_files import PretrainRunFiles
from spd.experiments.lm.pretrain.train import PretrainResult, pretrain
from spd.experiments.lm.target_models import TargetLM
from spd.persistence.preemption import PREEMPTED_EXIT_CODE
from tests.paths import REPO_ROOT
from tests.tiny_corpus import build_tiny_corpus, tiny_pretrain_config

PRETRAIN = [sys.executable, "-m", "spd.experiments.lm.pretrain.cli"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def _datasets_cache_and_one_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    # `datasets` converts files to Arrow in its cache: keep that out of ~/.cache. One torch thread:
    # a tiny model's steps are slower with threads that compete for the shared cores.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(
    corpus: tuple[Path, Path],
    run_dir: Path,
    resume: bool = False,
    stop_after: int | None = None,
    **changes: Any,
) -> PretrainResult:
    config = pretrain_config_from_dict(tiny_pretrain_config(*corpus, **changes), "test")
    files = PretrainRunFiles(run_dir)
    prepared = prepare_run(config, files, world_size=1, resume=resume)
    polls = iter(range(10**6))
    should_stop = None if stop_after is None else (lambda: next(polls) + 1 >= stop_after)
    return pretrain(prepared, files, resume=resume, should_stop=should_stop)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_pretraining_lowers_the_loss_and_writes_a_loadable_model(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    result = _run(corpus, tmp_path / "run", steps=30, eval_freq=30)
    assert result.model_dir is not None and not result.stopped
    model = TargetLM.from_pretrained(result.model_dir)
    vocab = model.config.vocab_size
    assert vocab is not None
    # An untrained model (weights near 0) predicts uniformly: CE ln(vocab). 30 steps learn more.
    assert result.eval_ce is not None and result.eval_ce < math.log(vocab) - 1.0
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    info = json.loads((result.model_dir / "pretrain_info.json").read_text())
    assert info["eval_ce"] == pytest.approx(result.eval_ce)
    # The tokenizer lies beside the model, so one directory serves a decomposition config.
    assert (result.model_dir / "tokenizer.json").is_file()


def test_resume_is_bit_exact(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    whole = _run(corpus, tmp_path / "whole")
    stopped = _run(corpus, tmp_path / "parts", stop_after=5)
    assert stopped.stopped and stopped.step == 5 and stopped.model_dir is None
    assert (tmp_path / "parts/checkpoints/step_00000005.pt").is_file()
    resumed = _run(corpus, tmp_path / "parts", resume=True)
    assert not resumed.stopped and resumed.eval_ce == whole.eval_ce
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "parts")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The resumed run's log has each step once, as the uninterrupted run's has.
    logs = [
        [
            json.loads(line)["step"]
            for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        ]
        for run in ("whole", "parts")
    ]
    assert logs[0] == logs[1]


def test_sigterm_checkpoints_and_exits_75_then_resume_continues(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    # A real process and a real signal; the run is long enough that SIGTERM arrives mid-run, and
    # has no periodic checkpoints, so the one found was written for the signal. (That a resumed
    # run equals the uninterrupted one is test_resume_is_bit_exact: the same stop path, in-process.)
    changes = {"steps": 100_000, "save_freq": None, "eval_freq": 100_000, "log_freq": 1}
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_pretrain_config(*corpus, **changes)))
    process = subprocess.Popen(
        [*PRETRAIN, "--no-progress", str(config_file), "--out", str(tmp_path / "run")],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
        | {"HF_DATASETS_CACHE": str(tmp_path / "hf_cache")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run/metrics.jsonl"
    deadline = time.monotonic() + 120
    while not metrics.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr
    assert f"spd-pretrain --resume {tmp_path / 'run'}" in stderr.splitlines()[-1]
    checkpoints = sorted((tmp_path / "run/checkpoints").glob("step_*.pt"))
    assert len(checkpoints) == 1 and not (tmp_path / "run/model").exists()
    stopped_at = int(checkpoints[0].stem.removeprefix("step_"))
    assert 0 < stopped_at < 100_000
    # Continue it for two more steps (the resumable `steps` override), in-process.
    files = PretrainRunFiles(tmp_path / "run")
    config = load_pretrain_config(files.config_file, {"steps": stopped_at + 2})
    result = pretrain(prepare_run(config, files, world_size=1, resume=True), files, resume=True)
    assert result.step == stopped_at + 2 and result.model_dir is not None


def test_local_text_files(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    stories = [
        json.loads(line)["story"]
        for line in (corpus[0] / "train.jsonl").read_text().split("\n")
        if line
    ]
    (tmp_path / "train.txt").write_text("\n".join(stories[:200]) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(stories[200:]) + "\n")
    data = {
        **tiny_pretrain_config(*corpus)["data"],
        "dataset_name": "text",
        "text_column": "text",
        "data_files": {"train": str(tmp_path / "train.txt"), "test": str(tmp_path / "test.txt")},
    }
    result = _run(corpus, tmp_path / "run", data=data, steps=4)
    assert result.model_dir is not None and result.eval_ce is not None


def test_pretokenised_dataset_streamed_from_disk(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    # A Hugging Face dataset of token ids as `save_to_disk` writes it (what a hub dataset becomes
    # once downloaded: the hub itself cannot be reached here), read as a stream.
    generator = torch.Generator().manual_seed(0)
    rows = {
        split: {"input_ids": torch.randint(0, 300, (n, 40), generator=generator).tolist()}
        for split, n in (("train", 64), ("test", 16))
    }
    saved = tmp_path / "tokens"
    datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in rows.items()}).save_to_disk(
        str(saved)
    )
    data = {
        **tiny_pretrain_config(*corpus)["data"],
        "dataset_name": str(saved),
        "text_column": "input_ids",
        "pretokenized": True,
        "streaming": True,
        "shuffle_buffer_size": 16,
    }
    result = _run(corpus, tmp_path / "run", data=data, steps=4)
    assert result.model_dir is not None and result.eval_ce is not None


def _refusal(corpus: tuple[Path, Path], tmp_path: Path, case: str) -> tuple[list[str], str]:
    """The command line of a refusal case, and what its one line must say."""
    base = tiny_pretrain_config(*corpus)
    model: dict[str, Any] = dict(base["model"])
    data: dict[str, Any] = dict(base["data"])
    extra: list[str] = []
    if case == "vocab smaller than the tokenizer":
        base["model"], expect = {**model, "vocab_size": 10}, "smaller than the tokenizer"
    elif case == "empty corpus":
        empty = tmp_path / "empty"
        empty.mkdir()
        for split in ("train", "test"):
            (empty / f"{split}.jsonl").write_text(json.dumps({"story": " "}) + "\n")
        base["data"], expect = {**data, "dataset_name": str(empty)}, "is empty"
    elif case == "sequence longer than the context":
        base["data"], expect = {**data, "max_seq_len": 64}, "longer than model.max_seq_len"
    elif case == "batch not divisible by dp":
        extra, expect = ["--dp", "3"], "does not split evenly over 3"
    elif case == "missing data":
        base["data"], expect = {**data, "dataset_name": str(tmp_path / "nowhere")}, "nowhere"
    elif case == "missing tokenizer":
        missing = tmp_path / "no_tokenizer"
        missing.mkdir()
        base["data"], expect = {**data, "tokenizer_name": str(missing)}, "not a complete tokenizer"
    elif case == "token id outside the vocabulary":
        saved = tmp_path / "ids"
        big = {"input_ids": [[5, 6, 10_000]]}
        datasets.DatasetDict(
            {s: datasets.Dataset.from_dict(big) for s in ("train", "test")}
        ).save_to_disk(str(saved))
        base["data"] = {
            **data,
            "dataset_name": str(saved),
            "text_column": "input_ids",
            "pretokenized": True,
        }
        expect = "token id 10000"
    elif case == "unknown key":
        base["model"], expect = {**model, "n_layer": 2}, "unknown config key 'model.llama.n_layer'"
    else:
        assert case == "heads do not divide the width"
        base["model"], expect = {**model, "n_heads": 3}, "multiple of n_heads"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(base))
    return [str(config_file), "--out", str(tmp_path / "run"), *extra], expect


REFUSALS = [
    "vocab smaller than the tokenizer",
    "empty corpus",
    "sequence longer than the context",
    "batch not divisible by dp",
    "missing data",
    "missing tokenizer",
    "token id outside the vocabulary",
    "unknown key",
    "heads do not divide the width",
]


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_are_one_line_exit_2_and_write_nothing(
    case: str, corpus: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, expect = _refusal(corpus, tmp_path, case)
    monkeypatch.setattr(sys, "argv", ["spd-pretrain", *argv])
    code, stderr = cli_exit_code(pretrain_script.main)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spd: error: "), stderr
    assert expect in lines[0]
    assert not (tmp_path / "run").exists()


def test_an_unfinished_run_is_not_overwritten(
    corpus: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(corpus, tmp_path / "run", stop_after=2)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(tiny_pretrain_config(*corpus)))
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    monkeypatch.setattr(
        sys, "argv", ["spd-pretrain", str(config_file), "--out", str(tmp_path / "run")]
    )
    code, stderr = cli_exit_code(pretrain_script.main)
    assert code == 2 and "--resume" in stderr
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before


@pytest.mark.slow
def test_data_parallel_pretraining_under_torchrun(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    """--dp 2: two gloo processes, each on its half of every batch, one model written."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(tiny_pretrain_config(*corpus, steps=6)))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spd.experiments.lm.pretrain.cli",
            str(config_file),
            "--out",
            str(tmp_path / "run"),
            "--dp",
            "2",
            "--no-progress",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
        | {"HF_DATASETS_CACHE": str(tmp_path / "hf_cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "run/model/pretrain_info.json").read_text())
    assert info["world_size"] == 2
    TargetLM.from_pretrained(tmp_path / "run/model")


@pytest.mark.slow
def test_data_parallel_run_stops_on_sigterm_with_exit_75(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    """SIGTERM to `spd-pretrain --dp 2` reaches both ranks; rank 0 checkpoints, exit 75."""
    changes = {"steps": 100_000, "save_freq": None, "eval_freq": 100_000, "log_freq": 1}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(tiny_pretrain_config(*corpus, **changes)))
    process = subprocess.Popen(
        [*PRETRAIN, str(config_file), "--out", str(tmp_path / "run"), "--dp", "2", "--no-progress"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
        | {"HF_DATASETS_CACHE": str(tmp_path / "hf_cache")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run/metrics.jsonl"
    deadline = time.monotonic() + 240
    while not metrics.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr
    assert f"spd-pretrain --resume {tmp_path / 'run'}" in stderr.splitlines()[-1]
    (checkpoint,) = (tmp_path / "run/checkpoints").glob("step_*.pt")
    assert torch.load(checkpoint, weights_only=True)["world_size"] == 2
