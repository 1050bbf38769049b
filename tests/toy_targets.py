"""Tiny target models whose outputs are easy to compute by hand."""

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from spd.config.schema import Config
from spd.experiments.tms.task import TMSTaskConfig


class TwoLinear(nn.Module):
    """fc1 = I (no bias) then fc2 = I with bias [0.5, −0.5], no nonlinearity: out = x + b."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 2, bias=False)
        self.fc2 = nn.Linear(2, 2, bias=True)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(2))
            self.fc2.weight.copy_(torch.eye(2))
            self.fc2.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x: Float[Tensor, "... 2"]) -> Float[Tensor, "... 2"]:
        return self.fc2(self.fc1(x))


class TinyLM(nn.Module):
    """An embedding read out by an `lm_head`: the smallest target with a decomposable embedding."""

    def __init__(self, vocab: int = 3, d_model: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: Int[Tensor, "..."]) -> Float[Tensor, "... vocab"]:
        return self.lm_head(self.embed(tokens))


def two_linear_config(**fields: Any) -> Config:
    """A decomposition config of `TwoLinear` (C 2, both layers), `fields` changed; the target is
    built in the test, so its path is unused."""
    base: dict[str, Any] = {
        "C": 2,
        "target_module_patterns": ["fc1", "fc2"],
        "pretrained_model_class": "tests.toy_targets.TwoLinear",
        "pretrained_model_path": "unused",
        "task_config": TMSTaskConfig(),
    }
    return Config(**{**base, **fields})
