"""Full-length TMS decompositions against the paper's results (slow: minutes to hours on a CPU)."""

import importlib.util
import json
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "reproduce_tms.py"
_spec = importlib.util.spec_from_file_location("reproduce_tms", _SCRIPT)
assert _spec is not None and _spec.loader is not None
reproduce_tms = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce_tms)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["tms_5-2", "tms_5-2-id", "tms_40-10", "tms_40-10-id"])
def test_full_length_run_recovers_ground_truth(experiment: str, tmp_path: Path) -> None:
    run_dir = reproduce_tms.run_one(experiment, seed=0, out_root=tmp_path, extra=[])
    ok, notes = reproduce_tms.verdict(
        experiment, json.loads((run_dir / "summary.json").read_text())
    )
    assert ok, notes
