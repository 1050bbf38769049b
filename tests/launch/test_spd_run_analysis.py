"""`spd-run --analyze` on a real SLURM cluster: the analysis job waits for the array, then writes
each run's analysis and browser page."""

import json
import re
from pathlib import Path

import pytest
from launch_helpers import spd_run, spd_run_env
from slurm_cluster import SlurmCluster

TINY = [
    "--override", "steps=4",
    "--override", "batch_size=32",
    "--override", "eval_batch_size=32",
    "--override", "eval_freq=4",
    "--override", "figures=[]",
]  # fmt: skip


@pytest.mark.slow
def test_analysis_job_runs_after_the_array(
    slurm_cluster: SlurmCluster, spd_repo: Path, tmp_path: Path
) -> None:
    env = spd_run_env(spd_repo, tmp_path, slurm_cluster)
    args = ["--experiments", "tms_5-2", "--cpu", "--job-suffix", "an", "--analyze"]
    result = spd_run(spd_repo, env, *args, "--analyze-tokens", "3000", *TINY)
    assert result.returncode == 0, result.stderr
    array = re.search(r"submitted job array (\d+)", result.stdout)
    analysis = re.search(r"analysis job (\d+) runs spd-analyze", result.stdout)
    assert array and analysis, result.stdout
    # Held by its dependency while the array has not finished.
    dependency = slurm_cluster.squeue("-j", analysis.group(1), "-o", "%E").splitlines()
    assert dependency[-1].startswith(f"afterok:{array.group(1)}"), dependency
    slurm_cluster.wait_until_done(array.group(1), timeout=300)
    slurm_cluster.wait_until_done(analysis.group(1), timeout=300)
    log = (tmp_path / "slurm_logs" / f"slurm-{analysis.group(1)}.out").read_text()
    (launch_dir,) = (tmp_path / "out").iterdir()
    (run_dir,) = [p for p in launch_dir.iterdir() if (p / "final_config.yaml").is_file()]
    meta = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert meta["n_tokens"] >= 3000, log
    assert meta["kind"] == "toy" and meta["device"] == "cpu"
    assert (run_dir / "analysis" / "browser.html").is_file(), log
    manifest = json.loads((launch_dir / "launch.json").read_text())
    assert manifest["slurm"]["analysis_job_id"] == analysis.group(1)
