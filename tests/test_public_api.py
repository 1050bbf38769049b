"""The names users import from `spd` itself, and that importing `spd` stays cheap."""

import subprocess
import sys

import pytest

import spd
from spd.config.loading import load_config
from spd.config.schema import Config
from spd.loading.targets import load_target_model
from spd.models.component_model import ComponentModel
from spd.train.optimize import optimize
from tests.paths import REPO_ROOT


def test_the_top_level_names_are_the_stage_modules_objects() -> None:
    assert spd.load_config is load_config
    assert spd.Config is Config
    assert spd.load_target_model is load_target_model
    assert spd.ComponentModel is ComponentModel
    assert spd.optimize is optimize
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = spd.nothing  # pyright: ignore[reportAttributeAccessIssue]


def test_importing_spd_does_not_import_torch() -> None:
    code = "import sys, spd; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "False"
