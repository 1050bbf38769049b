"""Short `optimize()` runs that log every step and never evaluate: what the tests that compare
two code paths step by step need."""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from spd.config.schema import Config
from spd.train.data_shard import data_shard
from spd.train.optimize import optimize
from tests.recording_sink import RecordingSink

# Config overrides: a training-log row at every step, no evaluation, no checkpoint.
LOG_EVERY_STEP: dict[str, Any] = {
    "train_log_freq": 1,
    "eval_freq": 10**6,
    "slow_eval_freq": 10**6,
    "slow_eval_on_first_step": False,
    "save_freq": None,
    "metrics": [],
    "figures": [],
}


def logged_run(
    target: nn.Module, config: Config, make_data: Callable[..., Any]
) -> tuple[list[dict[str, float]], dict[str, Tensor]]:
    """`optimize()` on the CPU from seed 0: the training-log rows and the final parameters."""
    train, evals = make_data(config, target, torch.device("cpu"), data_shard(config))
    logged = RecordingSink()
    torch.manual_seed(0)
    result = optimize(
        target, config, torch.device("cpu"), train, evals, show_progress=False, sinks=[logged]
    )
    params = {k: v.detach().clone() for k, v in result.model.named_parameters()}
    return logged.train_rows(), params
