"""`spd-run` as a user meets it on one machine: choosing experiments, a fast --help, layer patterns
checked before anything is written, signals passed on to the run, and exit codes a wrapper can
act on. Every `spd-run` here is a real process, and so are the runs it starts."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spd.experiments.registry import EXPERIMENT_REGISTRY
from spd.launch.local_runs import launcher_exit_code
from spd.persistence.preemption import PREEMPTED_EXIT_CODE
from spd.persistence.run_dir import read_metrics
from tests.resumable_runs import override_args, script_env

SPD_RUN = [sys.executable, "-m", "spd.scripts.run"]


def spd_run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SPD_RUN, *args],
        env=script_env(tmp_path / "out"),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_without_experiments_it_lists_them_and_launches_nothing(tmp_path: Path) -> None:
    result = spd_run(["--local"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "choose what to run with --experiments" in lines[0]
    for name, spec in EXPERIMENT_REGISTRY.items():
        assert f"{name} (~{spec.expected_runtime} min" in lines[0]
    assert "gpt2 (~1200 min, needs the network)" in lines[0]
    assert not (tmp_path / "out").exists()


def test_list_shows_runtime_and_network_needs(tmp_path: Path) -> None:
    result = spd_run(["--list"], tmp_path)
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.strip().splitlines()
    assert "on one GPU or this project's 2-core CPU" in header  # which device the times are for
    rows = {line.split()[0]: line for line in lines}
    assert list(rows) == list(EXPERIMENT_REGISTRY)
    minutes = EXPERIMENT_REGISTRY["tms_5-2"].expected_runtime
    assert f"~{minutes} min" in rows["tms_5-2"] and "offline" in rows["tms_5-2"]
    assert "needs the network" in rows["ss_emb"] and "offline" in rows["lm_example_emb"]


def test_the_launcher_does_not_import_torch() -> None:
    """What keeps `spd-run --help` fast (its time is measured in docs/benchmarks.md)."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, spd.scripts.run; print(sorted(m for m in ('torch', 'pydantic') "
            "if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert loaded == "[]"


def test_a_layer_pattern_matching_nothing_fails_before_anything_is_written(
    tmp_path: Path,
) -> None:
    result = spd_run(
        [
            "--experiments",
            "tms_5-2",
            "--local",
            "--cpu",
            "--override",
            'target_module_patterns=["linear1", "mlp.*"]',
        ],
        tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "run 'tms_5-2' is invalid, nothing was launched" in lines[0]
    assert "'mlp.*' matches no module of TMSModel; its modules are: linear1" in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()  # no launch directory, no launch.json


def test_exit_codes_of_runs_map_to_one_launcher_exit_code() -> None:
    assert launcher_exit_code([0, 0]) == 0
    assert launcher_exit_code([0, PREEMPTED_EXIT_CODE]) == PREEMPTED_EXIT_CODE
    assert launcher_exit_code([PREEMPTED_EXIT_CODE, 2]) == 1
    assert launcher_exit_code([0, -9]) == 1
    assert launcher_exit_code([PREEMPTED_EXIT_CODE, None]) == 1  # a run never started


def children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def long_local_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """`spd-run --local` of a run far too long to finish, once it has logged a step:
    (spd-run's process, the run's process id, the launch's output root)."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to find the run's process")
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            *SPD_RUN,
            "--experiments",
            "tms_5-2",
            "--local",
            "--cpu",
            "--no-progress",
            *override_args(steps=1_000_000, save_freq=1_000_000),
        ],
        env=script_env(out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    child = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            metrics = list(out.glob("*/*/metrics.jsonl"))
            if metrics and read_metrics(metrics[0]):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the run logged no step")
        (child,) = children_of(process.pid)
        yield process, child, out
    finally:
        for pid in (process.pid, child):
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)
        process.communicate()


def test_sigterm_stops_the_run_and_exits_resumable(
    long_local_run: tuple[subprocess.Popen[str], int, Path],
) -> None:
    process, child, out = long_local_run
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == PREEMPTED_EXIT_CODE, stderr
    assert not alive(child)
    (run_dir,) = [p.parent for p in out.glob("*/*/final_config.yaml")]
    assert any(run_dir.glob("checkpoints/model_*.pth"))  # the run checkpointed before it stopped
    assert f"continue with: spd-run --resume {run_dir} --local --cpu" in stderr
    assert "failed" not in (stdout + stderr).lower()


def test_a_run_that_dies_makes_the_launch_fail(
    long_local_run: tuple[subprocess.Popen[str], int, Path],
) -> None:
    process, child, _ = long_local_run
    os.kill(child, signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "tms_5-2: FAILED" in stderr and "resumable" not in stderr
