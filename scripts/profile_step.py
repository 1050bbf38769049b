"""Profile the optimisation steps of a registered experiment (evaluation excluded) with torch.profiler.

    python scripts/profile_step.py --experiment resid_mlp1 [--steps 20] [--override key=value …]

Runs `optimize()` on the experiment's full config (batch size included) for a few steps, records
only steps after the first (which evaluates) and before the last (which evaluates again), and
prints the steps/s of the recorded window and the operators that take the most time. On a
shared machine wall time depends on the load; the process CPU time per step does much less, and
with one thread (OMP_NUM_THREADS=1) its inverse estimates the steps/s of an idle core.
"""

import argparse
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from spd.config.loading import load_config
from spd.experiments.registry import get_experiment
from spd.experiments.run_decomposition import parse_override
from spd.experiments.tasks import get_task
from spd.loading.targets import load_target_model
from spd.train.data_shard import data_shard
from spd.train.optimize import optimize

WAIT, WARMUP = 1, 2


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="resid_mlp1")
    parser.add_argument("--steps", type=int, default=20, help="recorded steps")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    args = parser.parse_args()
    spec = get_experiment(args.experiment)
    overrides = dict(parse_override(o) for o in args.override)
    total = WAIT + WARMUP + args.steps + 1
    overrides.update(
        {"steps": total, "eval_freq": 10**9, "slow_eval_freq": 10**9, "save_freq": None}
    )
    overrides["slow_eval_on_first_step"] = False
    config = load_config(spec.config_path, overrides)
    task = get_task(config.task_config.task_name)
    if task.prepare is not None:
        config = task.prepare(config)
    device = torch.device("cpu")
    target = load_target_model(config)
    train, evals = task.make_data(config, target, device, data_shard(config))
    stamps: dict[int, float] = {}
    cpu_stamps: dict[int, float] = {}
    with (
        tempfile.TemporaryDirectory(),
        profile(
            activities=[ProfilerActivity.CPU],
            schedule=schedule(wait=WAIT, warmup=WARMUP, active=args.steps, repeat=1),
        ) as prof,
    ):

        def on_step_end(step: int) -> None:
            stamps[step] = time.perf_counter()
            cpu_stamps[step] = time.process_time()
            prof.step()

        optimize(target, config, device, train, evals, show_progress=False, on_step_end=on_step_end)
    first, last = WAIT + WARMUP - 1, WAIT + WARMUP + args.steps - 1
    rate = args.steps / (stamps[last] - stamps[first])
    cpu_per_step = (cpu_stamps[last] - cpu_stamps[first]) / args.steps
    print(
        f"{args.experiment}: batch {config.batch_size}, {torch.get_num_threads()} threads, "
        f"{rate:.2f} steps/s over {args.steps} profiled steps (profiler overhead included), "
        f"{cpu_per_step:.3f} CPU s per step"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
