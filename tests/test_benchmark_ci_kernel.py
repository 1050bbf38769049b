"""scripts/benchmark_ci_kernel.py: it records the CI-kernel calls of one real training step and
counts the rows the kernel evaluates as the kernel does. Its timings are recorded in
docs/benchmarks.md, never asserted."""

import subprocess
import sys

import torch

from tests.paths import REPO_ROOT
from tests.script_modules import load_script

SCRIPT = REPO_ROOT / "scripts" / "benchmark_ci_kernel.py"
benchmark_ci_kernel = load_script("benchmark_ci_kernel")


def test_one_tms_step_calls_the_kernel_once_per_layer_with_the_selected_rows() -> None:
    calls = benchmark_ci_kernel.recorded_calls("tms_5-2")
    # linear1 and linear2, C = 20 subcomponents, 16 hidden units each.
    assert len(calls) == 2
    for x, w1, b1, w2, b2 in calls:
        assert x.shape[-1] == 20 and w1.shape == b1.shape == w2.shape == (20, 16)
        assert b2.shape == (20,)
        # Row selection leaves fewer rows than the batch of 4096 (most TMS rows are all-zero).
        assert 0 < x.reshape(-1, 20).shape[0] < 4096
    assert benchmark_ci_kernel.time_calls(calls, repeats=1) > 0


def test_evaluated_rows_skip_all_zero_rows_only_when_they_are_many() -> None:
    x = torch.zeros(8, 3)
    x[0, 1] = 1.0
    x[5] = -2.0
    assert benchmark_ci_kernel.evaluated_rows(x) == 2
    x[1:5, 0] = 1.0  # 6 live rows of 8: the kernel's limit, 0.75, still skips
    assert benchmark_ci_kernel.evaluated_rows(x) == 6
    x[6, 2] = 1.0  # 7 of 8: above it, every row is evaluated
    assert benchmark_ci_kernel.evaluated_rows(x) == 8


def test_the_script_prints_a_row_per_experiment() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--experiments", "tms_5-2", "--repeats", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| tms_5-2 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    evaluated = int(cells[2].split("–")[0])
    # GELU evaluations: rows × C × hidden, summed over the two layers, in millions.
    assert float(cells[3].removesuffix(" M")) > 0
    assert 0 < evaluated <= 4096
