"""Every SLURM job of a launch is a `JobSpec` written by one renderer: the array, the report job and
the `--analyze` job share their directives and preamble, and a sequence job runs every command."""

import subprocess
from pathlib import Path

import pytest

from spd.launch.analysis_job import analysis_job
from spd.launch.options import LaunchOptions
from spd.launch.plan import LaunchSettings, plan_runs
from spd.launch.slurm import LOG_DIR_ENV, Dependency, JobSpec, directives, job_script
from spd.launch.submission import array_job, report_job

PREEMPTION_FLAGS = {"--open-mode", "--requeue", "--signal"}


def launch_options(**changes: object) -> LaunchOptions:
    values: dict[str, object] = {
        "experiments": "tms_5-2", "config": None, "time_minutes": None, "sweep": None,
        "n_agents": None, "cpu": False, "dp": 1, "project": "spd", "local": False,
        "job_suffix": "nightly", "create_report": None, "report_title": "Seeds",
        "log_format": "default", "create_snapshot": None, "use_wandb": False, "override": [],
        "no_progress": False, "dry_run": False, "resume": None, "analyze": True, "analyze_tokens": 1000,
    }  # fmt: skip
    values.update(changes)
    return LaunchOptions(**values)  # pyright: ignore[reportArgumentType]


def flags(job: JobSpec) -> dict[str, str]:
    """`#SBATCH --flag=value` lines as {flag: value} (value "" for a bare flag)."""
    found: dict[str, str] = {}
    for line in directives(job):
        flag, _, value = line.removeprefix("#SBATCH ").partition("=")
        found[flag] = value
    return found


def preamble(script: str) -> list[str]:
    """The lines between the directives and the job's own commands."""
    lines = script.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH")) + 1
    end = lines.index("unset SPD_OUT_DIR") + 1
    return lines[start:end]


@pytest.fixture
def jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[JobSpec, JobSpec, JobSpec]:
    """The array, analysis and report jobs spd-run builds for one GPU run of tms_5-2."""
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv(LOG_DIR_ENV, str(tmp_path / "logs"))
    options = launch_options()
    runs = plan_runs(["tms_5-2"], {}, None, LaunchSettings(launch_id="launch-1"))
    tree = tmp_path / "snapshot"
    array = array_job(options, runs, [["echo", "run"]], tree)
    analysis = analysis_job("41", options.job_name, [tmp_path / "run"], 1000, tree, options.cpu)
    report = report_job("41", options, tmp_path / "out", tree)
    return array, analysis, report


def test_array_and_analysis_jobs_share_their_directives(
    jobs: tuple[JobSpec, JobSpec, JobSpec], tmp_path: Path
) -> None:
    array, analysis, _ = jobs
    array_flags, analysis_flags = flags(array), flags(analysis)
    # The same directives, except what only an array has and what only a dependent job has.
    assert set(array_flags) - {"--array"} - PREEMPTION_FLAGS == set(analysis_flags) - {
        "--dependency"
    }
    for flag in ("--ntasks", "--cpus-per-task", "--gres"):
        assert array_flags[flag] == analysis_flags[flag], flag
    assert array_flags["--output"] == f"{tmp_path}/logs/slurm-%A_%a.out"
    assert analysis_flags["--output"] == f"{tmp_path}/logs/slurm-%j.out"
    assert analysis_flags["--job-name"] == "spd-nightly-analysis"
    assert analysis_flags["--dependency"] == "afterok:41"
    assert preamble(job_script(array)) == preamble(job_script(analysis))
    assert f"cd {tmp_path}/snapshot" in preamble(job_script(analysis))


def test_the_report_job_waits_for_any_end_and_writes_the_page(
    jobs: tuple[JobSpec, JobSpec, JobSpec], tmp_path: Path
) -> None:
    array, _, report = jobs
    report_flags = flags(report)
    assert report_flags["--dependency"] == "afterany:41"
    assert report_flags["--job-name"] == "spd-nightly-report"
    assert "--gres" not in report_flags and "--array" not in report_flags
    assert preamble(job_script(report)) == preamble(job_script(array))
    assert f"-m spd.launch.report {tmp_path}/out --title Seeds" in job_script(report)


def test_a_cpu_analysis_job_asks_for_no_gpu(tmp_path: Path) -> None:
    job = analysis_job("7", "spd", [tmp_path / "a", tmp_path / "b"], 50, tmp_path, cpu=True)
    assert "--gres" not in flags(job)
    assert [command[-6:] for command in job.commands] == [
        ["--tokens", "50", "--device", "cpu", "--no-progress", "--browse"]
    ] * 2


def test_a_sequence_job_runs_every_command_and_fails_if_one_failed(tmp_path: Path) -> None:
    job = JobSpec(
        name="seq",
        commands=[["sh", "-c", "exit 3"], ["sh", "-c", 'echo "after $PYTHONPATH $(pwd)"']],
        time_minutes=5,
        log_dir=tmp_path / "logs",
        source_tree=tmp_path,
        after=Dependency("afterany", "1"),
    )
    script = tmp_path / "seq.sh"
    script.write_text(job_script(job))
    result = subprocess.run(
        ["bash", str(script)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stdout.strip() == f"after {tmp_path} {tmp_path}"


def test_array_only_settings_are_refused_on_a_plain_job(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="array jobs"):
        JobSpec("x", [["true"]], 1, tmp_path, tmp_path, preemptible=True)
