"""A seconds-long real TMS decomposition, for tests that need a finished run directory."""

from typing import Any

from spd.config.loading import load_config
from spd.config.schema import Config
from spd.experiments.registry import get_experiment
from spd.experiments.run_decomposition import DecompositionRun, run_decomposition
from spd.experiments.tms.task import make_data, summarize

TINY_OVERRIDES: dict[str, Any] = {
    "steps": 20,
    "batch_size": 64,
    "eval_batch_size": 64,
    "train_log_freq": 10,
    "eval_freq": 10,
    "slow_eval_freq": 20,
    "save_freq": 10,
    "device": "cpu",
}
# The same overrides as command-line arguments of the decomposition script.
TINY_CLI_OVERRIDES = [arg for k, v in TINY_OVERRIDES.items() for arg in ("--override", f"{k}={v}")]


def tiny_tms_config(**overrides: Any) -> Config:
    """The tms_5-2 config shortened to 20 steps (output root: $SPD_OUT_DIR, set by the test)."""
    return load_config(get_experiment("tms_5-2").config_path, {**TINY_OVERRIDES, **overrides})


def run_tiny_tms(**overrides: Any) -> DecompositionRun:
    """Run the shortened tms_5-2 decomposition in this process."""
    return run_decomposition(
        tiny_tms_config(**overrides), "tms", make_data, summarize, show_progress=False
    )
