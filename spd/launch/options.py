"""What spd-run's command line asks for (`LaunchOptions`), and the checks that need no config.

`spd/scripts/run.py` parses the command line into a `LaunchOptions`; the launcher modules read
only that. Importing this module stays light (no torch), so that `spd-run --help` answers at once.
"""

import argparse
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from spd.config.environment import MAX_GPUS_ENV, max_gpus_per_node
from spd.errors import SPDUserError
from spd.experiments.registry import EXPERIMENT_REGISTRY, get_experiment
from spd.launch.arguments import comma_list

SUFFIX_PATTERN = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class LaunchOptions:
    """spd-run's options, one field per option (see `spd-run --help` for each)."""

    experiments: str | None
    config: list[Path] | None
    time_minutes: int | None
    sweep: Path | None
    n_agents: int | None
    cpu: bool
    dp: int
    project: str
    local: bool
    job_suffix: str | None
    create_report: bool | None
    report_title: str | None
    log_format: str
    create_snapshot: bool | None
    use_wandb: bool
    override: list[str]
    no_progress: bool
    dry_run: bool
    resume: Path | None
    analyze: bool
    analyze_tokens: int
    nodes: int = 1

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "LaunchOptions":
        """The options of a parsed spd-run command line."""
        return cls(**{field.name: getattr(args, field.name) for field in fields(cls)})

    @property
    def job_name(self) -> str:
        """The SLURM job name of the launch's array; its other jobs add a suffix to it."""
        return f"spd-{self.job_suffix}" if self.job_suffix else "spd"

    @property
    def terse(self) -> bool:
        """One line per run (or per job) instead of the full output."""
        return self.log_format == "terse"


def selected_experiments(names: str | None) -> list[str]:
    """The experiments named by --experiments; none named is an error listing the choices."""
    if names is None:
        listing = ", ".join(
            f"{name} (~{spec.expected_runtime} min{', needs the network' * spec.needs_network})"
            for name, spec in EXPERIMENT_REGISTRY.items()
        )
        raise SPDUserError(
            f"choose what to run with --experiments NAME[,NAME…]; registered: {listing}"
        )
    chosen = comma_list(names, "--experiments")
    for name in chosen:
        get_experiment(name)
    return chosen


def check_options(options: LaunchOptions) -> None:
    """Options that are wrong whatever the configs say."""
    suffix = options.job_suffix
    if suffix is not None and not SUFFIX_PATTERN.fullmatch(suffix):
        raise SPDUserError(
            f"--job-suffix '{suffix}' may only use letters, digits, '.', '_' and '-'"
        )
    if options.n_agents is not None and options.n_agents < 1:
        raise SPDUserError(f"--n-agents must be at least 1, got {options.n_agents}")
    if options.sweep is not None and not options.local and options.n_agents is None:
        raise SPDUserError(
            "--n-agents is required with --sweep on SLURM (how many runs may run at once)"
        )
    if options.dp < 1:
        raise SPDUserError(f"--dp must be at least 1, got {options.dp}")
    _check_nodes(options)
    if options.dp > 1:
        _check_dp_resources(options.dp, options.cpu, options.local)


def _check_nodes(options: LaunchOptions) -> None:
    """--nodes N asks SLURM for N machines per run; here there is only this one."""
    if options.nodes < 1:
        raise SPDUserError(f"--nodes must be at least 1, got {options.nodes}")
    if options.nodes > 1 and options.local:
        raise SPDUserError(
            f"--nodes {options.nodes} runs each run on {options.nodes} machines of a SLURM "
            "cluster; drop --local (or --nodes; to start the nodes yourself, see "
            "docs/data_parallel.md, 'Without SLURM')"
        )


def _check_dp_resources(dp: int, cpu: bool, local: bool) -> None:
    """--dp N needs N cores (--cpu here), N GPUs here, or N GPUs on one node of the cluster."""
    if cpu:
        cores = os.cpu_count() or 1
        if local and dp > cores:
            raise SPDUserError(
                f"--dp {dp} --cpu needs {dp} processes but this machine has {cores} cores"
            )
    elif local:
        import torch  # here: the options are checked before anything heavy is imported

        gpus = torch.cuda.device_count()
        if dp > gpus:
            raise SPDUserError(
                f"--dp {dp} needs {dp} GPUs but this machine has {gpus}; "
                f"add --cpu to run {dp} CPU processes (gloo)"
            )
    else:
        limit = max_gpus_per_node()
        if dp > limit:
            raise SPDUserError(
                f"--dp {dp} asks for more GPUs than a node has ({limit}; set {MAX_GPUS_ENV} "
                "if yours has more)"
            )
