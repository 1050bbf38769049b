"""Score a residual-MLP decomposition's CI pattern on one-hot inputs with the current code.

    python scripts/score_resid_mlp.py <run directory, or a checkpoint inside one> [--json]

Prints the scores and the one-line verdict that `resid_mlp_decomposition.py` writes to
summary.json at the end of a run, for any checkpoint: an earlier step of a run, or a run that
finished before a score changed (summary.json keeps what the code of its day computed).
"""

import argparse
import json

from spd.errors import run_cli
from spd.experiments.resid_mlp.scores import ci_pattern_scores, verdict
from spd.models.component_model import ComponentModel


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", help="a resid_mlp run directory or a checkpoint inside one")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON only")
    args = parser.parse_args()
    model, config = ComponentModel.from_pretrained_with_config(args.path)
    scores = ci_pattern_scores(model, config)
    if args.json:
        print(json.dumps(scores, indent=2))
        return
    print(f"{args.path}:")
    for key, value in scores.items():
        print(f"  {key}: {value:g}")
    print(verdict(scores))


if __name__ == "__main__":
    run_cli(main)
