"""Read-only and unreadable paths, exercised by a user who really lacks the permission.

As root every permission check passes, so under root (as in CI) the commands run as an
unprivileged user this test creates (`useradd`, then `setpriv` to drop to it); a test process
that is already unprivileged runs them as itself. Each case must end in one `spd: error:` line.
"""

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.resumable_runs import TMS_CONFIG, TMS_SCRIPT, override_args, run_tms, script_env

USER = "spd-unprivileged"
BIN = Path(sys.executable).parent


def _unprivileged_prefix() -> list[str]:
    """The command prefix that runs a command as an unprivileged user (empty: we are one)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None or shutil.which("useradd") is None:
        pytest.skip("running as root without setpriv/useradd: no unprivileged user to test as")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        created = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            capture_output=True,
            text=True,
            check=False,
        )
        if created.returncode != 0:
            pytest.skip(f"running as root but cannot create a user: {created.stderr.strip()}")
    entry = pwd.getpwnam(USER)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]


@pytest.fixture(scope="module")
def as_user() -> list[str]:
    return _unprivileged_prefix()


@pytest.fixture
def area() -> Iterator[Path]:
    """A scratch directory the unprivileged user can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="spd-permissions-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(as_user: list[str], command: list[str], out_dir: Path) -> list[str]:
    home = out_dir.parent / "home"  # matplotlib's and torch's caches, the user's own
    home.mkdir(exist_ok=True)
    home.chmod(0o777)
    env = {**script_env(out_dir), "HOME": str(home), "MPLCONFIGDIR": str(home)}
    result = subprocess.run(
        [*as_user, *command],
        env=env,
        cwd=out_dir.parent,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("spd: error: "), result.stderr[-3000:]
    return lines


def test_a_read_only_output_root_is_one_line(as_user: list[str], area: Path) -> None:
    root = area / "readonly"
    root.mkdir(mode=0o555)
    root.chmod(0o555)
    (line,) = _run(as_user, [sys.executable, str(TMS_SCRIPT), str(TMS_CONFIG)], root)
    assert "not writable" in line and str(root) in line
    assert not any(root.iterdir())


def test_an_unreadable_config_is_one_line(as_user: list[str], area: Path) -> None:
    config = area / "config.yaml"
    shutil.copy(TMS_CONFIG, config)
    config.chmod(0o600 if as_user else 0o000)
    (line,) = _run(as_user, [sys.executable, str(TMS_SCRIPT), str(config)], area / "out")
    assert "not readable (permission denied)" in line


def test_a_run_directory_of_someone_else_is_one_line(as_user: list[str], area: Path) -> None:
    """Resuming or analysing a run one may read but not write, or not read at all."""
    made = run_tms([str(TMS_CONFIG), *override_args(steps=2, save_freq=1)], area / "made")
    assert made.returncode == 0, made.stderr
    (run_dir,) = [p for p in (area / "made").iterdir() if p.is_dir()]
    for path in [run_dir, *run_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    if not as_user:
        run_dir.chmod(0o555)
    resume = [sys.executable, str(TMS_SCRIPT), "--resume", str(run_dir), "--override", "steps=4"]
    (line,) = _run(as_user, resume, area / "out")
    assert "permission denied" in line and str(run_dir) in line
    for checkpoint in (run_dir / "checkpoints").iterdir():
        checkpoint.chmod(0o600 if as_user else 0o000)
    (line,) = _run(as_user, [str(BIN / "spd-analyze"), str(run_dir)], area / "out")
    assert "not readable (permission denied)" in line


def test_spd_report_into_a_folder_one_cannot_write(as_user: list[str], area: Path) -> None:
    run_dir = area / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 0, "train/loss": 1.0}\n')
    run_dir.chmod(0o755)
    locked = area / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    out = locked / "summary.html"
    (line,) = _run(
        as_user, [str(BIN / "spd-report"), str(run_dir), "--out", str(out)], area / "out"
    )
    assert "not writable" in line
