"""`autocast_bf16`: a step's forward passes in bfloat16, its weights and losses in float32.

Under the option the whole micro-batch loss (`spd.losses.batch.batch_loss`, and the compiled
step of `spd.train.compilation`) runs inside `torch.autocast(device, bfloat16)`: the matrix
products of the target pass, the CI functions and the masked passes run in bf16. The parameters
stay float32 (autocast casts copies). What the losses reduce is float32: the target output and
the CI are cast back in `spd.losses.inputs.loss_inputs`, the output divergence casts its
arguments, and the faithfulness loss (a parameter-space loss, no forward pass) is computed with
autocast off (`full_precision`).
"""

from contextlib import AbstractContextManager, nullcontext

import torch

from spd.errors import SPDUserError


def check_autocast(device: torch.device) -> None:
    """Refuse `autocast_bf16` on a device that cannot run bf16 autocast, in one line."""
    supported = torch.amp.autocast_mode.is_autocast_available(device.type)
    if supported and device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    if not supported:
        raise SPDUserError(
            f"autocast_bf16: the device '{device}' has no bfloat16 autocast; "
            "set autocast_bf16: false or run on a CPU or a bf16-capable GPU"
        )


def forward_autocast(enabled: bool, device: torch.device) -> AbstractContextManager[object]:
    """bf16 autocast on `device` when `enabled` (the config's `autocast_bf16`), else nothing."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def full_precision(device: torch.device) -> AbstractContextManager[object]:
    """Autocast switched off inside an autocast region on `device`; nothing outside one."""
    if not torch.is_autocast_enabled(device.type):
        return nullcontext()
    return torch.autocast(device.type, enabled=False)
