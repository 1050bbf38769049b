"""Git snapshots record the working tree without touching it, its index or its branch."""

from pathlib import Path

import pytest
from launch_helpers import git

from spd.errors import SPDUserError
from spd.launch.git_snapshot import create_snapshot, export_snapshot, repo_root


def repo_state(repo: Path) -> dict[str, str]:
    """Everything a snapshot must leave alone."""
    return {
        "head": git(repo, "rev-parse", "HEAD"),
        "branch": git(repo, "symbolic-ref", "HEAD"),
        "index": git(repo, "ls-files", "--stage"),
        "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
        "staged": git(repo, "diff", "--cached"),
        "unstaged": git(repo, "diff"),
    }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "work")
    (repo / ".gitignore").write_text("ignored.txt\n")
    for name in ("kept.py", "edited.py", "deleted.py", "staged.py"):
        (repo / name).write_text(f"{name} v1\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    (repo / "edited.py").write_text("edited.py v2 (uncommitted)\n")
    (repo / "deleted.py").unlink()
    (repo / "staged.py").write_text("staged.py v2\n")
    git(repo, "add", "staged.py")
    (repo / "staged.py").write_text("staged.py v3 (staged v2, then edited)\n")
    (repo / "new.py").write_text("new file\n")
    (repo / "ignored.txt").write_text("secret\n")
    return repo


def test_snapshot_records_the_working_tree_and_touches_nothing(repo: Path, tmp_path: Path) -> None:
    before = repo_state(repo)
    snapshot = create_snapshot(repo, "launch-1")
    assert repo_state(repo) == before
    assert snapshot.branch == "spd-snapshot/launch-1"
    assert git(repo, "rev-parse", snapshot.branch) == snapshot.commit
    assert git(repo, "rev-parse", f"{snapshot.commit}^") == before["head"]
    files = set(git(repo, "ls-tree", "-r", "--name-only", snapshot.commit).splitlines())
    assert files == {".gitignore", "kept.py", "edited.py", "staged.py", "new.py"}
    assert git(repo, "show", f"{snapshot.commit}:edited.py") == "edited.py v2 (uncommitted)"
    assert (
        git(repo, "show", f"{snapshot.commit}:staged.py") == "staged.py v3 (staged v2, then edited)"
    )

    export = export_snapshot(snapshot, tmp_path / "export")
    assert {p.name for p in export.iterdir()} == files
    assert (export / "new.py").read_text() == "new file\n"
    # A later change to the working tree does not reach the export.
    (repo / "kept.py").write_text("changed after the launch\n")
    assert (export / "kept.py").read_text() == "kept.py v1\n"


def test_a_snapshot_branch_is_never_moved(repo: Path) -> None:
    first = create_snapshot(repo, "same-id")
    (repo / "new.py").write_text("changed\n")
    with pytest.raises(SPDUserError, match="git update-ref failed"):
        create_snapshot(repo, "same-id")
    assert git(repo, "rev-parse", "spd-snapshot/same-id") == first.commit


def test_outside_a_repository(tmp_path: Path) -> None:
    with pytest.raises(SPDUserError, match=r"not inside a git working tree.*--no-create-snapshot"):
        repo_root(tmp_path)
