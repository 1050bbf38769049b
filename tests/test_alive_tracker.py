"""The alive tracker (docs/method.md, 'Optimisation'): a subcomponent is alive if it fired
within the last n examples; with several ranks, within the last n examples of the global batch."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from spd.train.alive_tracker import AliveTracker


def test_counts_examples_and_resets_on_firing() -> None:
    tracker = AliveTracker({"a": 3}, threshold=0.5, n_examples=10, device=torch.device("cpu"))
    ci = {"a": torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])}
    tracker.update(ci)
    assert tracker.examples_since_fired["a"].tolist() == [0, 4, 4]
    tracker.update({"a": torch.zeros(4, 3)})
    assert tracker.n_alive() == {"a": 3}  # 4 and 8 examples since firing: all below 10
    tracker.update({"a": torch.zeros(4, 3)})
    assert tracker.examples_since_fired["a"].tolist() == [8, 12, 12]
    assert tracker.n_alive() == {"a": 1}


def test_a_cut_batch_counts_every_row_of_the_full_batch() -> None:
    # A step that kept 2 of 64 rows (`spd.losses.row_selection`) still saw 64 examples.
    tracker = AliveTracker({"a": 2}, threshold=0.5, n_examples=100, device=torch.device("cpu"))
    tracker.update({"a": torch.tensor([[0.9, 0.0], [0.0, 0.0]])}, n_examples=64)
    assert tracker.examples_since_fired["a"].tolist() == [0, 64]
    # Positions of a sequence batch count as examples.
    tracker.update({"a": torch.zeros(2, 3, 2)})
    assert tracker.examples_since_fired["a"].tolist() == [6, 70]


def test_ranks_combine_firing_and_sum_their_examples_in_a_real_process_group(
    tmp_path: Path,
) -> None:
    # Two gloo ranks (tests/alive_dp_worker.py). Step 1: rank 0 (4 rows) fires a0, rank 1 (2 rows)
    # fires a1; 6 examples in all → a: [0, 0, 6], b: [6, 6, 6]. Step 2: only rank 1 fires a2 →
    # a: [6, 6, 0], b: [12, 12, 12]; alive (< 10 examples) a: 3, b: 0. The same on both ranks.
    # Counting per rank instead would give rank 0 a: [0, 4, 4] after step 1.
    worker = Path(__file__).with_name("alive_dp_worker.py")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*launcher, str(worker), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = [
        {"a": [0, 0, 6], "b": [6, 6, 6]},
        {"a": [6, 6, 0], "b": [12, 12, 12]},
    ]
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert saved["world_size"] == 2
        counters = [
            {name: c.tolist() for name, c in step["counters"].items()} for step in saved["history"]
        ]
        assert counters == expected, rank
        assert saved["history"][-1]["n_alive"] == {"a": 3, "b": 0}
