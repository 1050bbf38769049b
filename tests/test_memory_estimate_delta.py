"""The memory estimate's delta-component terms (spd/train/memory_estimate.py, docs/memory.md):
with `use_delta_component`, every graph-building pass adds Δ = W − V U and its gradient per
decomposed matrix (not for an embedding, which forms only its tokens' rows) and, per row, Δ x and
the delta mask m_Δ of every decomposed layer."""

from typing import Any

import pytest
import torch
import yaml
from torch import nn

from spd.config.loading import config_from_dict
from spd.train.memory_estimate import ACTIVATION_OVERHEAD, FLOAT_BYTES, step_bytes
from tests.paths import TMS_5_2_CONFIG

ROWS = 8


def _config(use_delta: bool) -> Any:
    data = yaml.safe_load(TMS_5_2_CONFIG.read_text())
    changes = {
        "target_module_patterns": ["0", "1"],
        "tied_weights": None,
        "C": 2,
        "batch_size": ROWS,
        # One evaluation row, so that the training step is the larger side of the estimate.
        "eval_batch_size": 1,
        "use_delta_component": use_delta,
    }
    return config_from_dict({**data, **changes})


# (target, elements of the Δ matrices per pass, elements per row per pass)
CASES = {
    # Linear 3→4 and 4→2: Δ is 3×4 and 4×2, each with its gradient; Δ x and m_Δ per row.
    "two_linear": (
        nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)),
        2 * (12 + 8),
        (4 + 1) + (2 + 1),
    ),
    # An embedding (vocab 100, width 3) forms no 100×3 Δ, only its tokens' rows.
    "embedding_then_linear": (
        nn.Sequential(nn.Embedding(100, 3), nn.Linear(3, 2)),
        2 * 6,
        (3 + 1) + (2 + 1),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_the_delta_component_adds_its_matrices_and_per_row_outputs(case: str) -> None:
    target, matrix_elements, row_elements = CASES[case]
    cpu = torch.device("cpu")
    off = step_bytes(_config(False), target, cpu)
    on = step_bytes(_config(True), target, cpu)
    # tms_5-2's losses build 3 graphs a step: one stochastic sample and a layer-wise pass per
    # layer (two layers).
    passes = 3
    expected = FLOAT_BYTES * (
        ROWS * passes * row_elements * ACTIVATION_OVERHEAD + passes * matrix_elements
    )
    assert on - off == pytest.approx(expected, abs=1)
