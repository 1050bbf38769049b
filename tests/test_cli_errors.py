"""Bad input through the real command-line entry points, each in its own process.

Every failure must exit non-zero with exactly one line on stderr that names the problem, print no
traceback, and leave the output root as it was (an earlier run's directory untouched, no new one).
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.paths import REPO_ROOT, TMS_5_2_CONFIG, TMS_5_2_ID_CONFIG, TMS_DECOMPOSITION

SPD_RUN = Path(sys.executable).parent / "spd-run"
QUICK = [
    "--override",
    "steps=4",
    "--override",
    "batch_size=32",
    "--override",
    "figures=[]",
    "--no-progress",
]


@dataclass
class Cli:
    """Runs commands in `workdir` with this checkout importable and run output under `out`."""

    workdir: Path
    out: Path
    first_run: "subprocess.CompletedProcess[str] | None" = None

    def __call__(self, *args: str | Path) -> "subprocess.CompletedProcess[str]":
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "OMP_NUM_THREADS": "1",
            "SPD_OUT_DIR": str(self.out),
        }
        return subprocess.run(
            [str(a) for a in args],
            env=env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def snapshot(self) -> dict[str, bytes | None]:
        """Every directory and file under the output root, with file contents."""
        return {
            str(p.relative_to(self.out)): p.read_bytes() if p.is_file() else None
            for p in sorted(self.out.rglob("*"))
        }


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A CLI runner whose output root already holds one finished run (made by spd-run)."""
    workdir = tmp_path_factory.mktemp("cli")
    runner = Cli(workdir=workdir, out=workdir / "out")
    runner.first_run = runner(SPD_RUN, "--experiments", "tms_5-2", "--local", *QUICK)
    return runner


def _write(cli: Cli, name: str, text: str) -> Path:
    path = cli.workdir / name
    path.write_text(text)
    return path


def _edited_config(cli: Cli, name: str, **changes: object) -> Path:
    data = yaml.safe_load(TMS_5_2_CONFIG.read_text())
    data.update(changes)
    return _write(cli, name, yaml.safe_dump(data))


def _fails_with_one_line(cli: Cli, *args: str | Path) -> str:
    before = cli.snapshot()
    assert before, "the output root should hold the earlier run"
    result = cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert cli.snapshot() == before, "a failed run left the output root changed"
    return lines[0]


def test_spd_run_runs_an_experiment_and_prints_where_its_results_are(cli: Cli) -> None:
    result = cli.first_run
    assert result is not None and result.returncode == 0, result
    assert "spd-run: [1/1] tms_5-2" in result.stdout
    mentions = [line for line in result.stdout.splitlines() if "results in" in line]
    assert len(mentions) == 2, "printed at the start and at the end"
    run_dir = Path(mentions[-1].rsplit("results in ", 1)[1])
    # Runs of one launch share a directory named after the launch id.
    assert [p for p in cli.out.iterdir()] == [run_dir.parent]
    assert {"final_config.yaml", "metrics.jsonl", "checkpoints", "summary.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert "mmcs/linear1" in result.stdout and "ml2r/linear1" in result.stdout


def test_unknown_experiment_lists_the_registered_ones(cli: Cli) -> None:
    line = _fails_with_one_line(cli, SPD_RUN, "--experiments", "tms_5-2,tms_9-9", "--local")
    assert "unknown experiment 'tms_9-9'" in line
    for name in ("tms_5-2", "tms_5-2-id", "tms_40-10", "tms_40-10-id"):
        assert name in line


def test_missing_config_file(cli: Cli) -> None:
    line = _fails_with_one_line(cli, sys.executable, TMS_DECOMPOSITION, "absent.yaml")
    assert "config file not found: absent.yaml" in line


def test_invalid_yaml(cli: Cli) -> None:
    path = _write(cli, "broken.yaml", "C: 20\ntarget_module_patterns: [linear1\nsteps: 3\n")
    line = _fails_with_one_line(cli, sys.executable, TMS_DECOMPOSITION, path)
    assert f"invalid YAML in {path} at line" in line


def test_mistyped_nested_key_names_the_key_path(cli: Cli) -> None:
    path = _edited_config(
        cli, "typo.yaml", task_config={"task_name": "tms", "feature_probabilty": 0.05}
    )
    line = _fails_with_one_line(cli, sys.executable, TMS_DECOMPOSITION, path)
    assert str(path) in line
    assert "unknown config key 'task_config.feature_probabilty'" in line
    assert "'feature_probability'" in line


def test_unknown_key_in_an_override(cli: Cli) -> None:
    line = _fails_with_one_line(
        cli,
        sys.executable,
        TMS_DECOMPOSITION,
        TMS_5_2_CONFIG,
        "--override",
        "importance_minimality_coef=0.1",
    )
    assert "unknown config key 'importance_minimality_coef'" in line


def test_value_out_of_range(cli: Cli) -> None:
    line = _fails_with_one_line(
        cli,
        sys.executable,
        TMS_DECOMPOSITION,
        TMS_5_2_CONFIG,
        "--override",
        "task_config.feature_probability=1.5",
    )
    assert "invalid value for 'task_config.feature_probability' (got 1.5)" in line


def test_malformed_override(cli: Cli) -> None:
    line = _fails_with_one_line(
        cli, sys.executable, TMS_DECOMPOSITION, TMS_5_2_CONFIG, "--override", "steps"
    )
    assert "--override 'steps' must look like key.path=value" in line


def test_pattern_matching_no_module_lists_the_names(cli: Cli) -> None:
    line = _fails_with_one_line(
        cli,
        sys.executable,
        TMS_DECOMPOSITION,
        TMS_5_2_CONFIG,
        "--override",
        "target_module_patterns=[linear1, mlp_in]",
    )
    assert "'mlp_in' matches no module of TMSModel" in line
    assert "linear1, hidden_layers, linear2" in line


def test_module_type_that_cannot_be_decomposed(cli: Cli) -> None:
    line = _fails_with_one_line(
        cli,
        sys.executable,
        TMS_DECOMPOSITION,
        TMS_5_2_ID_CONFIG,
        "--override",
        "target_module_patterns=[hidden_layers]",
    )
    assert "'hidden_layers', a ModuleList, which cannot be decomposed" in line


def test_missing_target_checkpoint_says_how_to_create_it(cli: Cli) -> None:
    line = _fails_with_one_line(
        cli,
        sys.executable,
        TMS_DECOMPOSITION,
        TMS_5_2_CONFIG,
        "--override",
        "pretrained_model_path=targets/none",
    )
    assert "target checkpoint not found: targets/none" in line
    assert "python spd/experiments/tms/train_tms.py --experiment" in line


def test_spd_run_rejects_an_invalid_run_before_launching_anything(cli: Cli) -> None:
    before = cli.snapshot()
    result = cli(SPD_RUN, "--experiments", "tms_5-2", "--local", "--override", "C=0")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    # Every run's config is validated before anything starts: one line naming run and problem.
    assert result.stderr.strip().splitlines() == [
        "spd: error: run 'tms_5-2' is invalid, nothing was launched: "
        f"{REPO_ROOT / 'spd/experiments/tms/tms_5_2_config.yaml'}: invalid value for 'C' (got 0): "
        "Input should be greater than 0",
    ]
    assert cli.snapshot() == before
