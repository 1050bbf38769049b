"""Decompose a TMS target.

    python spd/experiments/tms/tms_decomposition.py spd/experiments/tms/tms_5_2_config.yaml

At the end, the ground-truth scores (MMCS, ML2R) of the layers the config's
`ground_truth_recovery` metrics name (else of the first decomposed layer) and, for models with
identity hidden layers, the number of large subcomponents of each identity layer are printed,
logged to metrics.jsonl (as `final/…`) and written to summary.json. The task itself (data and
summary) is `task.py`; the same runs through `spd/experiments/decompose.py`.
"""

from spd.errors import run_cli
from spd.experiments.decompose import decompose_main


def main() -> None:
    decompose_main(__doc__ or "", script_task="tms")


if __name__ == "__main__":
    run_cli(main)
