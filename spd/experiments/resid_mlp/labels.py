"""The residual-MLP task's labels, y_i = x_i + ReLU(c_i · x_i), and their coefficients on disk.

The task of docs/method.md has every coefficient c_i = 1 (y = x + ReLU(x)). The coefficients a target was
trained with are written beside it (`label_coeffs.json`) so that its loss can be checked later
against the very labels it learnt.
"""

import json
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from spd.persistence.atomic_files import atomic_write_text

LABEL_COEFFS_FILE = "label_coeffs.json"


def residual_relu_labels(
    x: Float[Tensor, "... n_features"], coeffs: Float[Tensor, " n_features"]
) -> Float[Tensor, "... n_features"]:
    """y_i = x_i + ReLU(c_i · x_i), feature by feature."""
    return x + torch.relu(coeffs * x)


def save_label_coeffs(directory: Path, coeffs: Float[Tensor, " n_features"]) -> None:
    """Write the coefficients as a JSON list to `<directory>/label_coeffs.json`."""
    atomic_write_text(directory / LABEL_COEFFS_FILE, json.dumps(coeffs.tolist()) + "\n")


def load_label_coeffs(directory: Path) -> Float[Tensor, " n_features"]:
    """Read the coefficients written by `save_label_coeffs`."""
    return torch.tensor(json.loads((directory / LABEL_COEFFS_FILE).read_text()))
