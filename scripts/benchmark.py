"""Measure optimisation speed and peak memory of registered experiments at their full batch size.

    python scripts/benchmark.py [--experiments tms_5-2,tms_40-10] [--steps 300] [--device cuda]

For each experiment, in a fresh subprocess (so peak memory is its own):
- train steps/s with evaluation excluded (no eval between the first and the last step);
- the time of one regular evaluation and of one slow evaluation (metrics + figures);
- the estimated wall time of the full run from those, with the config's eval frequencies;
- peak resident memory (ru_maxrss) and, on CUDA, the peak of allocated GPU memory.
On CUDA every step ends with a synchronisation, so the rates are those of finished work.
Prints a markdown table; docs/benchmarks.md records the figures measured on the project machine.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch


def measure(experiment: str, steps: int, device_name: str) -> dict[str, float]:
    """Run inside the child process: time `steps` optimisation steps and two evaluations."""
    from spd.config.device import resolve_device
    from spd.config.loading import load_config
    from spd.eval.evaluate import evaluate
    from spd.experiments.registry import get_experiment
    from spd.loading.targets import load_target_model
    from spd.train.optimize import optimize

    spec = get_experiment(experiment)
    full = load_config(spec.config_path)
    script_dir = str(spec.decomp_script.parent)
    sys.path.insert(0, script_dir)
    make_data = __import__(spec.decomp_script.stem).make_data
    config = full.model_copy(
        update={
            "steps": steps,
            "eval_freq": 10**9,
            "slow_eval_freq": 10**9,
            "slow_eval_on_first_step": False,
        }
    )
    device = resolve_device(device_name)
    target = load_target_model(config)
    train, evals = make_data(config, target, device)
    stamps: list[float] = []

    def finished() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    result = optimize(
        target,
        config,
        device,
        train,
        evals,
        show_progress=False,
        on_step_end=lambda _: stamps.append(finished()),
    )
    # Steps 1…steps-1: without the first (warm-up, evaluated) step and the final evaluation step.
    train_rate = (steps - 1) / (stamps[-2] - stamps[0])
    inputs = [next(evals) for _ in range(full.n_eval_steps)]
    t0 = finished()
    evaluate(result.model, full, inputs, step=steps, include_slow=False)
    fast_eval = finished() - t0
    t0 = finished()
    evaluate(result.model, full, inputs, step=steps, include_slow=True)
    slow_eval = finished() - t0
    n_fast = full.steps // full.eval_freq + 1
    n_slow = full.steps // full.slow_eval_freq + 1
    full_run = full.steps / train_rate + n_fast * fast_eval + n_slow * slow_eval
    return {
        "batch_size": full.batch_size,
        "train_steps_per_s": train_rate,
        "fast_eval_s": fast_eval,
        "slow_eval_s": slow_eval,
        "steps_per_s_with_eval": full.steps / full_run,
        "full_run_minutes": full_run / 60,
        "full_steps": full.steps,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "peak_gpu_gb": (
            torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else float("nan")
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiments", default="tms_5-2,tms_40-10,resid_mlp1")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.device)))
        return
    rows = []
    for name in args.experiments.split(","):
        with tempfile.TemporaryDirectory() as out:
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--steps",
                    str(args.steps),
                    "--device",
                    args.device,
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "SPD_OUT_DIR": out},
            )
        rows.append((name, json.loads(proc.stdout.strip().splitlines()[-1])))
    where = torch.cuda.get_device_name() if args.device != "cpu" else "CPU"
    print(
        f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads, "
        f"{args.steps} measured steps\n"
    )
    print(
        "| experiment | batch | train steps/s (eval excluded) | steps/s incl. eval | fast eval s | slow eval s | est. full run (min) | peak RSS GB | peak GPU GB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['batch_size']} | {r['train_steps_per_s']:.1f} | {r['steps_per_s_with_eval']:.1f} | "
            f"{r['fast_eval_s']:.2f} | {r['slow_eval_s']:.2f} | {r['full_run_minutes']:.1f} ({r['full_steps']} steps) | {r['peak_rss_gb']:.2f} | {r['peak_gpu_gb']:.2f} |"
        )


if __name__ == "__main__":
    main()
