"""`spd-run --dry-run`: what a launch would do, after every check it makes, with nothing written.

Planning (`spd.launch.plan.plan_runs`) has already validated every run of the launch (config,
task, output root, layer patterns). This prints, per run, its command line, its resolved config
and the memory a training step needs on the device it would run on; for a SLURM launch, the job
array script `sbatch` would get and whether `sbatch` is there. No snapshot, launch directory,
manifest, job or run is created.
"""

import shlex
import textwrap
import time
from pathlib import Path

import torch

from spd.config.device import resolve_device
from spd.config.loading import config_to_yaml
from spd.errors import SPDUserError
from spd.launch import git_snapshot, slurm
from spd.launch.commands import run_command
from spd.launch.options import LaunchOptions
from spd.launch.plan import PlannedRun
from spd.launch.submission import array_job
from spd.loading.env_files import REPO_ROOT
from spd.loading.run_paths import is_wandb_path, resolve_run_path
from spd.loading.targets import load_target_model
from spd.train.memory_estimate import GIB, check_memory, estimate_peak_memory, step_bytes


def _tree(options: LaunchOptions, launch_id: str) -> Path:
    """Where the runs' code would be: the snapshot's checkout (computed, not made), or here."""
    snapshot = not options.local if options.create_snapshot is None else options.create_snapshot
    if not snapshot:
        return REPO_ROOT
    repo = git_snapshot.repo_root(REPO_ROOT)
    export = git_snapshot.snapshot_base_dir() / launch_id
    return export / REPO_ROOT.resolve().relative_to(repo.resolve())


def _memory_line(run: PlannedRun, options: LaunchOptions) -> str:
    """The memory estimate of one run; checked against this machine for a local run."""
    config = run.config
    path = config.pretrained_model_path
    if path is None or is_wandb_path(path) or resolve_run_path(path) is None:
        return "memory: estimated when the run has loaded its target (not on disk here)"
    target = load_target_model(config)
    if options.local:
        device = resolve_device(config.device)
        estimate = estimate_peak_memory(config, target.to(device), device)
        check_memory(estimate, device, announce=False)
        return f"memory: {estimate.describe()}; fits on this machine"
    device = torch.device("cpu" if options.cpu else "cuda")
    needed = step_bytes(config, target, device) / GIB
    return f"memory: a training step needs about {needed:.2f} GiB on {device.type} per rank"


def show_launch(options: LaunchOptions, runs: list[PlannedRun], launch_id: str) -> None:
    """Print what the launch `launch_id` of `runs` would run or submit; write nothing."""
    tree = _tree(options, launch_id)
    no_progress = options.no_progress or not options.local or options.terse
    # On SLURM each run gets a fixed directory (see spd.launch.launcher.launch); here none is made.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    commands = [
        run_command(
            run,
            REPO_ROOT,
            tree,
            options.dp,
            no_progress,
            run_dir=None if options.local else run.out_dir / f"{stamp}-{run.name}",
            nodes=options.nodes,
        )
        for run in runs
    ]
    print(f"spd-run: dry run of launch {launch_id}: {len(runs)} run(s), code from {tree}")
    for index, (run, command) in enumerate(zip(runs, commands, strict=True)):
        print(f"[{index}] {run.name}")
        print(f"  command: {shlex.join(command)}")
        print(f"  {_memory_line(run, options)}")
        print("  config:")
        print(textwrap.indent(config_to_yaml(run.config), "    "), end="")
    if not options.local:
        job = array_job(options, runs, commands, tree)
        print("spd-run: dry run: the job array script sbatch would get:")
        print(slurm.job_script(job), end="")
        try:
            slurm.require_sbatch(len(runs), options.nodes)
        except SPDUserError as err:
            print(f"spd-run: dry run: a real launch would stop here: {err}")
    print("spd-run: dry run: every run is valid; nothing was written, submitted or run")
