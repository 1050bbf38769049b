"""Decompose a residual-MLP target.

    python spd/experiments/resid_mlp/resid_mlp_decomposition.py \
        spd/experiments/resid_mlp/resid_mlp1_config.yaml

At the end the CI pattern on one-hot inputs (value 0.75) is scored, printed, logged to
metrics.jsonl (as `final/…`) and written to summary.json, followed by a one-line verdict: how
many features have exactly one dedicated mlp_in subcomponent (CI > 0.5 on that feature's one-hot
input and ≤ 0.1 on every other feature's) in each layer that serves them (at most one in every
block's mlp_in, at least one in some),
how many mlp_out subcomponents (all blocks together) are causally important for nearly
every feature, and how many are important for any feature at all, with how many of those read
exactly one neuron, and how many of the target's neurons the one-hot inputs switch on nearly
always (a subcomponent that reads one neuron can be dense only if its neuron is). The spec
expects one dedicated subcomponent per feature and d_mlp (total) dense mlp_out subcomponents.
"""

from spd.errors import run_cli
from spd.experiments.decompose import decompose_main


def main() -> None:
    decompose_main(__doc__ or "", script_task="resid_mlp")


if __name__ == "__main__":
    run_cli(main)
