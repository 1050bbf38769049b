"""Time the CI functions alone, as one training step of each experiment calls them: a floor for
the step time of the exact method on this machine.

    python scripts/benchmark_ci_kernel.py [--experiments tms_40-10,resid_mlp3] [--repeats 3]

For each experiment it builds the component model from the registered config, runs one
training-step loss (`spd.losses.batch.batch_loss`) on one batch of its own data while recording
every call of the fused CI kernel (`spd.models.scalar_mlp.scalar_mlp`, `ci_fn_type: mlp` with one
hidden layer) with its inputs, then times those calls' forward and backward passes again, alone
(the best of `--repeats`). Their sum is what the CI functions cost per step with every (row,
subcomponent, hidden unit) evaluated once, the all-zero rows once per layer; no faster step is
possible without changing the method's maths. It prints, per experiment, the rows reaching the
kernel, the number of GELU evaluations, the time per step and the steps/s that time alone allows.
"""

import argparse
import time

import torch

from spd.config.loading import load_config
from spd.experiments.registry import get_experiment
from spd.experiments.tasks import get_task
from spd.loading.targets import load_target_model
from spd.losses.batch import batch_loss
from spd.losses.terms.importance_minimality import importance_params
from spd.models.ci_fns import mlp as mlp_ci_fn
from spd.models.component_model import build_component_model
from spd.models.scalar_mlp import rows_evaluated_alone
from spd.train.data_shard import data_shard

EXPERIMENTS = ["tms_5-2", "tms_40-10", "resid_mlp1", "resid_mlp2", "resid_mlp3"]


def recorded_calls(experiment: str) -> list[tuple[torch.Tensor, ...]]:
    """The inputs of every CI-kernel call in one training-step loss of `experiment` (CPU)."""
    spec = get_experiment(experiment)
    config = load_config(spec.config_path)
    task = get_task(config.task_config.task_name)
    target = load_target_model(config)
    train, _ = task.make_data(config, target, torch.device("cpu"), data_shard(config))
    torch.manual_seed(config.seed)
    model = build_component_model(target, config)
    model.init_components_from_target(config.seed)
    calls: list[tuple[torch.Tensor, ...]] = []
    kernel = mlp_ci_fn.scalar_mlp

    def recording(*args: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(a.detach() for a in args))
        return kernel(*args)

    mlp_ci_fn.scalar_mlp = recording
    try:
        batch_loss(model, next(train), config, importance_params(config).pnorm)
    finally:
        mlp_ci_fn.scalar_mlp = kernel
    return calls


def evaluated_rows(x: torch.Tensor) -> int:
    """The rows the kernel evaluates one by one (`spd.models.scalar_mlp.rows_evaluated_alone`)."""
    flat = x.reshape(-1, x.shape[-1])
    live = rows_evaluated_alone(flat)
    return flat.shape[0] if live is None else live.numel()


def time_calls(calls: list[tuple[torch.Tensor, ...]], repeats: int) -> float:
    """Seconds for the forward and backward passes of all `calls`, the best of `repeats`."""
    inputs = [tuple(a.clone().requires_grad_() for a in call) for call in calls]

    def once() -> None:
        for args in inputs:
            mlp_ci_fn.scalar_mlp(*args).sum().backward()

    once()  # warm-up: allocator, kept buffers
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads")
    print(
        "| experiment | kernel calls | rows evaluated per call | GELU evaluations | CI time per step | steps/s bound |"
    )
    print("|---|---|---|---|---|---|")
    for experiment in args.experiments.split(","):
        calls = recorded_calls(experiment)
        if not calls:
            print(f"| {experiment} | 0 (no `mlp` CI functions with one hidden layer) | | | | |")
            continue
        rows = [evaluated_rows(call[0]) for call in calls]
        gelus = sum(r * call[1].numel() for r, call in zip(rows, calls, strict=True))
        seconds = time_calls(calls, args.repeats)
        print(
            f"| {experiment} | {len(calls)} | {min(rows)}–{max(rows)} | {gelus / 1e6:.1f} M "
            f"| {seconds * 1e3:.1f} ms | {1 / seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
