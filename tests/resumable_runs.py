"""Tiny TMS runs shared by the resume, preemption, NaN and bad-input tests (seconds on a CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from spd.config.device import resolve_device
from spd.config.loading import load_config
from spd.config.schema import Config
from spd.experiments.tms.task import make_data
from spd.loading.targets import load_target_model
from spd.persistence.checkpoints import read_checkpoint
from spd.persistence.run_dir import RunDirectory
from spd.train.data_shard import data_shard
from spd.train.optimize import OptimizeResult, optimize

REPO = Path(__file__).resolve().parent.parent
TMS_SCRIPT = REPO / "spd" / "experiments" / "tms" / "tms_decomposition.py"
TMS_CONFIG = REPO / "spd" / "experiments" / "tms" / "tms_5_2_config.yaml"
# Small batches, frequent logging and no figures: every code path of a run, in seconds.
TINY: dict[str, Any] = {
    "device": "cpu",
    "batch_size": 32,
    "eval_batch_size": 32,
    "train_log_freq": 5,
    "eval_freq": 20,
    "slow_eval_freq": 1_000_000,
    "slow_eval_on_first_step": False,
    "figures": [],
}


def tiny_config(**changes: Any) -> Config:
    """The TMS 5-2 config made tiny, with `changes` on top."""
    return load_config(TMS_CONFIG, {**TINY, **changes})


def override_args(**changes: Any) -> list[str]:
    """`--override key=value` options for the tiny settings and `changes` (JSON is valid YAML)."""
    args: list[str] = []
    for key, value in {**TINY, **changes}.items():
        args += ["--override", f"{key}={json.dumps(value)}"]
    return args


def script_env(out_dir: Path) -> dict[str, str]:
    """The environment for a script subprocess: this checkout first, one thread, own output root."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "SPD_OUT_DIR": str(out_dir),
    }


def run_tms(args: list[str], out_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run tms_decomposition.py with `args` to completion."""
    return subprocess.run(
        [sys.executable, str(TMS_SCRIPT), *args],
        env=script_env(out_dir),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def decomposition_tensors(checkpoint: Path) -> dict[str, Tensor]:
    """Every trained tensor of a checkpoint, keyed 'components.<name>' / 'ci_fns.<name>'."""
    data = read_checkpoint(checkpoint)
    return {
        f"{part}.{k}": v
        for part, tensors in data["decomposition"].items()
        for k, v in tensors.items()
    }


def assert_bitwise_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def run(
    config: Config,
    run_dir: RunDirectory,
    stop_after: int | None = None,
    resume_from: Path | None = None,
) -> OptimizeResult:
    """`optimize()` on fresh target and data objects, optionally stopping after step `stop_after`."""
    device = resolve_device(config.device)
    target = load_target_model(config)
    train, evaluation = make_data(config, target, device, data_shard(config))
    last_step = -1

    def on_step_end(step: int) -> None:
        nonlocal last_step
        last_step = step

    return optimize(
        target,
        config,
        device,
        train,
        evaluation,
        run_dir=run_dir,
        show_progress=False,
        on_step_end=on_step_end,
        resume_from=resume_from,
        should_stop=lambda: stop_after is not None and last_step >= stop_after,
    )
