"""The repository tracks no file its own .gitignore excludes (e.g. the build's spd.egg-info).

A tracked ignored file goes stale, shows up modified after every install and ends up in every
SLURM snapshot commit.
"""

import shutil
import subprocess

import pytest

from spd.loading.run_paths import REPO_ROOT


def test_no_tracked_file_is_ignored() -> None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked_but_ignored = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "--cached", "--ignored", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked_but_ignored == []
