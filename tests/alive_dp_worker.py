"""One rank of the multi-rank alive-tracker test (tests/test_alive_tracker.py), under torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node=2 alive_dp_worker.py OUT_DIR

Each rank feeds its own CI batches (of different sizes, firing different subcomponents) to an
`AliveTracker` in a real gloo process group and saves its counters after each update to
OUT_DIR/rank<r>.pt.
"""

import sys
from pathlib import Path

import torch

from spd.train import distributed
from spd.train.alive_tracker import AliveTracker


def ci_batches(rank: int) -> list[dict[str, torch.Tensor]]:
    """Rank 0: 4 rows a step; rank 1: 2 rows. Threshold 0.5."""
    if rank == 0:
        first = {
            "a": torch.tensor([[0.9, 0.0, 0.0]] + [[0.0, 0.0, 0.0]] * 3),
            "b": torch.zeros(4, 3),
        }
        second = {"a": torch.zeros(4, 3), "b": torch.zeros(4, 3)}
    else:
        first = {"a": torch.tensor([[0.0, 0.7, 0.0], [0.0, 0.2, 0.4]]), "b": torch.zeros(2, 3)}
        second = {"a": torch.tensor([[0.0, 0.0, 0.6], [0.0, 0.0, 0.0]]), "b": torch.zeros(2, 3)}
    return [first, second]


def main() -> None:
    out_dir = Path(sys.argv[1])
    cpu = torch.device("cpu")
    distributed.setup(cpu)
    rank = distributed.rank_info()
    tracker = AliveTracker({"a": 3, "b": 3}, threshold=0.5, n_examples=10, device=cpu)
    history = []
    for ci in ci_batches(rank.rank):
        tracker.update(ci)
        history.append({"counters": tracker.state_dict(), "n_alive": tracker.n_alive()})
    torch.save({"world_size": rank.world_size, "history": history}, out_dir / f"rank{rank.rank}.pt")
    distributed.teardown()


if __name__ == "__main__":
    main()
