"""Small shared fixtures: a quick TMS config and fresh TMS targets."""

from pathlib import Path
from typing import Any

import pytest
import torch

from spd.config import loading
from spd.config.loading import load_config
from spd.config.schema import Config
from spd.experiments.tms.models import TMSModel
from tests.fixture_types import ConfigFactory, TargetFactory
from tests.paths import TMS_5_2_CONFIG, TMS_TARGETS


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default="cpu",
        help="torch device of the device-generic tests (those taking the `device` fixture): "
        "cpu (default) or cuda, on a machine with a GPU",
    )


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device chosen with `pytest --device` (CPU unless asked)."""
    name = str(request.config.getoption("--device"))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


# Settings that make a TMS decomposition take a second instead of minutes.
QUICK_OVERRIDES: dict[str, Any] = {
    "steps": 20,
    "batch_size": 64,
    "eval_batch_size": 64,
    "train_log_freq": 5,
    "eval_freq": 10,
    "slow_eval_freq": 10,
    "save_freq": None,
    "figures": [],
}


@pytest.fixture
def quick_tms_config() -> ConfigFactory:
    """The shipped tms_5-2 config (or another, via `config_path`) shrunk to a few steps.

    Keyword arguments are further dotted-key overrides.
    """

    def make(config_path: Path = TMS_5_2_CONFIG, **overrides: Any) -> Config:
        return load_config(config_path, {**QUICK_OVERRIDES, **overrides})

    return make


@pytest.fixture
def tms_target() -> TargetFactory:
    """A fresh copy of a shipped TMS target (a ComponentModel patches its target in place)."""

    def load(name: str = "tms_5-2") -> TMSModel:
        return TMSModel.from_pretrained(TMS_TARGETS / name)

    return load


@pytest.fixture(autouse=True)
def _warnings_print_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    # `warn_once` prints each warning once per process; a test that counts warning lines must not
    # depend on which test of the same worker read the same file before it.
    monkeypatch.setattr(loading, "_WARNED", set())
