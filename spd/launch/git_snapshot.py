"""Git snapshots: the working tree as it is now, recorded without touching it, and checked out.

A launch records the working tree as `git add -A` would stage it (tracked files with their
uncommitted changes, deletions, and new files that git does not ignore) as a commit on a branch of
its own, `spd-snapshot/<launch id>`, whose parent is HEAD. The commit is built in a temporary copy
of the index, so the user's working tree, index and current branch stay exactly as they were.
Tasks then run from an export of that commit.
"""

import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from spd.errors import SPDUserError

BRANCH_PREFIX = "spd-snapshot/"
SNAPSHOT_DIR_ENV = "SPD_SNAPSHOT_DIR"
DEFAULT_SNAPSHOT_DIR = "~/.cache/spd/snapshots"
# Used only when git has no identity configured, so that commit-tree can sign the commit.
_FALLBACK_IDENTITY = {"name": "spd-run", "email": "spd-run@localhost"}


@dataclass(frozen=True)
class Snapshot:
    repo: Path
    commit: str
    branch: str


def _git(
    repo: Path, *args: str, env: dict[str, str] | None = None, input_text: str | None = None
) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env=env,
        input=input_text,
        check=False,
    )
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise SPDUserError(
            f"git {args[0]} failed in {repo}: {message[-1] if message else 'no output'}"
        )
    return result.stdout.strip()


def repo_root(path: Path) -> Path:
    """The top of the git working tree holding `path`."""
    result = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SPDUserError(
            f"{path} is not inside a git working tree, so no snapshot can be made; "
            "pass --no-create-snapshot to run from the files as they are"
        )
    return Path(result.stdout.strip())


def _commit_env(repo: Path, index_file: Path) -> dict[str, str]:
    env = {**os.environ, "GIT_INDEX_FILE": str(index_file)}
    for field in ("name", "email"):
        configured = subprocess.run(
            ["git", "-C", str(repo), "config", f"user.{field}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if not configured:
            for role in ("AUTHOR", "COMMITTER"):
                env.setdefault(f"GIT_{role}_{field.upper()}", _FALLBACK_IDENTITY[field])
    return env


def create_snapshot(repo: Path, launch_id: str) -> Snapshot:
    """Commit the working tree of `repo` to `spd-snapshot/<launch_id>` via a temporary index."""
    branch = BRANCH_PREFIX + launch_id
    with tempfile.TemporaryDirectory(prefix="spd-snapshot-") as tmp:
        index = Path(tmp) / "index"
        real_index = repo / _git(repo, "rev-parse", "--git-path", "index")
        if real_index.is_file():
            # Starting from the real index keeps its stat cache (fast) and force-added files.
            shutil.copyfile(real_index, index)
        env = _commit_env(repo, index)
        _git(repo, "add", "-A", env=env)
        tree = _git(repo, "write-tree", env=env)
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    parents = ["-p", head] if head else []
    commit = _git(
        repo, "commit-tree", tree, *parents, "-m", f"spd-run snapshot {launch_id}", env=env
    )
    # The empty old value makes update-ref fail rather than move an existing branch.
    _git(repo, "update-ref", f"refs/heads/{branch}", commit, "")
    return Snapshot(repo=repo, commit=commit, branch=branch)


def snapshot_base_dir() -> Path:
    """Where snapshot checkouts go: $SPD_SNAPSHOT_DIR, else ~/.cache/spd/snapshots."""
    return Path(os.environ.get(SNAPSHOT_DIR_ENV) or DEFAULT_SNAPSHOT_DIR).expanduser().resolve()


def export_snapshot(snapshot: Snapshot, dest: Path) -> Path:
    """Write the snapshot's files into the new directory `dest` (which must not exist yet)."""
    dest.mkdir(parents=True, exist_ok=False)
    with subprocess.Popen(
        ["git", "-C", str(snapshot.repo), "archive", "--format=tar", snapshot.commit],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as archive:
        assert archive.stdout is not None and archive.stderr is not None
        # Streamed, so that a large tree is never held in memory.
        with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
            tar.extractall(dest, filter="data")
        error = archive.stderr.read().decode().strip()
    if archive.returncode != 0:
        raise SPDUserError(f"git archive of {snapshot.commit} failed: {error}")
    return dest
