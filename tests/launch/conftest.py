"""Fixtures of the launcher tests: a real SLURM cluster and a throw-away git repo of the sources."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The helper modules beside this file, importable whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))

from launch_helpers import make_source_repo
from slurm_cluster import ClusterUnavailable, SlurmCluster, install


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A single-node SLURM cluster for the whole session (Debian packages installed if missing)."""
    try:
        install()
    except ClusterUnavailable as err:
        pytest.skip(f"SLURM cannot be installed here: {err}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def spd_repo(tmp_path: Path) -> Path:
    """A fresh git repo holding a copy of the `spd` sources (see launch_helpers.make_source_repo)."""
    return make_source_repo(tmp_path / "repo")
