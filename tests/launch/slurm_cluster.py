"""A real single-node SLURM cluster for the tests, started without systemd and stopped by PID.

    python tests/launch/slurm_cluster.py install     # apt-get the Debian packages (CI setup)
    python tests/launch/slurm_cluster.py up          # start one, print how to use it, wait for ^C

The cluster is private to its state directory: its own slurm.conf (clients find it through
SLURM_CONF), its own munged socket and free ports, so it does not clash with another one on the
same host. Known to work on Debian 12 as root: root as SlurmUser, proctrack/linuxproc, task/none,
no accounting, select/cons_tres, the node named by `hostname -s` at 127.0.0.1 with the CPUs and
memory that `slurmd -C` reports. `SlurmCluster(dir, nodes=2)` runs a second slurmd on the same
host (`slurmd -N`, its own port, spool, PID and log files) as a node named `localhost`, so that
both node names resolve and a job can ask for `--nodes=2`; each of the two nodes offers one CPU.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["slurmctld", "slurmd", "munged", "sbatch", "squeue"]
MUNGE_KEY = Path("/etc/munge/munge.key")


class ClusterUnavailable(RuntimeError):
    """SLURM could not be installed here (no package source); tests skip with this reason."""


def missing_commands() -> list[str]:
    return [cmd for cmd in DAEMONS if shutil.which(cmd) is None]


def install() -> None:
    """Install Debian's SLURM and munge packages when any of their commands is missing."""
    if not missing_commands():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
            raise ClusterUnavailable(f"`{' '.join(cmd)}` failed: {tail}")
    if missing_commands():
        raise ClusterUnavailable(f"still missing after apt-get install: {missing_commands()}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_line() -> str:
    """`slurmd -C`'s description of this host, addressed at 127.0.0.1."""
    first = subprocess.run(
        ["slurmd", "-C"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    fields = [f for f in first.split() if not f.startswith("NodeName=")]
    return f"NodeName={socket.gethostname().split('.')[0]} NodeAddr=127.0.0.1 {' '.join(fields)} State=UNKNOWN"


def _one_cpu_node_line(name: str) -> str:
    """A node of one CPU (and this host's memory) on this host, with its own slurmd port."""
    memory = [f for f in _node_line().split() if f.startswith("RealMemory=")]
    return (
        f"NodeName={name} NodeHostname={socket.gethostname().split('.')[0]} NodeAddr=127.0.0.1 "
        f"Port={_free_port()} CPUs=1 {' '.join(memory)} State=UNKNOWN"
    )


class SlurmCluster:
    """slurmctld + slurmd + munged under one state directory; `env` points clients at it."""

    def __init__(self, state_dir: Path, nodes: int = 1) -> None:
        assert nodes in (1, 2), "this host offers two resolvable node names: itself and localhost"
        self.nodes = nodes
        self.dir = state_dir
        self.conf = state_dir / "slurm.conf"
        # munged runs as `munge`, which must be able to reach its directory: a fresh one in /tmp
        # (state_dir may lie below directories only root can enter, like pytest's tmp_path).
        self.munge_dir = Path(tempfile.mkdtemp(prefix="spd-munge-"))
        self.socket = self.munge_dir / "munge.socket"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    @property
    def node_names(self) -> list[str]:
        host = socket.gethostname().split(".")[0]
        return [host] if self.nodes == 1 else [host, "localhost"]

    def write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        # Several slurmds on one host: each its own spool, PID and log file (%n: its node name).
        each = "" if self.nodes == 1 else ".%n"
        for sub in ("state", *(f"spool.{n}" if each else "spool" for n in self.node_names)):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        lines = [
            "ClusterName=spdtest",
            f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            f"StateSaveLocation={self.dir / 'state'}",
            f"SlurmdSpoolDir={self.dir / 'spool'}{each}",
            f"SlurmctldPidFile={self.dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.dir / 'slurmd.pid'}{each}",
            f"SlurmctldLogFile={self.dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.dir / 'slurmd.log'}{each}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=3600",
            *(
                [_node_line()]
                if self.nodes == 1
                else [_one_cpu_node_line(name) for name in self.node_names]
            ),
            f"PartitionName=debug Nodes={','.join(self.node_names)} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _start(self, args: list[str], user: str | None = None) -> None:
        log = (self.dir / f"{Path(args[0]).name}.stdout").open("ab")
        self.processes.append(
            subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                user=user,
                start_new_session=True,
            )
        )

    def start(self, timeout: float = 90.0) -> None:
        """Start munged (as `munge`), slurmctld and slurmd in the foreground; wait for an idle node."""
        self.write_config()
        # munged wants its socket directory owned by itself, reachable by all, writable by no one else.
        self.munge_dir.chmod(0o755)
        shutil.chown(self.munge_dir, "munge", "munge")
        self._start(
            [
                "munged",
                "--foreground",
                f"--socket={self.socket}",
                f"--key-file={MUNGE_KEY}",
                f"--pid-file={self.munge_dir / 'munged.pid'}",
                f"--log-file={self.munge_dir / 'munged.log'}",
                f"--seed-file={self.munge_dir / 'munged.seed'}",
            ],
            user="munge",
        )
        self._wait(lambda: self.socket.exists(), timeout, "munged socket")
        self._start(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        for name in self.node_names:
            # -N: which node of slurm.conf this slurmd is (needed only when one host runs several).
            node = ["-N", name] if self.nodes > 1 else []
            self._start(["slurmd", "-D", *node, "-f", str(self.conf)])
        self._wait(self._node_idle, timeout, "the nodes to be idle")

    def _node_idle(self) -> bool:
        result = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        return result.returncode == 0 and result.stdout.split() == ["idle"] * self.nodes

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{process.args} exited with {process.returncode} while waiting for {what}; {self.logs()}"
                    )
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}; {self.logs()}")

    def logs(self) -> str:
        tails = []
        logs = [*self.dir.glob("*.log"), *self.munge_dir.glob("*.log"), *self.dir.glob("*.stdout")]
        for log in logs:
            tails.append(
                f"--- {log.name}: " + " | ".join(log.read_text(errors="replace").splitlines()[-5:])
            )
        return "\n".join(tails)

    def stop(self) -> None:
        """Stop the daemons by the PIDs this object started (slurmd and slurmctld first)."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        shutil.rmtree(self.munge_dir, ignore_errors=True)

    def squeue(self, *args: str) -> str:
        return subprocess.run(
            ["squeue", "-h", *args], env=self.env, capture_output=True, text=True, check=True
        ).stdout

    def wait_until_done(self, job_id: str, timeout: float) -> None:
        """Poll squeue until the job (all its array tasks) has left the queue."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.squeue("-j", job_id).strip():
                return
            time.sleep(1.0)
        raise TimeoutError(
            f"job {job_id} still queued after {timeout:.0f}s: {self.squeue('-j', job_id)}"
        )


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else "up"
    install()
    if command == "install":
        return
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="spd-slurm-")))
    cluster.start()
    print(f"SLURM up; use it with: export SLURM_CONF={cluster.conf}  (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
