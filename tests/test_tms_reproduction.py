"""Full-length TMS decompositions against the paper's results (slow: minutes to hours on a CPU)."""

import json
from pathlib import Path

import pytest

from tests.script_modules import load_script

reproduce_tms = load_script("reproduce_tms")


# With the parity defaults of issue 17, tms_40-10-id's seed-0 run ended at ML2R 1.0439, above the
# 1.04 bound (docs/results.md); every other criterion held. Kept as a test so a fix shows as XPASS.
ML2R_ABOVE_BOUND = pytest.mark.xfail(
    reason="ML2R 1.0439 > 1.04 with the parity defaults (docs/results.md)", strict=False
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment",
    [
        "tms_5-2",
        "tms_5-2-id",
        "tms_40-10",
        pytest.param("tms_40-10-id", marks=ML2R_ABOVE_BOUND),
    ],
)
def test_full_length_run_recovers_ground_truth(experiment: str, tmp_path: Path) -> None:
    run_dir = reproduce_tms.run_one(experiment, seed=0, out_root=tmp_path, extra=[])
    ok, notes = reproduce_tms.verdict(
        experiment, json.loads((run_dir / "summary.json").read_text())
    )
    assert ok, notes


def _finished_run(run_dir: Path, task_name: str, target: str, seed: int) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"mmcs/linear1": 1.0}))
    config = {"seed": seed, "task_config": {"task_name": task_name}}
    (run_dir / "final_config.yaml").write_text(
        json.dumps({**config, "pretrained_model_path": f"spd/experiments/tms/targets/{target}"})
    )


def test_collect_finds_tms_runs_at_any_depth(tmp_path: Path) -> None:
    # reproduce_tms.py writes <root>/<run>; spd-run writes <root>/<launch>/<run>.
    _finished_run(tmp_path / "20261130-000000-tms_5-2-seed3", "tms", "tms_5-2", 3)
    _finished_run(tmp_path / "launch" / "20261130-000001-tms_40-10-id", "tms", "tms_40-10-id", 0)
    _finished_run(tmp_path / "launch" / "20261130-000002-resid_mlp1", "resid_mlp", "x", 0)
    (tmp_path / "launch" / "unfinished").mkdir()
    found = {(e, s) for e, s, _ in reproduce_tms.collect(tmp_path)}
    assert found == {("tms_5-2", 3), ("tms_40-10-id", 0)}
