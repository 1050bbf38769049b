"""Every registered task carries everything about itself: its block, data, summary and hooks live
in its folder, and no other module of the package spells its name."""

import re
import sys
import tokenize
from pathlib import Path

import pytest
import torch

from spd.config.loading import config_from_dict, config_to_yaml, load_config
from spd.config.schema import config_blocks
from spd.config.task_registry import TASKS
from spd.errors import SPDUserError
from spd.experiments.registry import EXPERIMENT_REGISTRY
from spd.experiments.tasks import get_task
from spd.loading.targets import load_target_model
from spd.train.data_shard import data_shard
from tests.paths import REPO_ROOT
from tests.task_builders import BATCH_SIZE, EVAL_BATCH_SIZE, TASK_CONFIGS

SPD = REPO_ROOT / "spd"
# These translate the original implementation's files, whose target and task names happen to
# coincide with ours (its `tms.pth`, its `residual_mlp` task); they name that format, not a task.
ORIGINAL_FORMAT_MODULES = {
    SPD / "config" / "original_format.py",
    SPD / "loading" / "original_targets.py",
}

# The launcher's list of named experiments stays one static table: building it from the tasks
# would import them (and torch) into `spd-run`, which must start without torch.
EXPERIMENT_TABLE = SPD / "experiments" / "registry.py"


def _task_folder(name: str) -> Path:
    return Path(sys.modules[get_task(name).make_data.__module__].__file__ or "").parent


def _spellings(path: Path, name: str) -> list[str]:
    """Lines of `path` where `name` is an identifier or a quoted string (docstrings included)."""
    quoted = re.compile(rf"(['\"]){re.escape(name)}\1")
    with path.open("rb") as file:
        tokens = list(tokenize.tokenize(file.readline))
    return [
        f"{path}:{token.start[0]}: {token.line.strip()}"
        for token in tokens
        if (token.type == tokenize.NAME and token.string == name)
        or (token.type == tokenize.STRING and quoted.search(token.string))
    ]


@pytest.mark.parametrize("name", TASKS.names())
def test_a_task_name_is_spelled_only_in_its_own_folder(name: str) -> None:
    folder = _task_folder(name)
    assert folder.parent == SPD / "experiments", folder
    elsewhere = [
        line
        for path in sorted(SPD.rglob("*.py"))
        if folder not in path.parents and path not in {*ORIGINAL_FORMAT_MODULES, EXPERIMENT_TABLE}
        for line in _spellings(path, name)
    ]
    assert elsewhere == []


def test_the_grep_finds_a_spelled_task_name(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text('if task == "resid_mlp":\n    lm = 1\nx = "f\'tms\' text"\n')
    assert len(_spellings(module, "resid_mlp")) == 1
    assert len(_spellings(module, "lm")) == 1
    assert len(_spellings(module, "tms")) == 1
    assert _spellings(module, "generic") == []


@pytest.mark.parametrize("name", TASKS.names())
def test_a_task_declares_its_block_and_its_experiments(name: str) -> None:
    task = get_task(name)
    assert task.name == name and TASKS.get(name) is task
    assert config_blocks()[f"task_config.{name}"] is task.config_class
    assert task.config_class.model_fields["task_name"].default == name
    folder = _task_folder(name)
    for spec in EXPERIMENT_REGISTRY.values():
        if spec.task_name == name:
            assert folder in spec.config_path.parents and folder in spec.decomp_script.parents
            assert load_config(spec.config_path).task_config.task_name == name


@pytest.mark.parametrize("name", TASKS.names())
def test_a_task_config_round_trips_and_its_data_has_the_batch_sizes(
    name: str, tmp_path: Path
) -> None:
    assert name in TASK_CONFIGS, f"add a small config of task '{name}' to tests/task_builders.py"
    config = config_from_dict(TASK_CONFIGS[name](tmp_path))
    assert type(config.task_config) is get_task(name).config_class
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(config))
    assert load_config(path) == config
    task = get_task(name)
    if task.prepare is not None:
        config = task.prepare(config)
    target = load_target_model(config)
    shard = data_shard(config)
    # One process: the config's own seed and sizes (the same draws as before ranks existed).
    assert (shard.rank, shard.world_size, shard.seed) == (0, 1, config.seed)
    train, evals = task.make_data(config, target, torch.device("cpu"), shard)
    assert next(train).shape[0] == BATCH_SIZE and next(evals).shape[0] == EVAL_BATCH_SIZE


def test_an_unknown_or_missing_task_name_is_one_line_naming_the_key() -> None:
    base = TASK_CONFIGS["tms"](REPO_ROOT)
    registered = ", ".join(TASKS.names())
    with pytest.raises(
        SPDUserError,
        match=rf"'task_config\.task_name'.*unknown task 'tmz'; registered tasks: {registered}",
    ):
        config_from_dict({**base, "task_config": {"task_name": "tmz"}})
    with pytest.raises(SPDUserError, match=r"missing required config key 'task_config\.task_name'"):
        config_from_dict({**base, "task_config": {"feature_probability": 0.1}})
