"""`spd-run` submits a real job array to a real (single-node) SLURM cluster."""

import re
from datetime import datetime
from pathlib import Path

import yaml
from launch_helpers import git, spd_run, spd_run_env
from slurm_cluster import SlurmCluster

from spd.persistence.run_dir import read_metrics

TINY = [
    "--override", "steps=4",
    "--override", "batch_size=32",
    "--override", "eval_batch_size=32",
    "--override", "train_log_freq=1",
    "--override", "eval_freq=2",
    "--override", "figures=[]",
]  # fmt: skip
STAMP = re.compile(r"task (\d+) .*started on \S+ at (\S+)")
END = re.compile(r"task (\d+) ended with status (\d+) at (\S+)")


def task_times(log: Path) -> tuple[datetime, datetime, int]:
    text = log.read_text()
    started, ended = STAMP.search(text), END.search(text)
    assert started and ended, text
    return (
        datetime.fromisoformat(started.group(2)),
        datetime.fromisoformat(ended.group(3)),
        int(ended.group(2)),
    )


def test_sweep_runs_as_one_array_from_a_snapshot(
    slurm_cluster: SlurmCluster, spd_repo: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("global:\n  seed: {values: [0, 1]}\n")
    decomp_script = spd_repo / "spd/experiments/tms/tms_decomposition.py"
    committed_script = decomp_script.read_text()
    # Uncommitted work that the snapshot must carry: a new file and an edited one.
    (spd_repo / "NOTES.md").write_text("work in progress\n")
    decomp_script.write_text(committed_script + "\n# uncommitted edit\n")
    before = {
        "head": git(spd_repo, "rev-parse", "HEAD"),
        "branch": git(spd_repo, "symbolic-ref", "HEAD"),
        "status": git(spd_repo, "status", "--porcelain"),
        "index": git(spd_repo, "ls-files", "--stage"),
    }
    env = spd_run_env(spd_repo, tmp_path, slurm_cluster)
    args = [
        "--experiments", "tms_5-2", "--cpu", "--sweep", str(sweep), "--n-agents", "1",
        "--job-suffix", "t1", "--create-report", "--report-title", "Seed sweep",
    ]  # fmt: skip
    result = spd_run(spd_repo, env, *args, *TINY)
    assert result.returncode == 0, result.stderr
    job_id = re.search(
        r"submitted job array (\d+) \(2 task\(s\), at most 1 at a time\)", result.stdout
    )
    assert job_id, result.stdout
    job_id = job_id.group(1)
    assert f"squeue -j {job_id}" in result.stdout and f"scancel {job_id}" in result.stdout
    # Break the working tree: the tasks must still run the snapshot's code.
    decomp_script.write_text("raise SystemExit('the working tree was used')\n")
    assert {
        "head": git(spd_repo, "rev-parse", "HEAD"),
        "branch": git(spd_repo, "symbolic-ref", "HEAD"),
        "status": git(spd_repo, "status", "--porcelain"),
        "index": git(spd_repo, "ls-files", "--stage"),
    } == before

    assert set(slurm_cluster.squeue("-t", "all", "-j", job_id, "-o", "%j").split()) == {"spd-t1"}
    report_job = re.search(r"report job (\d+) writes", result.stdout)
    assert report_job, result.stdout
    slurm_cluster.wait_until_done(job_id, timeout=300)
    slurm_cluster.wait_until_done(report_job.group(1), timeout=120)

    # Logs: one per task, each task ran to success; with %1 they never overlapped.
    logs = sorted((tmp_path / "slurm_logs").glob(f"slurm-{job_id}_*.out"))
    assert [log.name for log in logs] == [f"slurm-{job_id}_0.out", f"slurm-{job_id}_1.out"]
    (start0, end0, status0), (start1, end1, status1) = (task_times(log) for log in logs)
    assert status0 == 0 and status1 == 0, [log.read_text()[-2000:] for log in logs]
    assert end0 <= start1 or end1 <= start0

    # Run directories: one per combination, under <out>/<launch id>/, named after the values.
    (launch_dir,) = (tmp_path / "out").iterdir()
    run_dirs = sorted(p for p in launch_dir.iterdir() if (p / "final_config.yaml").exists())
    assert [p.name.split("-", 2)[2] for p in run_dirs] == ["tms_5-2-seed=0", "tms_5-2-seed=1"]
    for seed, run_dir in enumerate(run_dirs):
        config = yaml.safe_load((run_dir / "final_config.yaml").read_text())
        assert (config["seed"], config["steps"], config["device"]) == (seed, 4, "cpu")
        assert read_metrics(run_dir)[-1]["step"] == 4
        assert (run_dir / "checkpoints/model_00000004.pth").is_file()
        assert (run_dir / "summary.json").is_file()
    assert (launch_dir / "slurm_array.sh").read_text().count("tms_decomposition.py") == 2
    # The report job waited for the whole array: both runs' final numbers are on the page.
    report = (launch_dir / "report.html").read_text()
    assert "<h1>Seed sweep</h1>" in report and "final/mmcs/linear1" in report
    assert all(f"<td>{run_dir.name}</td>" in report for run_dir in run_dirs)
    assert "<th>seed</th>" in report and "missing" not in report

    # The snapshot branch holds the uncommitted work; the tasks ran from its checkout.
    branch = f"spd-snapshot/{launch_dir.name}"
    assert git(spd_repo, "branch", "--list", "spd-snapshot/*").split() == [branch]
    assert git(spd_repo, "show", f"{branch}:NOTES.md") == "work in progress"
    assert git(spd_repo, "show", f"{branch}:spd/experiments/tms/tms_decomposition.py").endswith(
        "# uncommitted edit"
    )
    checkout = tmp_path / "snapshots" / launch_dir.name
    assert (checkout / "NOTES.md").is_file()
    assert f"cd {checkout}" in (launch_dir / "slurm_array.sh").read_text()
