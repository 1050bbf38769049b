"""Run the TMS experiments at full length and check them against the paper's results.

    python scripts/reproduce_tms.py                          # the four configs, seed 0
    python scripts/reproduce_tms.py --experiments tms_5-2 --seeds 1,2,3,4
    python scripts/reproduce_tms.py --collect OUT_ROOT       # only tabulate finished runs

Criteria (issue 2): MMCS ≥ 0.999 and 0.97 ≤ ML2R ≤ 1.04 for linear1, and for the -id models exactly
`n_hidden` large subcomponents in the identity layer. Prints a markdown table, exits 1 if a run fails.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from spd.experiments.registry import get_experiment

MMCS_MIN = 0.999
ML2R_RANGE = (0.97, 1.04)
IDENTITY_SUBCOMPONENTS = {"tms_5-2-id": 2, "tms_40-10-id": 10}


def verdict(experiment: str, summary: dict[str, float]) -> tuple[bool, str]:
    """Whether a finished run meets the criteria, and a short description."""
    mmcs, ml2r = summary["mmcs/linear1"], summary["ml2r/linear1"]
    ok = mmcs >= MMCS_MIN and ML2R_RANGE[0] <= ml2r <= ML2R_RANGE[1]
    notes = f"MMCS {mmcs:.4f}, ML2R {ml2r:.4f}"
    if experiment in IDENTITY_SUBCOMPONENTS:
        n = int(summary["n_large_subcomponents/hidden_layers.0"])
        ok = ok and n == IDENTITY_SUBCOMPONENTS[experiment]
        notes += f", identity-layer subcomponents {n} (want {IDENTITY_SUBCOMPONENTS[experiment]})"
    return ok, notes


def run_one(experiment: str, seed: int, out_root: Path, extra: list[str]) -> Path:
    """Run one experiment in a subprocess; returns its run directory."""
    spec = get_experiment(experiment)
    name = f"{experiment}-seed{seed}"
    cmd = [
        sys.executable,
        str(spec.decomp_script),
        str(spec.config_path),
        "--no-progress",
        "--override",
        f"seed={seed}",
        "--override",
        f"run_name={name}",
        *extra,
    ]
    subprocess.run(cmd, check=True, env={**os.environ, "SPD_OUT_DIR": str(out_root)})
    return sorted(out_root.glob(f"*-{name}"))[-1]


def collect(out_root: Path) -> list[tuple[str, int, Path]]:
    """Finished TMS runs at any depth under `out_root` (a run root of `reproduce_tms.py` or of
    `spd-run`, which nests runs in launch directories): (experiment, seed, run dir)."""
    runs = []
    for summary in sorted(out_root.rglob("summary.json")):
        config = yaml.safe_load((summary.parent / "final_config.yaml").read_text())
        if config["task_config"]["task_name"] != "tms":
            continue
        experiment = Path(config["pretrained_model_path"]).name
        runs.append((experiment, int(config["seed"]), summary.parent))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiments", default="tms_5-2,tms_5-2-id,tms_40-10,tms_40-10-id")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=Path("spd_out/reproduce_tms"))
    parser.add_argument(
        "--collect", type=Path, help="tabulate finished runs under this root instead of running"
    )
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.collect:
        runs = collect(args.collect)
    else:
        extra = [a for o in args.override for a in ("--override", o)]
        runs = [
            (e, s, run_one(e, s, args.out, extra))
            for e in args.experiments.split(",")
            for s in (int(x) for x in args.seeds.split(","))
        ]
    print("| experiment | seed | steps | result | pass |\n|---|---|---|---|---|")
    failed = 0
    for experiment, seed, run_dir in runs:
        summary = json.loads((run_dir / "summary.json").read_text())
        steps = yaml.safe_load((run_dir / "final_config.yaml").read_text())["steps"]
        ok, notes = verdict(experiment, summary)
        failed += not ok
        print(f"| {experiment} | {seed} | {steps} | {notes} | {'yes' if ok else 'NO'} |")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
