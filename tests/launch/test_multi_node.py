"""`spd-run --nodes N`: the SLURM script runs torchrun on every node through srun, meeting at a c10d
rendezvous on the first node; checked on the script's text, by running its rendezvous lines with
the real `scontrol`, by running its command as two node ranks on this machine (gloo over
loopback), and (`slow`) as a real job on a two-node SLURM cluster on this host: both must train
exactly as one node with `--dp 2` does."""

import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from launch_helpers import spd_run, spd_run_env
from slurm_cluster import ClusterUnavailable, SlurmCluster, install
from test_job_spec import flags, launch_options

from spd.errors import SPDUserError
from spd.launch.commands import run_command, yaml_value
from spd.launch.options import check_options
from spd.launch.plan import LaunchSettings, PlannedRun, plan_runs
from spd.launch.slurm import JobSpec, job_script, rendezvous_lines, require_sbatch
from spd.launch.submission import array_job
from spd.persistence.checkpoints import latest_checkpoint, read_checkpoint
from spd.persistence.run_dir import read_metrics
from tests.paths import REPO_ROOT

# A few steps of tms_5-2, every row logged; batches divide by two ranks.
OVERRIDES = {"steps": 3, "batch_size": 32, "eval_batch_size": 32, "figures": [], "train_log_freq": 1, "device": "cpu"}  # fmt: skip
# The parts of the minimal slurm.conf `scontrol show hostnames` needs to read (it asks no daemon).
SLURM_CONF = "ClusterName=t\nSlurmctldHost=localhost\nNodeName=localhost CPUs=1\nPartitionName=p Nodes=localhost\n"  # fmt: skip


def _planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nodes: int) -> PlannedRun:
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    settings = LaunchSettings(launch_id="multi", cpu=True, nodes=nodes)
    (run,) = plan_runs(["tms_5-2"], dict(OVERRIDES), None, settings)
    return run


def _script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nodes: int, dp: int) -> tuple[JobSpec, str]:  # fmt: skip
    run = _planned(tmp_path, monkeypatch, nodes)
    command = run_command(run, REPO_ROOT, REPO_ROOT, dp, True, tmp_path / "run", nodes)
    job = array_job(launch_options(nodes=nodes, dp=dp, cpu=True), [run], [command], REPO_ROOT)
    return job, job_script(job)


def test_the_job_script_of_two_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job, script = _script(tmp_path, monkeypatch, nodes=2, dp=4)
    directives = flags(job)
    assert directives["--nodes"] == "2" and directives["--ntasks-per-node"] == "1"
    assert "--ntasks" not in directives and directives["--cpus-per-task"] == "4"
    lines = script.splitlines()
    (case,) = [line for line in lines if line.startswith("  0) cmd=(")]
    command = shlex.split(case.removeprefix("  0) cmd=(").removesuffix(") ;;"))
    assert command[1:7] == ["-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=4", "--rdzv-backend=c10d", str(REPO_ROOT / "spd/experiments/tms/tms_decomposition.py")]  # fmt: skip
    assert "--standalone" not in command
    # After the command is chosen: the rendezvous, then srun wraps it; it still runs in the
    # background with the warning signal passed on.
    start = lines.index("esac") + 1
    assert lines[start : start + 6] == rendezvous_lines(2, 4)
    assert lines[start + 5] == 'cmd=(srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=4 --kill-on-bad-exit=1 "${cmd[@]}")'  # fmt: skip
    assert lines[start + 7] == '"${cmd[@]}" &'
    # One node: no srun, no rendezvous variables, one task.
    job, script = _script(tmp_path / "one", monkeypatch, nodes=1, dp=2)
    assert "srun" not in script and "PET_" not in script and flags(job)["--ntasks"] == "1"
    assert "--standalone" in script


def test_the_rendezvous_lines_run_with_the_real_scontrol(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text(SLURM_CONF)
    script = "\n".join(
        [
            "set -eu",
            "cmd=(python -m torch.distributed.run --nnodes=2 train.py)",
            *rendezvous_lines(2, 3),
            'echo "${PET_RDZV_ENDPOINT} ${PET_RDZV_ID}"',
            'printf "%s\n" "${cmd[@]}"',
        ]
    )
    env = {**os.environ, "SLURM_CONF": str(conf), "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242"}  # fmt: skip
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == "spd-run: rendezvous of the task's nodes at gpu07:24242"
    assert out[1] == "gpu07:24242 spd-4242"
    assert out[2:] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=3", "--kill-on-bad-exit=1", "python", "-m", "torch.distributed.run", "--nnodes=2", "train.py"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SPD_OUT_DIR"} | {"OMP_NUM_THREADS": "1"}


def _trained(run_dir: Path) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """A finished run's metrics rows and its last checkpoint's parameters."""
    state = read_checkpoint(latest_checkpoint(run_dir))["decomposition"]
    flat = {f"{part}.{k}": v for part in ("components", "ci_fns") for k, v in state[part].items()}
    return read_metrics(run_dir), flat


def _assert_same_training(
    run: tuple[list[dict[str, float]], dict[str, torch.Tensor]],
    reference: tuple[list[dict[str, float]], dict[str, torch.Tensor]],
) -> None:
    """Row by row the same metrics, and the same final parameters (as the one-node DP tests)."""
    (rows, state), (reference_rows, reference_state) = run, reference
    assert len(rows) == len(reference_rows) > 3
    for a, b in zip(reference_rows, rows, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
    assert rows[0]["train/grad_norm"] > 0
    assert state.keys() == reference_state.keys()
    for name, value in state.items():
        torch.testing.assert_close(value, reference_state[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.fixture(scope="module")
def one_node_dp2(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """tms_5-2 for a few steps as `--dp 2 --cpu` runs it on one node (torchrun --standalone)."""
    root = tmp_path_factory.mktemp("one_node")
    with pytest.MonkeyPatch.context() as monkeypatch:
        run = _planned(root, monkeypatch, nodes=1)
    command = run_command(run, REPO_ROOT, REPO_ROOT, 2, True, root / "run", nodes=1)
    assert "--standalone" in command
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return _trained(root / "run")


def test_two_node_ranks_train_as_one_node_with_two_processes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_node_dp2: tuple[list[dict[str, float]], dict[str, torch.Tensor]],
) -> None:
    # The command every node of a `--nodes 2 --dp 1` job runs, started twice here with the
    # rendezvous variables the job script exports (torchrun reads them as --rdzv-endpoint/-id).
    run = _planned(tmp_path, monkeypatch, nodes=2)
    command = run_command(run, REPO_ROOT, REPO_ROOT, 1, True, tmp_path / "run", nodes=2)
    env = _env() | {"PET_RDZV_ENDPOINT": f"127.0.0.1:{_free_port()}", "PET_RDZV_ID": "spd-test"}
    nodes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    for node, output in [(node, node.communicate(timeout=300)[0]) for node in nodes]:
        assert node.returncode == 0, output[-3000:]
    _assert_same_training(_trained(tmp_path / "run"), one_node_dp2)


def _scontrol(env: dict[str, str], *args: str) -> str:
    return subprocess.run(["scontrol", *args], env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A real SLURM cluster of two nodes on this host (two slurmds; slurm_cluster.py)."""
    try:
        install()
    except ClusterUnavailable as err:
        pytest.skip(f"SLURM cannot be installed here: {err}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm2"), nodes=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# `slow` for its time (a second cluster to start, a snapshot, a two-node job: ~20 s); the default
# suite runs the same command as two node ranks in the test above.
@pytest.mark.slow
def test_spd_run_on_two_nodes_of_a_real_cluster(
    two_node_cluster: SlurmCluster,
    spd_repo: Path,
    tmp_path: Path,
    one_node_dp2: tuple[list[dict[str, float]], dict[str, torch.Tensor]],
) -> None:
    env = spd_run_env(spd_repo, tmp_path, two_node_cluster)
    overrides = [a for key, value in OVERRIDES.items() for a in ("--override", f"{key}={yaml_value(value)}")]  # fmt: skip
    result = spd_run(spd_repo, env, "--experiments", "tms_5-2", "--cpu", "--nodes", "2", *overrides)
    assert result.returncode == 0, result.stderr
    job_id = re.search(r"submitted job array (\d+)", result.stdout)
    assert job_id, result.stdout
    two_node_cluster.wait_until_done(job_id[1], timeout=300)
    (log,) = (tmp_path / "slurm_logs").glob(f"slurm-{job_id[1]}_0.out")
    text = log.read_text()
    assert "ended with status 0" in text, text[-3000:]
    endpoint = re.search(r"rendezvous of the task's nodes at (\S+):(\d+)\n", text)
    assert endpoint and endpoint[1] in two_node_cluster.node_names, text[-3000:]
    assert endpoint[2] == str(20000 + int(job_id[1]) % 20000)
    # Both nodes of the cluster ran the task, and it trained as two ranks on one node do.
    job = _scontrol(env, "show", "job", "-o", job_id[1])
    node_list = re.search(r" NodeList=(\S+)", job)
    assert "NumNodes=2 " in job and node_list, job
    assert sorted(_scontrol(env, "show", "hostnames", node_list[1]).split()) == sorted(two_node_cluster.node_names)  # fmt: skip
    (launch_dir,) = (tmp_path / "out").iterdir()
    (run_dir,) = [p for p in launch_dir.iterdir() if p.is_dir()]
    _assert_same_training(_trained(run_dir), one_node_dp2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nodes": 0}, "--nodes must be at least 1, got 0"),
        (
            {"nodes": 2, "local": True},
            "--nodes 2 runs each run on 2 machines of a SLURM cluster; drop --local",
        ),
    ],
)
def test_bad_node_counts_are_one_line(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SPDUserError, match=message) as err:
        check_options(launch_options(**changes))
    assert "\n" not in str(err.value)


def test_no_sbatch_with_several_nodes_says_slurm_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    with pytest.raises(SPDUserError, match="--nodes 2 needs SLURM to get 2 machines per run"):
        require_sbatch(1, nodes=2)


def test_the_batch_must_divide_by_every_rank_of_every_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path / "out"))
    settings = LaunchSettings(launch_id="multi", cpu=True, dp=4, nodes=3)
    with pytest.raises(SPDUserError, match=r"run 'tms_5-2' under --dp 4 --nodes 3: .*12"):
        plan_runs(["tms_5-2"], dict(OVERRIDES), None, settings)
