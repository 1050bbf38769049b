"""Bad input to `spd-run`: one clear line each, and nothing submitted, snapshotted or written."""

from pathlib import Path

import pytest
from launch_helpers import spd_run, spd_run_env
from slurm_cluster import SlurmCluster

from spd.errors import SPDUserError
from spd.experiments.registry import EXPERIMENT_REGISTRY
from spd.scripts.run import main

BAD_VALUE_SWEEP = "global:\n  lr: {values: [0.01, -1]}\n"


@pytest.mark.parametrize(
    ("args", "sweep_text", "message"),
    [
        (["--experiments", "tms_9-9"], None, "unknown experiment 'tms_9-9'; registered: tms_5-2"),
        (["--sweep", "{missing}", "--n-agents", "1"], None, "sweep file not found"),
        (
            ["--sweep", "{sweep}", "--n-agents", "1"],
            "global: {lr: {values: [1]\n",
            "invalid YAML in .* at line",
        ),
        (
            ["--sweep", "{sweep}", "--n-agents", "1"],
            "global: {lr: 0.1}\n",
            "'lr' must be a mapping with a 'values'",
        ),
        (
            ["--sweep", "{sweep}", "--n-agents", "1"],
            BAD_VALUE_SWEEP,
            "run 'tms_5-2-lr=-1' is invalid.*'lr'",
        ),
        (["--sweep", "{sweep}"], BAD_VALUE_SWEEP, "--n-agents is required with --sweep on SLURM"),
        (["--dp", "0"], None, "--dp must be at least 1"),
        (["--dp", "99"], None, r"--dp 99 asks for more GPUs than a node has \(8"),
        (["--dp", "99", "--local"], None, "--dp 99 needs 99 GPUs but this machine has"),
        (["--dp", "99", "--local", "--cpu"], None, "--dp 99 --cpu needs 99 processes"),
        (
            ["--dp", "3", "--cpu"],
            None,
            "micro-batch of 32 does not split evenly over 3 data-parallel ranks",
        ),
        (["--cpu", "--override", "device=cuda:0"], None, "--cpu conflicts with device=cuda:0"),
        (["--override", "lr"], None, "--override 'lr' must look like key.path=value"),
        (["--job-suffix", "a/b"], None, "--job-suffix 'a/b' may only use letters"),
        (["--analyze", "--local"], None, "--analyze submits a SLURM job after the array"),
    ],
)
def test_bad_input_fails_before_anything_happens(
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    sweep_text: str | None,
    message: str,
) -> None:
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("SPD_SLURM_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("SPD_MAX_GPUS_PER_NODE", raising=False)
    sweep = tmp_path / "sweep.yaml"
    if sweep_text is not None:
        sweep.write_text(sweep_text)
    args = [a.format(sweep=sweep, missing=tmp_path / "missing.yaml") for a in args]
    base = ["--experiments", "tms_5-2", "--override", "batch_size=32", "--no-create-snapshot"]
    with pytest.raises(SPDUserError, match=message) as err:
        main([*base, "--job-suffix", tmp_path.name, *args])
    assert "\n" not in str(err.value)
    # Nothing submitted (squeue -t all also lists finished jobs), nothing written.
    assert slurm_cluster.squeue("-t", "all", "-n", f"spd-{tmp_path.name}") == ""
    assert not (tmp_path / "out").exists() and not (tmp_path / "logs").exists()


def test_without_sbatch_it_says_how_to_run_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a real environment without SLURM's commands
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    with pytest.raises(
        SPDUserError, match=r"sbatch was not found.*add --local to run the 2 run\(s\) here"
    ):
        main(["--experiments", "tms_5-2,tms_5-2-id"])
    assert not (tmp_path / "out").exists()


def test_the_command_line_prints_one_line_and_exits_2(spd_repo: Path, tmp_path: Path) -> None:
    result = spd_run(spd_repo, spd_run_env(spd_repo, tmp_path), "--experiments", "nope", "--local")
    assert result.returncode == 2
    registered = ", ".join(EXPERIMENT_REGISTRY)
    assert result.stderr.strip().splitlines() == [
        f"spd: error: unknown experiment 'nope'; registered: {registered}"
    ]
    assert result.stdout == ""
