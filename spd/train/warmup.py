"""The faithfulness warm-up: before a fresh run's first step, U and V alone are fitted to the
target weights (`faithfulness_warmup_steps` AdamW steps on the faithfulness loss).

The warm-up has an AdamW of its own (`faithfulness_warmup_lr`, `faithfulness_warmup_weight_decay`),
discarded afterwards, so the main optimiser starts with empty moments as without a warm-up. The
CI functions are not in it and stay untouched. It draws no random numbers. A resumed run does not
warm up again: its checkpoint already holds the warmed-up factors.
"""

import torch
from torch import nn

from spd.config.schema import Config
from spd.losses.terms.faithfulness import faithfulness_loss
from spd.models.component_model import ComponentModel
from spd.train import distributed


def component_parameters(model: ComponentModel) -> list[nn.Parameter]:
    """The trained factors U and V of every decomposed module (a tied copy once)."""
    return [p for comp in model.components.values() for p in comp.parameters() if p.requires_grad]


def faithfulness_warmup(model: ComponentModel, config: Config) -> None:
    """`config.faithfulness_warmup_steps` AdamW steps on ‖W − UV‖² over U and V only (none if 0).

    Under data parallelism the gradients are averaged over ranks as in a training step (they
    agree anyway: the loss reads no data and every rank starts from the same factors).
    """
    if config.faithfulness_warmup_steps == 0:
        return
    params = component_parameters(model)
    optimizer = torch.optim.AdamW(
        model.optimizer_param_groups(params),
        lr=config.faithfulness_warmup_lr,
        weight_decay=config.faithfulness_warmup_weight_decay,
    )
    for _ in range(config.faithfulness_warmup_steps):
        optimizer.zero_grad(set_to_none=True)
        faithfulness_loss(model).backward()
        distributed.average_gradients(params)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
