"""Sweep files on their own: parsing, precedence, grid expansion, run names, planned configs."""

from pathlib import Path

import pytest
import yaml

from spd.errors import SPDUserError
from spd.experiments.registry import EXPERIMENT_REGISTRY
from spd.launch.commands import run_command, yaml_value
from spd.launch.plan import LaunchSettings, plan_runs
from spd.launch.sweeps import expand_grid, load_sweep, run_label, unique_names

KNOWN = list(EXPERIMENT_REGISTRY)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


SWEEP = """
global:
  seed: {values: [0, 1]}
  lr: {values: [0.001]}
  task_config:
    feature_probability: {values: [0.05, 0.1]}
tms_5-2:
  lr: {values: [0.01, 0.02]}
  task_config: {values: [{task_name: tms, feature_probability: 0.2}]}
"""


def test_experiment_block_overrides_global_at_any_depth(tmp_path: Path) -> None:
    sweep = load_sweep(write(tmp_path, SWEEP), KNOWN)
    own = sweep.params_for("tms_5-2")
    assert own == {
        "seed": [0, 1],
        "lr": [0.01, 0.02],
        # The experiment's `task_config` replaces everything global sweeps below that path.
        "task_config": [{"task_name": "tms", "feature_probability": 0.2}],
    }
    assert sweep.params_for("tms_5-2-id") == {
        "seed": [0, 1],
        "lr": [0.001],
        "task_config.feature_probability": [0.05, 0.1],
    }


def test_nested_experiment_key_keeps_sibling_globals(tmp_path: Path) -> None:
    text = """
global:
  task_config:
    feature_probability: {values: [0.05]}
    data_generation_type: {values: [exactly_one_active]}
tms_5-2:
  task_config:
    feature_probability: {values: [0.3]}
"""
    params = load_sweep(write(tmp_path, text), KNOWN).params_for("tms_5-2")
    assert params == {
        "task_config.data_generation_type": ["exactly_one_active"],
        "task_config.feature_probability": [0.3],
    }


def test_grid_has_every_combination_parents_first() -> None:
    grid = expand_grid({"a.b": [1, 2], "seed": [0, 1, 2], "a": [{"b": 0}]})
    assert len(grid) == 6
    assert {(g["a.b"], g["seed"]) for g in grid} == {(b, s) for b in (1, 2) for s in (0, 1, 2)}
    # apply_overrides sets keys in order: a whole block must come before a key inside it.
    assert all(list(g).index("a") < list(g).index("a.b") for g in grid)


def test_run_labels_name_the_overridden_values() -> None:
    assert run_label({"seed": 1, "lr": 0.001}) == "seed=1-lr=0.001"
    assert (
        run_label({"task_config.feature_probability": 1e-05})
        == "task_config.feature_probability=1e-05"
    )
    assert run_label({"ci_fn_hidden_dims": [16, 32]}) == "ci_fn_hidden_dims=16,32"
    assert run_label({"out_dir": "a/b c"}) == "out_dir=a_b_c"
    assert run_label({}) == ""
    assert unique_names(["a", "a", "a-2"]) == ["a", "a-2", "a-2-2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("global: {lr: 0.1}\n", "'lr' must be a mapping with a 'values' list"),
        ("global: {lr: {values: []}}\n", "exactly one key 'values' holding a non-empty list"),
        ("global: {lr: {values: [1], other: 2}}\n", "exactly one key 'values'"),
        ("global: [1, 2]\n", "block 'global': must be a mapping"),
        ("tms_5_2: {lr: {values: [1]}}\n", "unknown block 'tms_5_2'"),
        ("global: {lr: {values: [1]\n", "invalid YAML"),
        ("- a\n- b\n", "must contain a YAML mapping"),
    ],
)
def test_malformed_sweep_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SPDUserError, match=message):
        load_sweep(write(tmp_path, text), KNOWN)


def test_missing_sweep_file(tmp_path: Path) -> None:
    with pytest.raises(SPDUserError, match=r"sweep file not found.*sweep_params\.yaml\.example"):
        load_sweep(tmp_path / "nope.yaml", KNOWN)


def test_planned_runs_apply_overrides_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    sweep = load_sweep(
        write(tmp_path, "global:\n  seed: {values: [3, 4]}\n  lr: {values: [0.002]}\n"), KNOWN
    )
    settings = LaunchSettings(launch_id="L1", cpu=True)
    runs = plan_runs(["tms_5-2"], {"lr": 0.5, "steps": 7, "device": "cpu"}, sweep, settings)
    assert [r.name for r in runs] == ["tms_5-2-seed=3-lr=0.002", "tms_5-2-seed=4-lr=0.002"]
    first = runs[0]
    # config file < --override < sweep < launcher
    assert first.config.steps == 7
    assert first.config.lr == 0.002
    assert first.config.seed == 3
    assert first.config.run_name == first.name
    assert first.config.device == "cpu"
    assert first.out_dir == (tmp_path / "out" / "L1").resolve()
    assert list(first.overrides) == ["lr", "steps", "device", "seed", "run_name", "out_dir"]


def test_a_bad_sweep_value_names_its_run(tmp_path: Path) -> None:
    sweep = load_sweep(write(tmp_path, "global:\n  lr: {values: [0.01, -1]}\n"), KNOWN)
    with pytest.raises(SPDUserError, match=r"run 'tms_5-2-lr=-1' is invalid.*'lr'") as err:
        plan_runs(["tms_5-2"], {}, sweep, LaunchSettings(launch_id="L"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "value",
    [1e-05, 0.001, 3, True, None, "cpu", "1e-3", [16, 32], {"a": 1, "b": [1.5]}, [["l1", "l2"]]],
)
def test_override_values_round_trip(value: object) -> None:
    assert yaml.safe_load(yaml_value(value)) == value
    assert "\n" not in yaml_value(value)


def test_run_command_points_into_the_given_tree(tmp_path: Path) -> None:
    from spd.loading.run_paths import REPO_ROOT

    (run,) = plan_runs(["tms_5-2"], {}, None, LaunchSettings(launch_id="L"))
    cmd = run_command(run, REPO_ROOT, tmp_path / "tree", dp=2, no_progress=True)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5] == str(tmp_path / "tree/spd/experiments/tms/tms_decomposition.py")
    assert cmd[6] == str(tmp_path / "tree/spd/experiments/tms/tms_5_2_config.yaml")
    assert "run_name=tms_5-2" in cmd and cmd[-1] == "--no-progress"
    single = run_command(run, REPO_ROOT, tmp_path / "tree", dp=1, no_progress=False)
    assert "torch.distributed.run" not in single and "--no-progress" not in single


def test_the_shipped_example_is_a_valid_sweep() -> None:
    from spd.launch.sweeps import DEFAULT_SWEEP_FILE

    example = DEFAULT_SWEEP_FILE.with_name("sweep_params.yaml.example")
    sweep = load_sweep(example, KNOWN)
    runs = plan_runs(["tms_5-2", "tms_40-10"], {}, sweep, LaunchSettings(launch_id="L"))
    assert len({r.name for r in runs}) == len(runs) == 12
