"""Speed and memory of `spd-analyze` on a run directory, for several token counts.

    python scripts/benchmark_analysis.py RUN_DIR [--tokens 4096 16384 65536] [--batch-size 4]

Each count runs in a fresh subprocess (a fresh pass, `--fresh`, into a scratch copy of the run's
analysis folder), so that its peak resident memory (ru_maxrss) is its own. Reported per count:
tokens/s of the streaming loop (model load and data set-up excluded), the accumulator's bytes
(`AnalysisAccumulator.nbytes`), the peak of Python-level allocations of the whole command
(tracemalloc) and the process's peak RSS. Flat memory means the last three do not grow with the token count.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

from spd.analysis.analyze import PassOptions, analyze_run


def measure(run_dir: Path, n_tokens: int, batch_size: int) -> dict[str, float]:
    """One fresh pass in this process; returns its figures."""
    tracemalloc.start()
    path = analyze_run(
        run_dir,
        PassOptions(n_tokens=n_tokens, batch_size=batch_size, fresh=True, show_progress=False),
    )
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    meta = json.loads(path.read_text())
    return {
        "n_tokens": meta["n_tokens"],
        "tokens_per_s": meta["last_pass_tokens_per_second"],
        "accumulator_mb": meta["accumulator_bytes"] / 2**20,
        "tracemalloc_peak_mb": traced_peak / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.run_dir, args.tokens[0], args.batch_size)))
        return
    print("| tokens | tokens/s | accumulator (MB) | tracemalloc peak (MB) | peak RSS (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.tokens:
        with tempfile.TemporaryDirectory() as scratch:
            # A copy of the run without its analysis folder, so the benchmark leaves that alone.
            copy = Path(scratch) / args.run_dir.name
            shutil.copytree(args.run_dir, copy, ignore=shutil.ignore_patterns("analysis"))
            cmd = [sys.executable, __file__, str(copy), "--tokens", str(n), "--child"]
            cmd += ["--batch-size", str(args.batch_size)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        f = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {int(f['n_tokens'])} | {f['tokens_per_s']:.0f} | {f['accumulator_mb']:.1f} | "
            f"{f['tracemalloc_peak_mb']:.1f} | {f['peak_rss_mb']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
