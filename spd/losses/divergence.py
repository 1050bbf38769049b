"""The output divergence D(pred, target) that every reconstruction term measures."""

import torch
import torch.nn.functional as F
from torch import Tensor

from spd.config.schema import OutputLossType


def _at_least_float32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def output_divergence(pred: Tensor, target: Tensor, loss_type: OutputLossType) -> Tensor:
    """`mse`: mean over all elements. `kl`: KL(target ‖ pred) over the last axis, mean over the rest.

    Reduced in float32 at least: under `autocast_bf16` the masked output is bf16."""
    pred, target = _at_least_float32(pred), _at_least_float32(target)
    if loss_type == "mse":
        return F.mse_loss(pred, target)
    log_p_target = F.log_softmax(target, dim=-1)
    log_p_pred = F.log_softmax(pred, dim=-1)
    kl = (log_p_target.exp() * (log_p_target - log_p_pred)).sum(-1)
    return kl.mean()
