"""The summary page of a launch: built from its manifest and the run directories its runs wrote,
rendered by the one HTML generator (spd.tracking.report), and written by default for a sweep."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spd.config.loading import load_config
from spd.errors import SPDUserError
from spd.experiments.registry import get_experiment
from spd.launch.report import build_report, write_manifest
from spd.persistence.run_dir import RunDirectory
from spd.tracking.report import write_run_report
from tests.resumable_runs import override_args, script_env
from tests.test_report import parse


def test_report_compares_the_runs_with_their_swept_values(tmp_path: Path) -> None:
    launch_dir = tmp_path / "L1"
    runs = []
    for name, value, lr in (("tms_5-2-lr=0.01", 0.25, 0.01), ("tms_5-2-lr=0.02", 0.75, 0.02)):
        config = load_config(
            get_experiment("tms_5-2").config_path,
            {"run_name": name, "out_dir": str(launch_dir), "lr": lr},
        )
        run_dir = RunDirectory.create(launch_dir, name)
        run_dir.write_config(config)
        run_dir.log_metrics(0, {"eval/ci_l0/total": 9.0})
        run_dir.log_metrics(10, {"eval/ci_l0/total": value, "final/mmcs/linear1": 1.0})
        write_run_report(run_dir.path)
        runs.append({"name": name, "out_dir": str(launch_dir), "swept": {"lr": lr}})
    runs.append({"name": "never-ran", "out_dir": str(launch_dir), "swept": {"lr": 0.03}})
    write_manifest(launch_dir, {"launch_id": "L1", "report_title": None, "runs": runs})

    page = parse(build_report(launch_dir, title="Nightly <TMS>"))
    assert page.sections == ["runs", "curves", "metrics", "config", "figures"]
    overview = [
        row for row in page.rows if row and ("tms_5-2-lr" in row[0] or row[0] == "never-ran")
    ]
    # One row per run: the swept value as a column, last step, a link to the run's report.
    assert [row[1:4] for row in overview[:2]] == [
        ["0.01", "10", "report"],
        ["0.02", "10", "report"],
    ]
    assert overview[2][0] == "never-ran" and "missing" in overview[2][-1]
    links = [launch_dir / link for link in page.links if not link.startswith("#")]
    assert [link.resolve() for link in links] == sorted(
        p.resolve() for p in launch_dir.glob("*/report.html")
    )
    metrics = {row[0]: row[1:] for row in page.rows if row and row[0] == "eval/ci_l0/total"}
    assert metrics == {"eval/ci_l0/total": ["0.25", "0.75"]}  # the last value, side by side
    assert "<h1>Nightly &lt;TMS&gt;</h1>" in (launch_dir / "report.html").read_text()


def test_report_needs_a_launch_directory(tmp_path: Path) -> None:
    with pytest.raises(SPDUserError, match=r"has no launch\.json"):
        build_report(tmp_path)


@pytest.mark.slow  # two real runs, each its own process (about 40 s on 2 busy cores)
def test_a_local_sweep_gets_a_summary_page_by_default(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("global:\n  seed:\n    values: [0, 1]\n")
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spd.scripts.run",
            "--experiments",
            "tms_5-2",
            "--sweep",
            str(sweep),
            "--local",
            "--cpu",
            "--log-format",
            "terse",
            *override_args(
                steps=4,
                train_log_freq=2,
                eval_freq=4,
                slow_eval_freq=4,
                figures=[{"name": "uv_matrices"}],
            ),
        ],
        env=script_env(out),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (launch_dir,) = out.iterdir()
    manifest = json.loads((launch_dir / "launch.json").read_text())
    assert [run["swept"] for run in manifest["runs"]] == [{"seed": 0}, {"seed": 1}]
    page = parse(launch_dir / "report.html")
    assert "seed" in page.headers
    assert len([link for link in page.links if link.endswith("report.html")]) == 2
    assert [alt for alt, _ in page.images] == ["uv_matrices", "uv_matrices"]
