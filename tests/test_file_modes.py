"""File modes: everything a run, a resume and `spd-report` write honours the user's umask.

On a shared cluster colleagues read each other's reports and load each other's checkpoints, so
with umask 0022 every file must come out 0644 and every directory 0755 (not owner-only).
"""

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from spd.config.loading import load_config
from spd.experiments.run_decomposition import run_decomposition
from spd.experiments.tms.task import make_data, summarize
from spd.persistence.run_dir import CONFIG_FILE, read_metrics
from spd.scripts.report import main as report_main
from tests.tiny_runs import tiny_tms_config

UMASK = 0o022


@pytest.fixture
def shared_umask() -> Iterator[None]:
    """umask 0022 for this test and the processes it starts (restored afterwards)."""
    previous = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def modes_under(root: Path) -> dict[str, str]:
    """Every file and directory below `root` (itself included) with its permission bits in octal."""
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in sorted(root.rglob("*")):
        found[path.relative_to(root).as_posix()] = oct(stat.S_IMODE(path.stat().st_mode))
    return found


@pytest.mark.usefixtures("shared_umask")
def test_run_resume_and_report_write_files_with_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "out"
    run_dir = out / "runs" / "tms"
    # A 20-step run with checkpoints and figures, a resume to 30 steps, then a summary page:
    # the same code paths as the scripts, `spd-run --resume` and `spd-report`, in this process.
    run_decomposition(tiny_tms_config(), "tms", make_data, summarize, False, run_dir_path=run_dir)
    resumed_config = load_config(run_dir / CONFIG_FILE, {"steps": 30})
    resumed = run_decomposition(resumed_config, "tms", make_data, summarize, False, resume=run_dir)
    assert resumed.result.stopped_at is None and read_metrics(run_dir)[-1]["step"] == 30
    report_main([str(out), "--out", str(out / "summary.html")])

    modes = modes_under(out)
    # Everything the three commands write is there (so the mode check below covers it).
    for name in (
        "summary.html",
        "runs/tms/final_config.yaml",
        "runs/tms/metrics.jsonl",
        "runs/tms/summary.json",
        "runs/tms/report.html",
        "runs/tms/checkpoints/model_00000030.pth",
    ):
        assert name in modes, sorted(modes)
    assert any(name.startswith("runs/tms/figures/") for name in modes)
    wrong = {
        name: mode
        for name, mode in modes.items()
        if mode != oct(0o755 if (out / name).is_dir() else 0o644)
    }
    assert wrong == {}
