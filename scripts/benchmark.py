"""Measure optimisation speed and peak memory of registered experiments at their full batch size.

    python scripts/benchmark.py [--experiments tms_5-2,resid_mlp1] [--steps 300] [--device cuda]
        [--ref GITREF] [--compile auto|on|off] [--override KEY=VALUE]... [--json FILE]

By default it measures tms_5-2, tms_40-10, resid_mlp1, resid_mlp2, resid_mlp3 and the offline
language-model example (lm_example_emb; build it first with
`python spd/experiments/lm/make_offline_example.py`), each for its own number of steps
(DEFAULT_STEPS, a few minutes in all on 2 CPU threads); `--steps` sets one count for all.

For each experiment, in a fresh subprocess (so peak memory is its own):
- train steps/s with evaluation excluded: the steps after the first (warm-up, evaluated) one,
  with no evaluation between them;
- the time of one regular evaluation and of one slow evaluation (metrics + figures);
- the estimated wall time of the full default run from those, with the config's step count and
  eval frequencies, and the steps/s that gives (evaluation included);
- peak resident memory (ru_maxrss) and, on CUDA, the peak of allocated GPU memory.
On CUDA every step ends with a synchronisation, so the rates are those of finished work.

`--ref GITREF` also measures the code of another commit, each experiment right after the
current code's measurement of it (so both see the same machine state), from a temporary
`git worktree` of GITREF run with this interpreter and the worktree first on PYTHONPATH; the
table then shows both side by side with their ratio. The measuring child is this file itself and
uses only long-standing spd APIs, so it runs against older commits too.

`--override KEY=VALUE` (repeatable; dotted keys, as `spd-run --override`) changes every measured
experiment's config, e.g. `--override use_delta_component=true` or
`--override losses.stochastic_recon_subset.coeff=1.0` (adds that loss term); an override that does
not validate is one error line before anything is measured. The table's heading and the JSON name
the overrides, and each measurement reports the overridden values as its config holds them.

`--compile` sets the config's `compile` field where the code's Config has one (left at the
config's value otherwise, and never set for code that lacks the field).

Prints a markdown table; `--json FILE` saves the raw figures. docs/benchmarks.md records the
figures measured on the project machine. Nothing is written to the output root (SPD_OUT_DIR,
else ./spd_out): it is only read, for the language-model example.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

TREE = Path(__file__).resolve().parents[1]
EXPERIMENTS = ["tms_5-2", "tms_40-10", "resid_mlp1", "resid_mlp2", "resid_mlp3", "lm_example_emb"]
# Measured steps per experiment: enough for a stable rate, a few minutes for the whole default
# list on 2 CPU threads (tms_5-2 ≈ 120 steps/s, resid_mlp3 under 1 step/s).
DEFAULT_STEPS = {
    "tms_5-2": 600,
    "tms_5-2-id": 600,
    "tms_40-10": 30,
    "tms_40-10-id": 30,
    "resid_mlp1": 200,
    "resid_mlp2": 60,
    "resid_mlp3": 20,
    "lm_example_emb": 20,
    "lm_example_mlp": 20,
}
FALLBACK_STEPS = 20
COMPILE_CHOICES = ("auto", "on", "off")


def measure(
    experiment: str,
    steps: int,
    device_name: str,
    compile_mode: str | None,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """Run inside the child process: time `steps` optimisation steps and two evaluations.

    Imports only spd APIs that older commits have too, so `--ref` can run it against them
    (overrides of fields an older commit lacks fail there as that commit's user error).
    """
    import spd
    from spd.config.device import resolve_device
    from spd.config.loading import load_config
    from spd.config.schema import Config
    from spd.eval.evaluate import evaluate
    from spd.experiments.registry import get_experiment
    from spd.experiments.tasks import get_task
    from spd.loading.targets import load_target_model
    from spd.train.optimize import optimize

    spec = get_experiment(experiment)
    # Without overrides, the one-argument call that every commit supports.
    full = load_config(spec.config_path, overrides) if overrides else load_config(spec.config_path)
    task = get_task(full.task_config.task_name)
    if task.prepare is not None:
        full = task.prepare(full)
    update: dict[str, Any] = {
        "steps": steps,
        "eval_freq": 10**9,
        "slow_eval_freq": 10**9,
        "slow_eval_on_first_step": False,
        "save_freq": None,
    }
    has_compile = "compile" in Config.model_fields
    if compile_mode is not None and has_compile:
        update["compile"] = compile_mode
    config = full.model_copy(update=update)
    device = resolve_device(device_name)
    target = load_target_model(config)
    train, evals = _task_data(task, config, target, device)
    stamps: list[float] = []

    def finished() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    start = finished()
    result = optimize(
        target,
        config,
        device,
        train,
        evals,
        show_progress=False,
        on_step_end=lambda _: stamps.append(finished()),
    )
    # stamps[i] ends step i; the last entry is the final (evaluation-only) step `steps`. Measured:
    # steps 1…steps-1, without the first (warm-up, compilation, evaluation) step.
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
    # A language model's batch (of token ids) is counted in sequences; its rows are this many
    # tokens long.
    batch = next(train)
    seq_len = None if batch.is_floating_point() else batch.shape[1]
    return {
        "spd_file": spd.__file__,
        "batch_size": full.batch_size,
        "seq_len": seq_len,
        "measured_steps": steps - 1,
        "threads": torch.get_num_threads(),
        "compile": getattr(config, "compile", None) if has_compile else None,
        "overrides": {key: config_value(config, key) for key in overrides},
        "first_step_s": stamps[0] - start,
        "train_steps_per_s": train_rate,
        "fast_eval_s": fast_eval,
        "slow_eval_s": slow_eval,
        "steps_per_s_with_eval": full.steps / full_run,
        "full_run_minutes": full_run / 60,
        "full_steps": full.steps,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "peak_gpu_gb": (
            torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else None
        ),
    }


def config_value(config: Any, dotted: str) -> Any:
    """The value at an override's dotted key in the measured config (a part of the key selects
    the entry of that name in a list, as overrides do), or None where the config has none."""
    node: Any = config.model_dump(mode="json")
    for part in dotted.split("."):
        if isinstance(node, list):
            node = next((e for e in node if isinstance(e, dict) and e.get("name") == part), None)
        else:
            node = node.get(part) if isinstance(node, dict) else None
    return node


def parse_overrides(texts: list[str]) -> dict[str, Any]:
    """`--override KEY=VALUE` options as a dict, parsed as `spd-run` parses them."""
    from spd.experiments.run_decomposition import parse_override

    return dict(parse_override(text) for text in texts)


def child_main(
    experiment: str,
    steps: int,
    device_name: str,
    compile_mode: str | None,
    overrides: dict[str, Any],
) -> None:
    """The child process: print the figures as one JSON line, or a user error as one line."""
    from spd.errors import SPDUserError

    try:
        figures = measure(experiment, steps, device_name, compile_mode, overrides)
    except SPDUserError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(figures))


def git(*args: str, cwd: Path = TREE) -> str | None:
    """The output of a git command, or None where it fails (not a repository, unknown ref)."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def describe_tree() -> str:
    """The current code: its commit, marked when tracked files differ from it."""
    head = git("rev-parse", "--short", "HEAD")
    if head is None:
        return "unknown commit"
    changed = git("status", "--porcelain", "--untracked-files=no")
    return f"{head} + uncommitted changes" if changed else head


@contextmanager
def ref_worktree(ref: str) -> Iterator[tuple[Path, str]]:
    """A temporary `git worktree` of `ref` (detached), removed afterwards; yields (path, commit)."""
    from spd.errors import SPDUserError

    commit = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if commit is None:
        raise SPDUserError(
            f"--ref {ref}: not a commit of the repository at {TREE}; give a branch, tag or hash"
        )
    with tempfile.TemporaryDirectory(prefix="spd-benchmark-ref-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(path), commit],
            cwd=TREE,
            check=True,
            capture_output=True,
        )
        try:
            yield path, commit
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(path)], cwd=TREE, capture_output=True
            )


def run_child(
    tree: Path, experiment: str, steps: int, args: argparse.Namespace, out_root: Path
) -> dict[str, Any]:
    """Measure `experiment` with the code in `tree`, in a fresh process run from `tree`.

    `tree` goes first on PYTHONPATH, ahead of the editable install in the environment; the
    child reports where it imported spd from, and a child that used other code is a bug here.
    Returns the figures, or {"error": the end of its stderr}.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
        # Absolute, so that every tree finds the language-model example where the user built it.
        "SPD_OUT_DIR": str(out_root),
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", experiment]
    cmd += ["--steps", str(steps), "--device", args.device]
    if args.compile is not None:
        cmd += ["--compile", args.compile]
    if args.overrides:
        # Parsed here once; the child gets them as JSON, so it needs no parser of its own.
        cmd += ["--child-overrides", json.dumps(args.overrides)]
    # Run from the tree, so that paths relative to the working directory (targets) are its own.
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        # A user error is one line; a bug's traceback ends with the exception.
        tail = proc.stderr.strip().splitlines()[-15:]
        return {"error": "\n".join(tail) or f"exit code {proc.returncode}"}
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    spd_file = Path(figures["spd_file"]).resolve()
    if not spd_file.is_relative_to(tree.resolve()):
        raise RuntimeError(f"the child measuring {tree} imported spd from {spd_file}")
    return figures


def _task_data(
    task: Any, config: Any, target: torch.nn.Module, device: torch.device
) -> tuple[Iterator[torch.Tensor], Iterator[torch.Tensor]]:
    """The task's train and eval streams; a tree from before the rank split (no
    `spd.train.data_shard`) has `make_data(config, target, device)`."""
    try:
        from spd.train.data_shard import data_shard
    except ImportError:
        return task.make_data(config, target, device)
    return task.make_data(config, target, device, data_shard(config))


def check_experiments(names: list[str], out_root: Path, overrides: dict[str, Any]) -> None:
    """Fail before measuring anything on an unknown experiment, an override that does not
    validate, or a missing language-model example or hub resource (each is one `SPDUserError`)."""
    from spd.config.loading import load_config
    from spd.errors import SPDUserError
    from spd.experiments.registry import get_experiment
    from spd.experiments.tasks import get_task

    os.environ["SPD_OUT_DIR"] = str(out_root)
    for name in names:
        config = load_config(get_experiment(name).config_path, overrides)
        task = get_task(config.task_config.task_name)
        if task.prepare is not None:
            try:
                task.prepare(config)
            except SPDUserError as err:
                others = ",".join(n for n in names if n != name) or "tms_5-2"
                raise SPDUserError(
                    f"{name}: {err}; or leave it out: --experiments {others}"
                ) from None


def duration(minutes: float) -> str:
    """Minutes up to two hours, hours beyond."""
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def cells(r: dict[str, Any] | None, fields: list[str]) -> list[str]:
    """Formatted table cells of one measurement; "failed" where it failed."""
    if r is None or "error" in r:
        return ["failed"] * len(fields)
    formats = {
        "train_steps_per_s": lambda v: f"{v:.2f}" if v < 10 else f"{v:.1f}",
        "steps_per_s_with_eval": lambda v: f"{v:.2f}" if v < 10 else f"{v:.1f}",
        "fast_eval_s": lambda v: f"{v:.2f}",
        "slow_eval_s": lambda v: f"{v:.2f}",
        "full_run_minutes": lambda v: f"{duration(v)} ({r['full_steps']} steps)",
        "peak_rss_gb": lambda v: f"{v:.2f}",
        "peak_gpu_gb": lambda v: "—" if v is None else f"{v:.2f}",
    }
    return [formats[f](r[f]) for f in fields]


def ratio(new: dict[str, Any] | None, ref: dict[str, Any] | None, field: str) -> str:
    """new / ref of one figure, or a dash where either measurement failed."""
    if new is None or ref is None or "error" in new or "error" in ref:
        return "—"
    return f"{new[field] / ref[field]:.2f}×"


def batch_cell(rows: dict[str, dict[str, Any]]) -> str:
    """The batch of an experiment: rows, or sequences × tokens for a language model."""
    r = next((r for r in rows.values() if "error" not in r), None)
    if r is None:
        return "?"
    return f"{r['batch_size']} × {r['seq_len']} tokens" if r["seq_len"] else str(r["batch_size"])


def table(results: dict[str, dict[str, dict[str, Any]]], with_ref: bool, cuda: bool) -> str:
    """The markdown table: one row per experiment, the ref's figures next to the new ones."""
    if with_ref:
        head = [
            "experiment", "batch", "measured steps",
            "train steps/s (eval excluded): new", "ref", "new/ref",
            "steps/s incl. eval: new", "ref", "new/ref",
            "est. full run: new", "ref",
            "peak RSS GB: new", "ref",
        ]  # fmt: skip
        if cuda:
            head += ["peak GPU GB: new", "ref"]
    else:
        head = [
            "experiment", "batch", "measured steps", "train steps/s (eval excluded)",
            "steps/s incl. eval", "fast eval s", "slow eval s", "est. full run", "peak RSS GB",
        ]  # fmt: skip
        if cuda:
            head.append("peak GPU GB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in results.items():
        new, ref = rows.get("new"), rows.get("ref")
        steps = next((str(r["measured_steps"]) for r in rows.values() if "error" not in r), "?")
        row = [name, batch_cell(rows), steps]
        if with_ref:
            for field in ("train_steps_per_s", "steps_per_s_with_eval"):
                row += [*cells(new, [field]), *cells(ref, [field]), ratio(new, ref, field)]
            for field in ("full_run_minutes", "peak_rss_gb", *(["peak_gpu_gb"] if cuda else [])):
                row += [*cells(new, [field]), *cells(ref, [field])]
        else:
            fields = ["train_steps_per_s", "steps_per_s_with_eval", "fast_eval_s", "slow_eval_s"]
            fields += ["full_run_minutes", "peak_rss_gb", *(["peak_gpu_gb"] if cuda else [])]
            row += cells(new, fields)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    from spd.errors import SPDUserError

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experiments",
        default=",".join(EXPERIMENTS),
        help="comma-separated registered experiments (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="steps to run for every experiment, the first one not measured "
        f"(default: per experiment, {', '.join(f'{k} {v}' for k, v in DEFAULT_STEPS.items())}, "
        f"else {FALLBACK_STEPS})",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--ref", help="also measure this git commit, right after each experiment")
    parser.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        help="set the config's `compile` field, where the code has one (default: the config's)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change every measured config (dotted key, as spd-run's --override); repeatable",
    )
    parser.add_argument("--json", type=Path, help="save the raw figures to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        overrides = json.loads(args.child_overrides)
        child_main(args.child, args.steps, args.device, args.compile, overrides)
        return
    args.overrides = parse_overrides(args.override)
    if args.steps is not None and args.steps < 2:
        raise SPDUserError(f"--steps {args.steps}: at least 2 (the first step is not measured)")
    if args.json is not None and not args.json.resolve().parent.is_dir():
        raise SPDUserError(f"--json {args.json}: its directory does not exist; create it first")
    names = [n.strip() for n in args.experiments.split(",") if n.strip()]
    out_root = Path(os.environ.get("SPD_OUT_DIR") or "spd_out").expanduser().resolve()
    check_experiments(names, out_root, args.overrides)
    cuda = args.device != "cpu" and torch.cuda.is_available()
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "CPU",
        "command": sys.argv,
        "overrides": args.overrides,
        "new": {"commit": describe_tree(), "tree": str(TREE)},
        "results": {},
    }
    failed = False
    with ref_worktree(args.ref) if args.ref else nullcontext() as ref:
        if ref is not None:
            report["ref"] = {"commit": ref[1], "ref": args.ref}
        trees = [("new", TREE), *([("ref", ref[0])] if ref is not None else [])]
        for name in names:
            steps = args.steps or DEFAULT_STEPS.get(name, FALLBACK_STEPS)
            rows: dict[str, dict[str, Any]] = {}
            report["results"][name] = rows
            for label, tree in trees:
                rows[label] = run_child(tree, name, steps, args, out_root)
                if "error" in rows[label]:
                    failed = True
                    print(f"{name} ({label}): failed: {rows[label]['error']}", file=sys.stderr)
                else:
                    rate = rows[label]["train_steps_per_s"]
                    print(f"{name} ({label}): {rate:.2f} train steps/s", file=sys.stderr)
                if args.json is not None:
                    args.json.write_text(json.dumps(report, indent=2) + "\n")
    threads = {
        r["threads"] for rows in report["results"].values() for r in rows.values() if "threads" in r
    }
    codes = f"new: {report['new']['commit']}"
    if "ref" in report:
        codes += f"; ref: {args.ref} ({report['ref']['commit'][:7]})"
    changed = ", ".join(f"{k}={json.dumps(v)}" for k, v in args.overrides.items()) or "none"
    print(
        f"torch {torch.__version__}, {report['device']}, "
        f"{'/'.join(map(str, sorted(threads))) or '?'} threads; {codes}; overrides: {changed}\n"
    )
    print(table(report["results"], "ref" in report, cuda))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    from spd.errors import run_cli

    run_cli(main)
