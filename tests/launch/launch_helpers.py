"""Helpers of the launcher tests: running `spd-run` from a throw-away copy of the sources."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from slurm_cluster import SlurmCluster

from spd.loading.run_paths import REPO_ROOT


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def make_source_repo(repo: Path) -> Path:
    """A git repo holding a copy of the `spd` sources, so snapshots never touch the real repo."""
    shutil.copytree(
        REPO_ROOT / "spd", repo / "spd", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    (repo / ".gitignore").write_text("__pycache__/\n*.pyc\n")
    git(repo.parent, "init", "-q", str(repo))
    git(repo, "add", "-A")
    git(
        repo,
        "-c",
        "user.name=test",
        "-c",
        "user.email=test@localhost",
        "commit",
        "-q",
        "-m",
        "sources",
    )
    return repo


def spd_run_env(repo: Path, tmp_path: Path, cluster: SlurmCluster | None = None) -> dict[str, str]:
    """The environment of an `spd-run` that uses `repo`'s sources and keeps its files in tmp_path."""
    base = cluster.env if cluster is not None else os.environ
    return {
        **base,
        "PYTHONPATH": str(repo),
        "OMP_NUM_THREADS": "1",
        "SPD_OUT_DIR": str(tmp_path / "out"),
        "SPD_SLURM_LOG_DIR": str(tmp_path / "slurm_logs"),
        "SPD_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
    }


def spd_run(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`spd-run ARGS` as a user runs it, from the sources in `repo`."""
    return subprocess.run(
        [sys.executable, "-m", "spd.scripts.run", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
