"""The command line of one planned run, for a given source tree (working tree or snapshot)."""

import sys
from pathlib import Path
from typing import Any

import yaml

from spd.launch.plan import PlannedRun
from spd.launch.slurm import RDZV_BACKEND


def yaml_value(value: Any) -> str:
    """`value` as a one-line YAML flow value that `--override key=...` parses back unchanged."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1).strip()
    return text.removesuffix("...").strip()


def in_tree(path: Path, package_root: Path, tree: Path) -> Path:
    """Where a file of the running source (under `package_root`) lies in another copy `tree`."""
    return tree / path.resolve().relative_to(package_root.resolve())


def _config_in_tree(path: Path, package_root: Path, tree: Path) -> Path:
    """A shipped config is taken from the run's copy of the code; a user's file stays where it is."""
    if path.resolve().is_relative_to(package_root.resolve()):
        return in_tree(path, package_root, tree)
    return path.resolve()


def run_command(
    run: PlannedRun,
    package_root: Path,
    tree: Path,
    dp: int,
    no_progress: bool,
    run_dir: Path | None = None,
    nodes: int = 1,
) -> list[str]:
    """`python <decomp script> <config> --override k=v …`, under `torchrun` with --dp > 1 or
    --nodes > 1.

    With `run_dir` the run lives in that fixed directory (`--run-dir`), so the same command line
    continues it from its checkpoint after a SLURM requeue. With several nodes the command is the
    one every node runs; the job script supplies the rendezvous endpoint and id
    (`spd.launch.slurm.rendezvous_lines`).
    """
    launcher = [sys.executable]
    if nodes > 1:
        launcher += ["-m", "torch.distributed.run", f"--nnodes={nodes}"]
        launcher += [f"--nproc_per_node={dp}", f"--rdzv-backend={RDZV_BACKEND}"]
    elif dp > 1:
        # --standalone: a rendezvous on a free local port, so tasks sharing a node do not clash.
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={dp}"]
    cmd = [
        *launcher,
        str(in_tree(run.source.script, package_root, tree)),
        str(_config_in_tree(run.source.config_path, package_root, tree)),
    ]
    for key, value in run.overrides.items():
        cmd += ["--override", f"{key}={yaml_value(value)}"]
    if run_dir is not None:
        cmd += ["--run-dir", str(run_dir)]
    if no_progress:
        cmd.append("--no-progress")
    return cmd
