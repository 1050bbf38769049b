"""The summary page of a launch, built from its manifest and the run directories its runs wrote."""

from pathlib import Path

import pytest

from spd.config.loading import load_config
from spd.errors import SPDUserError
from spd.experiments.registry import get_experiment
from spd.launch.report import build_report, write_manifest
from spd.persistence.run_dir import RunDirectory


def test_report_lists_every_run_with_its_final_numbers(tmp_path: Path) -> None:
    launch_dir = tmp_path / "L1"
    runs = []
    for name, value in (("tms_5-2", 0.25), ("tms_5-2-id", 0.75)):
        config = load_config(
            get_experiment(name).config_path, {"run_name": name, "out_dir": str(launch_dir)}
        )
        run_dir = RunDirectory.create(launch_dir, name)
        run_dir.write_config(config)
        run_dir.log_metrics(0, {"eval/ci_l0/total": 9.0})
        run_dir.log_metrics(10, {"eval/ci_l0/total": value, "final/mmcs/linear1": 1.0})
        runs.append({"name": name, "out_dir": str(launch_dir)})
    runs.append({"name": "never-ran", "out_dir": str(launch_dir)})
    write_manifest(launch_dir, {"launch_id": "L1", "report_title": None, "runs": runs})

    page = build_report(launch_dir, title="Nightly <TMS>").read_text()
    assert "<h1>Nightly &lt;TMS&gt;</h1>" in page
    rows = page.split("<tr>")[2:]
    assert ["tms_5-2</td>" in rows[0], "tms_5-2-id</td>" in rows[1], "never-ran" in rows[2]] == [
        True
    ] * 3
    assert "<td>0.25</td>" in rows[0] and "<td>0.75</td>" in rows[1]
    assert "<td>9</td>" not in page  # the last logged value, not the first
    assert "<td>missing</td>" in rows[2]


def test_report_needs_a_launch_directory(tmp_path: Path) -> None:
    with pytest.raises(SPDUserError, match=r"has no launch\.json"):
        build_report(tmp_path)
