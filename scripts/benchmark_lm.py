"""Speed and memory of a language-model decomposition at its configured batch (4 × 512 tokens).

    python scripts/benchmark_lm.py [--experiment lm_example_emb] [--steps 200] [--eval-every 50]

Runs the registered experiment's config (with `--steps` steps, evaluating every `--eval-every`)
in a fresh subprocess, so that peak memory is its own, and reports:
- steps/s from the median step time (evaluation steps excluded) and from the mean (included);
- the time of one evaluation (the config's metrics, CE/KL included);
- peak resident memory (ru_maxrss) and the anonymous resident memory sampled after every
  step: after the first 10 % of steps, at the end, the largest rise after the first 10 %, and a
  trace at ten points. A flat run rises by (almost) nothing once the first steps and the first
  evaluation have allocated their buffers. File-backed memory (the dataset's memory-mapped
  Arrow files, read further as the run goes on) is reported apart.
The offline example must be built first (`python spd/experiments/lm/make_offline_example.py`).
"""

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

N_TRACE_POINTS = 10


def resident_mb() -> tuple[float, float]:
    """Current resident memory of this process in MB: (anonymous, file-backed).

    Anonymous memory is what a leak grows; file-backed pages include the memory-mapped Arrow
    files of the dataset, which grow as more of the data is read and can be reclaimed.
    """
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    anon, file = (int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile"))
    return anon, file


def measure(experiment: str, steps: int, eval_every: int) -> dict[str, float | list[int]]:
    """Inside the child process: run `steps` steps of the experiment and time/sample each one."""
    from spd.config.loading import load_config
    from spd.eval.evaluate import evaluate
    from spd.experiments.lm.sources import resolve_sources
    from spd.experiments.lm.task import make_data
    from spd.experiments.registry import get_experiment
    from spd.loading.targets import load_target_model
    from spd.train.data_shard import data_shard
    from spd.train.optimize import optimize

    full = resolve_sources(load_config(get_experiment(experiment).config_path))
    config = full.model_copy(
        update={
            "steps": steps,
            "eval_freq": eval_every,
            "slow_eval_freq": 10**9,
            "slow_eval_on_first_step": False,
            "save_freq": None,
        }
    )
    device = torch.device("cpu")
    target = load_target_model(config)
    train, evals = make_data(config, target, device, data_shard(config))
    stamps: list[float] = [time.perf_counter()]
    anon: list[float] = []
    file: list[float] = []

    def on_step_end(_: int) -> None:
        stamps.append(time.perf_counter())
        a, f = resident_mb()
        anon.append(a)
        file.append(f)

    result = optimize(
        target, config, device, train, evals, show_progress=False, on_step_end=on_step_end
    )
    durations = [b - a for a, b in itertools.pairwise(stamps)]
    # Step 0 warms up; steps that evaluate (every eval_every, and the last) are left out.
    train_steps = [d for i, d in enumerate(durations[1:-1], start=1) if i % eval_every != 0]
    inputs = [next(evals) for _ in range(full.n_eval_steps)]
    t0 = time.perf_counter()
    evaluate(result.model, full, inputs, step=steps, include_slow=False)
    eval_s = time.perf_counter() - t0
    first = max(len(anon) // 10, 1) - 1
    batch = next(train)
    trace_at = [round(k * (len(anon) - 1) / (N_TRACE_POINTS - 1)) for k in range(N_TRACE_POINTS)]
    return {
        "batch": batch.shape[0],
        "seq_len": batch.shape[1],
        "steps": steps,
        "train_steps_per_s_median": 1 / statistics.median(train_steps),
        "steps_per_s_mean_with_eval": steps / (stamps[-1] - stamps[1]),
        "eval_s": eval_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "anon_after_10pct_mb": anon[first],
        "anon_end_mb": anon[-1],
        "anon_max_rise_after_10pct_mb": max(anon[first:]) - anon[first],
        "file_end_mb": file[-1],
        "anon_trace_mb": [round(anon[i]) for i in trace_at],
        "trace_steps": trace_at,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="lm_example_emb")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.experiment, args.steps, args.eval_every)))
        return
    # No run directory is written (optimize gets none), so the output root is the user's own
    # and the example is found where make_offline_example.py put it.
    cmd = [sys.executable, __file__, "--child", "--experiment", args.experiment]
    cmd += ["--steps", str(args.steps), "--eval-every", str(args.eval_every)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(
            proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "benchmark failed"
        )
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.experiment}")
    print(
        "| batch | steps | steps/s (median, no eval) | steps/s (mean, with eval) | eval s "
        "| peak RSS MB | anon. RSS after 10% MB | anon. RSS end MB | max anon. rise after 10% MB "
        "| file-backed RSS end MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {r['batch']} × {r['seq_len']} | {r['steps']} | {r['train_steps_per_s_median']:.2f} "
        f"| {r['steps_per_s_mean_with_eval']:.2f} | {r['eval_s']:.2f} | {r['peak_rss_mb']:.0f} "
        f"| {r['anon_after_10pct_mb']:.0f} | {r['anon_end_mb']:.0f} "
        f"| {r['anon_max_rise_after_10pct_mb']:.1f} | {r['file_end_mb']:.0f} |"
    )
    trace = ", ".join(
        f"{s}: {m}" for s, m in zip(r["trace_steps"], r["anon_trace_mb"], strict=True)
    )
    print(f"\nanonymous RSS (MB) after step: {trace}")


if __name__ == "__main__":
    main()
