"""Measure the memory estimate against the real peak RSS of short decomposition runs.

    python scripts/measure_memory.py [--steps 30] [--lm-example DIR] [--override KEY=VALUE]...

Each experiment runs for `--steps` steps at its default batch size under /usr/bin/time -v, in
its own process; the table compares the estimate the run printed (spd/train/memory_estimate.py)
with the process's maximum resident set size. The LM row needs the offline example
(spd/experiments/lm/make_offline_example.py); `--lm-example` is its directory. `--override`
(repeatable, dotted keys as `spd-run --override`) changes every measured config, e.g.
`--override ci_fn_type=global_shared_mlp`.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = {
    "tms_5-2": (
        "spd/experiments/tms/tms_decomposition.py",
        "spd/experiments/tms/tms_5_2_config.yaml",
    ),
    "resid_mlp1": (
        "spd/experiments/resid_mlp/resid_mlp_decomposition.py",
        "spd/experiments/resid_mlp/resid_mlp1_config.yaml",
    ),
    "lm_example_mlp": (
        "spd/experiments/lm/lm_decomposition.py",
        "spd/experiments/lm/lm_example_mlp_config.yaml",
    ),
}
ESTIMATE = re.compile(r"estimated peak memory ([\d.]+) GiB")
MAX_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def measure(
    name: str, steps: int, lm_example: Path | None, extra: list[str]
) -> tuple[float, float]:
    """(estimate, measured peak RSS), both in MiB, of one short run with the `extra` overrides."""
    script, config = RUNS[name]
    overrides = [f"steps={steps}", "device=cpu", *extra]
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "SPD_OUT_DIR": out, "PYTHONPATH": str(REPO)}
        if name.startswith("lm") and lm_example is not None:
            (Path(out) / "lm_offline_example").symlink_to(lm_example.resolve())
        command = ["/usr/bin/time", "-v", sys.executable, script, config, "--no-progress"]
        for override in overrides:
            command += ["--override", override]
        result = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, check=False
        )
    estimate = ESTIMATE.search(result.stdout)
    peak = MAX_RSS.search(result.stderr)
    if result.returncode != 0 or estimate is None or peak is None:
        raise SystemExit(f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return float(estimate.group(1)) * 1024, int(peak.group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lm-example", type=Path, default=None)
    parser.add_argument("--only", nargs="*", default=list(RUNS))
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    print("| experiment | batch | estimate (MiB) | measured peak RSS (MiB) | error |")
    print("|---|---|---|---|---|")
    for name in args.only:
        estimate, peak = measure(name, args.steps, args.lm_example, args.override)
        print(
            f"| {name} | default | {estimate:.0f} | {peak:.0f} | {100 * (estimate - peak) / peak:+.0f} % |",
            flush=True,
        )


if __name__ == "__main__":
    main()
