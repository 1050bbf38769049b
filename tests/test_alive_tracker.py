"""The alive tracker (spec §5): a subcomponent is alive if it fired within the last n examples."""

import torch

from spd.train.alive_tracker import AliveTracker


def test_counts_examples_and_resets_on_firing() -> None:
    tracker = AliveTracker(["a"], C=3, threshold=0.5, n_examples=10, device=torch.device("cpu"))
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
    tracker = AliveTracker(["a"], C=2, threshold=0.5, n_examples=100, device=torch.device("cpu"))
    tracker.update({"a": torch.tensor([[0.9, 0.0], [0.0, 0.0]])}, n_examples=64)
    assert tracker.examples_since_fired["a"].tolist() == [0, 64]
    # Positions of a sequence batch count as examples.
    tracker.update({"a": torch.zeros(2, 3, 2)})
    assert tracker.examples_since_fired["a"].tolist() == [6, 70]
