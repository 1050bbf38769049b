"""Your own model, data and config: `spd-run --config`, the generic task, training toy targets of
any size from YAML, and the one-line errors of each."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import yaml
from pydantic import Field

from spd.config.loading import config_from_dict
from spd.config.schema import TaskConfig
from spd.config.task_registry import TASKS
from spd.errors import SPDUserError
from spd.experiments.generic.data_source import import_data_source
from spd.experiments.resid_mlp.labels import load_label_coeffs
from spd.experiments.resid_mlp.models import ResidMLP
from spd.experiments.resid_mlp.train_resid_mlp import RECIPES as RESID_RECIPES
from spd.experiments.tasks import Task, get_task, register_task
from spd.experiments.tms.task import make_data as tms_make_data
from spd.experiments.tms.train_tms import RECIPES as TMS_RECIPES
from spd.launch.commands import run_command
from spd.launch.plan import LaunchSettings, plan_runs
from spd.launch.run_sources import DEFAULT_CONFIG_RUNTIME, config_sources
from spd.launch.sweeps import load_sweep
from spd.models.component_model import ComponentModel
from spd.scripts.run import main as spd_run
from tests.paths import REPO_ROOT, TMS_DIR

TRAIN_TMS = TMS_DIR / "train_tms.py"
DECOMPOSE = REPO_ROOT / "spd" / "experiments" / "decompose.py"

# A user's package, written into the test's directory: a model whose layers are named `encode`
# and `readout` (no `linear1` anywhere) and a data source yielding its input batches.
USER_PACKAGE = '''
from pathlib import Path

import torch
from torch import nn


class Squeeze(nn.Module):
    """4 inputs -> 3 -> 4 with a ReLU, no layer called linear1."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(4, 3, bias=False)
        self.readout = nn.Linear(3, 4)

    def forward(self, x):
        return torch.relu(self.readout(self.encode(x)))

    @classmethod
    def from_pretrained(cls, path):
        model = cls()
        model.load_state_dict(torch.load(Path(path) / "weights.pt", weights_only=True))
        return model


def sparse_batches(batch_size, seed, n_inputs, p):
    generator = torch.Generator().manual_seed(seed)
    while True:
        values = torch.rand(batch_size, n_inputs, generator=generator)
        yield values * (torch.rand(batch_size, n_inputs, generator=generator) < p)


def wrong_width(batch_size, seed):
    while True:
        yield torch.ones(batch_size, 7)


def wrong_batch(batch_size, seed):
    while True:
        yield torch.ones(batch_size + 1, 4)
'''


class MyTaskConfig(TaskConfig):
    """The block of a plug-in task registered by a test."""

    task_name: Literal["my_task"] = Field(default="my_task", description="Selects this task")
    width: int = Field(default=3, description="A setting of the plug-in's data")


def _tms_config_dict() -> dict[str, Any]:
    return yaml.safe_load((TMS_DIR / "tms_5_2_config.yaml").read_text())


QUICK: dict[str, Any] = {
    "steps": 20,
    "batch_size": 64,
    "eval_batch_size": 64,
    "train_log_freq": 10,
    "eval_freq": 10,
    "slow_eval_freq": 20,
    "save_freq": 10,
    "device": "cpu",
}


def _user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write the user's package and its target; importable here and in spd-run's runs."""
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(USER_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    from userpkg.models import Squeeze  # pyright: ignore[reportMissingImports]

    torch.manual_seed(3)
    target_dir = tmp_path / "target"
    target_dir.mkdir()
    torch.save(Squeeze().state_dict(), target_dir / "weights.pt")
    return target_dir


def _user_config(tmp_path: Path, target_dir: Path, **task: Any) -> Path:
    config = {
        "C": 6,
        "target_module_patterns": ["encode", "readout"],
        "pretrained_model_class": "userpkg.models.Squeeze",
        "pretrained_model_path": str(target_dir),
        "metrics": [
            {"name": "ci_l0"},
            {"name": "ground_truth_recovery", "params": {"layer": "encode"}},
        ],
        "figures": [{"name": "feature_vectors", "params": {"layer": "encode"}}],
        "task_config": {
            "task_name": "generic",
            "data_source": "userpkg.models:sparse_batches",
            "data_params": {"n_inputs": 4, "p": 0.3},
            **task,
        },
        **QUICK,
    }
    path = tmp_path / "user_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/*/final_config.yaml"))


def test_a_users_module_and_data_source_run_by_spd_run_config_and_reload_bitwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target_dir = _user_package(tmp_path, monkeypatch)
    config_path = _user_config(tmp_path, target_dir)
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    spd_run(["--config", str(config_path), "--local", "--no-progress"])
    (run_dir,) = _run_dirs(tmp_path / "out")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"ci_l0/encode", "ci_l0/readout", "mmcs/encode", "ml2r/encode"} <= set(summary)
    assert (run_dir / "figures" / "feature_vectors_encode_20.png").is_file()

    loaded = ComponentModel.from_pretrained(run_dir)
    assert loaded.module_names == ["encode", "readout"]
    assert type(loaded.target).__name__ == "Squeeze"
    saved = torch.load(run_dir / "checkpoints" / "model_00000020.pth", weights_only=False)
    state = loaded.decomposition_state()
    for part in ("components", "ci_fns"):
        assert state[part].keys() == saved["decomposition"][part].keys()
        for key, tensor in saved["decomposition"][part].items():
            assert torch.equal(state[part][key], tensor), key
    target_weights = torch.load(target_dir / "weights.pt", weights_only=True)
    assert torch.equal(loaded.target_weight("encode"), target_weights["encode.weight"])


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            {"data_source": "userpkg.nothere:batches"},
            "data_source 'userpkg.nothere:batches': cannot import module 'userpkg.nothere'",
        ),
        (
            {"data_source": "userpkg.models:no_such"},
            "module 'userpkg.models' has no attribute 'no_such'",
        ),
    ],
)
def test_a_data_source_that_cannot_be_imported_stops_spd_run_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: dict[str, Any], message: str
) -> None:
    target_dir = _user_package(tmp_path, monkeypatch)
    config_path = _user_config(tmp_path, target_dir, **task)
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    with pytest.raises(SPDUserError, match=message) as err:
        spd_run(["--config", str(config_path), "--local"])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("userpkg.models:wrong_width", r"yields batches of shape \(64, 7\).*cannot take"),
        ("userpkg.models:wrong_batch", r"yielded a batch of shape \(65, 4\); its first axis"),
    ],
)
def test_a_data_source_of_the_wrong_shape_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, message: str
) -> None:
    target_dir = _user_package(tmp_path, monkeypatch)
    config_path = _user_config(tmp_path, target_dir, data_source=source, data_params={})
    env = {**_env(tmp_path), "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(DECOMPOSE), str(config_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("spd: error: task_config.data_source")
    assert re.search(message, line), line
    assert not list((tmp_path / "out").rglob("final_config.yaml"))


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SPD_OUT_DIR": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}


def test_a_config_that_names_no_runnable_task_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = yaml.safe_load((TMS_DIR / "tms_5_2_config.yaml").read_text())
    config["task_config"] = {"task_name": "vision", "feature_probability": 0.1}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    with pytest.raises(
        SPDUserError, match=r"task_config.*'vision'.*generic.*lm.*resid_mlp.*tms"
    ) as err:
        spd_run(["--config", str(path), "--local"])
    assert "\n" not in str(err.value)
    del config["task_config"]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SPDUserError, match="missing required config key 'task_config'"):
        spd_run(["--config", str(path), "--local"])
    assert not (tmp_path / "out").exists()


def test_import_data_source_accepts_both_forms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _user_package(tmp_path, monkeypatch)
    assert import_data_source("userpkg.models:sparse_batches").__name__ == "sparse_batches"
    assert import_data_source("userpkg.models.sparse_batches").__name__ == "sparse_batches"


# --- a TMS of a size not in the registry: trained from YAML, decomposed with spd-run --config ---

TMS_6_3_TRAIN = {
    "model": {"n_features": 6, "n_hidden": 3},
    "seed": 0,
    "steps": 10000,
    "batch_size": 1024,
    "retry_seeds": 5,
}


def _train_tms(tmp_path: Path, steps: int) -> Path:
    train_config = tmp_path / "tms_6-3_train.yaml"
    train_config.write_text(yaml.safe_dump(TMS_6_3_TRAIN))
    out = tmp_path / "tms_6-3"
    subprocess.run(
        [
            sys.executable,
            str(TRAIN_TMS),
            str(train_config),
            "--override",
            f"steps={steps}",
            "--out",
            str(out),
            "--no-progress",
        ],
        check=True,
        env=_env(tmp_path),
    )
    written = yaml.safe_load((out / "train_config.yaml").read_text())
    assert written["model"]["n_features"] == 6 and written["model"]["n_hidden"] == 3
    assert written["steps"] == steps
    return out


def _tms_decomposition_config(tmp_path: Path, target: Path, **settings: Any) -> Path:
    config = yaml.safe_load((TMS_DIR / "tms_5_2_config.yaml").read_text())
    config.update(
        pretrained_model_path=str(target),
        C=20,
        figures=[],
        run_name="tms_6-3",
        **settings,
    )
    path = tmp_path / "tms_6-3.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_tms_of_a_new_size_trains_from_yaml_and_decomposes_with_spd_run_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plumbing, at a few hundred target steps and 20 decomposition steps."""
    target = _train_tms(tmp_path, steps=300)
    config = _tms_decomposition_config(tmp_path, target, **QUICK)
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    spd_run(["--config", str(config), "--local", "--no-progress"])
    (run_dir,) = _run_dirs(tmp_path / "out")
    assert run_dir.name.endswith("-tms_6-3")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) >= {"mmcs/linear1", "ml2r/linear1"}
    model = ComponentModel.from_pretrained(run_dir)
    assert model.components["linear1"].d_in == 6 and model.components["linear1"].V.shape == (6, 20)


@pytest.mark.slow
def test_a_tms_of_a_new_size_is_recovered_with_mmcs_above_0_99(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _train_tms(tmp_path, steps=10000)
    config = _tms_decomposition_config(
        tmp_path,
        target,
        steps=10000,
        eval_freq=5000,
        slow_eval_freq=10000,
        save_freq=None,
        device="cpu",
    )
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    spd_run(["--config", str(config), "--local", "--no-progress"])
    (run_dir,) = _run_dirs(tmp_path / "out")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mmcs/linear1"] >= 0.99, summary
    assert 0.9 <= summary["ml2r/linear1"] <= 1.1, summary


# --- the launcher's plumbing of --config: commands, sweeps, data parallelism ---


def test_config_runs_use_the_generic_script_with_the_users_file_and_sweep_by_its_name(
    tmp_path: Path,
) -> None:
    config = _tms_decomposition_config(tmp_path, TMS_DIR / "targets" / "tms_5-2", **QUICK)
    (source,) = config_sources([config], minutes=None)
    assert source.name == "tms_6-3" and source.expected_runtime == DEFAULT_CONFIG_RUNTIME
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("tms_6-3:\n  seed: {values: [1, 2]}\n")
    sweep = load_sweep(sweep_file, [source.name])
    runs = plan_runs([source], {}, sweep, LaunchSettings(launch_id="L"))
    assert [r.name for r in runs] == ["tms_6-3-seed=1", "tms_6-3-seed=2"]
    tree = tmp_path / "tree"
    cmd = run_command(runs[0], REPO_ROOT, tree, dp=2, no_progress=True)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    script = cmd.index(str(tree / "spd" / "experiments" / "decompose.py"))
    # The user's own file stays where it is; a shipped one would come from the run's tree.
    assert cmd[script + 1] == str(config.resolve())


def test_train_resid_mlp_trains_a_new_size_with_per_feature_label_coefficients(
    tmp_path: Path,
) -> None:
    coeffs = [1.0, 2.0, 0.5, 1.5, 1.0, 3.0]
    train_config = tmp_path / "resid_6.yaml"
    train_config.write_text(
        yaml.safe_dump(
            {
                "model": {"n_features": 6, "d_embed": 12, "d_mlp": 4, "n_layers": 2},
                "steps": 20,
                "batch_size": 64,
                "label_coeffs": coeffs,
            }
        )
    )
    out = tmp_path / "resid_6"
    script = REPO_ROOT / "spd" / "experiments" / "resid_mlp" / "train_resid_mlp.py"
    subprocess.run(
        [
            sys.executable,
            str(script),
            str(train_config),
            "--out",
            str(out),
            "--no-progress",
            "--override",
            "model.embed_seed=3",
        ],
        check=True,
        env=_env(tmp_path),
    )
    model = ResidMLP.from_pretrained(out)
    assert model.config.n_features == 6 and model.config.n_layers == 2
    assert model.config.embed_seed == 3
    assert load_label_coeffs(out).tolist() == coeffs
    bad = subprocess.run(
        [sys.executable, str(script), str(train_config), "--override", "label_coeffs=[1.0]"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        check=False,
    )
    assert bad.returncode == 2
    (line,) = bad.stderr.strip().splitlines()
    assert "label_coeffs has 1 values but model.n_features is 6" in line


@pytest.mark.parametrize(
    ("family", "targets"),
    [("tms", TMS_DIR / "targets"), ("resid_mlp", REPO_ROOT / "spd/experiments/resid_mlp/targets")],
)
def test_the_shipped_training_configs_are_the_recipes_of_the_shipped_targets(
    family: str, targets: Path
) -> None:
    recipes = TMS_RECIPES if family == "tms" else RESID_RECIPES
    assert sorted(recipes) == sorted(p.name for p in targets.iterdir() if p.is_dir())
    for name, recipe in recipes.items():
        written = yaml.safe_load((targets / name / "train_config.yaml").read_text())
        assert type(recipe.model)(**written["model"]) == recipe.model, name
        for key, value in recipe.model_dump(exclude={"model"}).items():
            if key in written:
                assert written[key] == value, (name, key)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiments", "tms_5-2", "--config", "{config}"], "give --experiments or --config"),
        (["--experiments", "tms_5-2", "--time-minutes", "5"], "--time-minutes is for --config"),
        (["--config", "{config}", "--time-minutes", "0"], "--time-minutes must be at least 1"),
        (["--config", "{missing}"], "config file not found"),
    ],
)
def test_bad_config_options_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    config = _tms_decomposition_config(tmp_path, TMS_DIR / "targets" / "tms_5-2", **QUICK)
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    args = [a.format(config=config, missing=tmp_path / "missing.yaml") for a in args]
    with pytest.raises(SPDUserError, match=message) as err:
        spd_run([*args, "--local"])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_tasks_are_looked_up_by_name_and_a_plug_in_can_register_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert get_task("tms").make_data is tms_make_data
    assert get_task("generic").check is not None
    with pytest.raises(SPDUserError, match="'my_task' names no runnable task; runnable: generic"):
        get_task("my_task")
    # The plug-in stays in this test.
    monkeypatch.setattr(TASKS, "_plugins", dict(TASKS._plugins))  # pyright: ignore[reportPrivateUsage]
    plug_in = Task(
        name="my_task", config_class=MyTaskConfig, make_data=tms_make_data, summarize=lambda *_: {}
    )
    assert register_task(plug_in) is plug_in and get_task("my_task") is plug_in
    # A config of the new task validates with its block, and its keys are checked.
    config = config_from_dict({**_tms_config_dict(), "task_config": {"task_name": "my_task"}})
    assert isinstance(config.task_config, MyTaskConfig) and config.task_config.width == 3
    with pytest.raises(
        SPDUserError, match=r"unknown config key 'task_config\.widht'; did you mean 'width'"
    ):
        config_from_dict(
            {**_tms_config_dict(), "task_config": {"task_name": "my_task", "widht": 4}}
        )
    with pytest.raises(ValueError, match="registered twice"):
        register_task(
            Task(
                name="my_task",
                config_class=MyTaskConfig,
                make_data=tms_make_data,
                summarize=lambda *_: {},
            )
        )
    # A block that does not select its task is a bug in the plug-in.
    with pytest.raises(ValueError, match=r"MyTaskConfig.task_name must be Literal\['other'\]"):
        register_task(
            Task(
                name="other",
                config_class=MyTaskConfig,
                make_data=tms_make_data,
                summarize=lambda *_: {},
            )
        )


def test_a_generic_run_continues_with_spd_run_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target_dir = _user_package(tmp_path, monkeypatch)
    config_path = _user_config(tmp_path, target_dir)
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    spd_run(["--config", str(config_path), "--local", "--no-progress", "--override", "figures=[]"])
    (run_dir,) = _run_dirs(tmp_path / "out")
    spd_run(["--resume", str(run_dir), "--local", "--no-progress", "--override", "steps=30"])
    assert (run_dir / "checkpoints" / "model_00000030.pth").is_file()
    assert yaml.safe_load((run_dir / "final_config.yaml").read_text())["steps"] == 30
