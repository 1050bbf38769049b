"""scripts/benchmark.py: its table and JSON for one experiment, and `--ref` measuring another
commit from a temporary git worktree. Only that the figures are sane is checked; the speed
itself is recorded in docs/benchmarks.md, never asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spd.config.schema import Config
from tests.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "benchmark.py"


def run_benchmark(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPD_OUT_DIR": str(tmp_path / "out")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def table_row(stdout: str, experiment: str) -> list[str]:
    """The cells of the markdown table row of `experiment`."""
    rows = [line for line in stdout.splitlines() if line.startswith(f"| {experiment} |")]
    assert len(rows) == 1, stdout
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def check_sane(figures: dict[str, Any]) -> None:
    assert figures["measured_steps"] >= 1
    assert figures["train_steps_per_s"] > 0
    # Evaluations only add time: the full-run rate is below the training rate.
    assert 0 < figures["steps_per_s_with_eval"] < figures["train_steps_per_s"]
    assert figures["fast_eval_s"] > 0 and figures["slow_eval_s"] > 0
    train_minutes = figures["full_steps"] / figures["train_steps_per_s"] / 60
    assert figures["full_run_minutes"] > train_minutes
    assert figures["peak_rss_gb"] > 0.05


def test_benchmark_measures_an_experiment(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run_benchmark(
        tmp_path, "--experiments", "tms_5-2", "--steps", "3", "--compile", "off", "--json", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    figures = report["results"]["tms_5-2"]["new"]
    check_sane(figures)
    assert figures["measured_steps"] == 2
    assert Path(figures["spd_file"]).resolve().is_relative_to(REPO_ROOT)
    # --compile reaches the config only where the code's Config has the field.
    assert figures["compile"] == ("off" if "compile" in Config.model_fields else None)
    assert "ref" not in report
    cells = table_row(proc.stdout, "tms_5-2")
    assert cells[1:3] == ["4096", "2"]
    assert float(cells[3]) == pytest.approx(figures["train_steps_per_s"], abs=0.051)
    assert float(cells[8]) == pytest.approx(figures["peak_rss_gb"], abs=0.006)


def test_benchmark_ref_measures_the_other_commit_from_a_worktree(tmp_path: Path) -> None:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    if head.returncode != 0:
        pytest.skip("the checkout under test is not a git repository")
    out = tmp_path / "bench.json"
    proc = run_benchmark(
        tmp_path, "--experiments", "tms_5-2", "--steps", "2", "--ref", "HEAD", "--json", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["ref"]["commit"] == head.stdout.strip()
    new, ref = report["results"]["tms_5-2"]["new"], report["results"]["tms_5-2"]["ref"]
    check_sane(new)
    check_sane(ref)
    # The ref's child imported spd from the temporary worktree, not from this checkout, and the
    # worktree is gone afterwards.
    ref_spd = Path(ref["spd_file"])
    assert not ref_spd.resolve().is_relative_to(REPO_ROOT)
    assert ref_spd.parent.name == "spd" and ref_spd.parents[2].name.startswith("spd-benchmark-ref-")
    assert not ref_spd.parents[1].exists()
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert str(ref_spd.parents[1]) not in worktrees.stdout
    cells = table_row(proc.stdout, "tms_5-2")
    # new, ref and their ratio for both rates, then the full run and the peak RSS of each.
    assert float(cells[3]) == pytest.approx(new["train_steps_per_s"], abs=0.051)
    assert float(cells[4]) == pytest.approx(ref["train_steps_per_s"], abs=0.051)
    assert float(cells[5].rstrip("×")) == pytest.approx(
        new["train_steps_per_s"] / ref["train_steps_per_s"], abs=0.0051
    )
    assert [float(c) for c in cells[11:13]] == pytest.approx(
        [new["peak_rss_gb"], ref["peak_rss_gb"]], abs=0.006
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--experiments", "tms_5-2", "--ref", "no-such-ref-xyz"], "--ref no-such-ref-xyz"),
        # SPD_OUT_DIR is an empty directory: the offline example is not built there.
        (["--experiments", "tms_5-2,lm_example_emb"], "--experiments tms_5-2"),
    ],
)
def test_benchmark_bad_input_is_one_line(tmp_path: Path, args: list[str], named: str) -> None:
    proc = run_benchmark(tmp_path, *args)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert named in proc.stderr
    assert proc.stdout == ""


def test_benchmark_override_reaches_the_measured_config(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run_benchmark(
        tmp_path,
        *["--experiments", "tms_5-2", "--steps", "2", "--json", str(out)],
        *["--override", "sampling=binomial"],
        *["--override", "losses.importance_minimality.coeff=0.25"],
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    expected = {"sampling": "binomial", "losses.importance_minimality.coeff": 0.25}
    assert report["overrides"] == expected
    # The values as the child's validated config holds them (the YAML file says continuous and
    # 3e-3).
    assert report["results"]["tms_5-2"]["new"]["overrides"] == expected
    assert 'overrides: sampling="binomial", losses.importance_minimality.coeff=0.25' in proc.stdout


@pytest.mark.parametrize(
    ("override", "named"),
    [("sampling=sometimes", "'sampling'"), ("no_such_field=1", "'no_such_field'")],
)
def test_benchmark_bad_override_is_one_line(tmp_path: Path, override: str, named: str) -> None:
    proc = run_benchmark(tmp_path, "--experiments", "tms_5-2", "--override", override)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert named in proc.stderr
    assert proc.stdout == ""
