"""`--dry-run` of a decomposition script: every check the run makes before its first step, the
resolved config and the memory estimate; nothing is written (no run directory, no output root).

The checks are those of `run_decomposition` up to the point where it creates the run directory:
the output root (or `--run-dir`) is writable, the target loads and every layer pattern matches,
the task's data streams can be built, a `--resume` point exists, and a training step fits in the
memory of the run's device.
"""

from pathlib import Path

from spd.config.device import resolve_device
from spd.config.loading import config_to_yaml
from spd.config.schema import Config
from spd.experiments.run_decomposition import DataFactory
from spd.loading.targets import load_target_model
from spd.models.tie_check import check_decomposition
from spd.persistence.resume import find_resume_point
from spd.persistence.run_dir import check_writable_directory, output_root
from spd.train.data_shard import data_shard
from spd.train.memory_estimate import MemoryEstimate, check_memory, estimate_peak_memory
from spd.train.setup import term_states


def check_run(
    config: Config, make_data: DataFactory, run_dir: Path | None, resume: Path | None
) -> MemoryEstimate:
    """Raise `SPDUserError` for the first check the run would fail; the memory estimate (printed)
    when all pass. Writes nothing."""
    device = resolve_device(config.device)
    shard = data_shard(config)
    term_states(config)  # a stateful loss term's settings against this rank's batch
    if resume is None:
        if run_dir is None:
            check_writable_directory(output_root(config.out_dir), "output root")
        else:
            check_writable_directory(run_dir, "--run-dir")
    target = load_target_model(config).to(device)
    check_decomposition(target, config)
    make_data(config, target, device, shard)
    if resume is not None:
        find_resume_point(resume, config)
    estimate = estimate_peak_memory(config, target, device)
    check_memory(estimate, device)
    return estimate


def dry_run(
    config: Config, make_data: DataFactory, run_dir: Path | None, resume: Path | None
) -> None:
    """Check the run as it would start, print its resolved config, and start nothing."""
    check_run(config, make_data, run_dir, resume)
    print("spd: dry run: every check passed; the run's resolved config:")
    print(config_to_yaml(config), end="")
    print("spd: dry run: nothing was written")
