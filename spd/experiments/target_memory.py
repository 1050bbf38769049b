"""Whether training a toy target fits in memory, checked before the training scripts allocate it.

The training scripts build whatever shape a YAML asks for; a typo such as `n_features: 10000000`
would otherwise end in the kernel's out-of-memory killer or a traceback from deep inside torch.
The target is built on the meta device (no memory) to count its parameters and the widths one
example produces, and the step's peak is estimated as its parameters with their gradients and
AdamW state plus every layer's output (and gradient) for the rows of one batch or evaluation.
"""

from collections.abc import Callable

import torch
from torch import nn

from spd.errors import SPDUserError
from spd.train.memory_estimate import GIB, USABLE_SHARE, available_bytes

FLOAT_BYTES = 4
# A parameter, its gradient and AdamW's two moments.
PARAMETER_COPIES = 4
# Each layer's output, its gradient, and the elementwise intermediates of activation and loss.
ACTIVATION_COPIES = 4


def _widths_per_row(model: nn.Module) -> int:
    """Elements one example produces: the outputs of the linear layers, and one row of every
    other matrix (an embedding or a fixed read-in is applied to each example)."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    in_linear = {id(p) for m in linear for p in m.parameters()}
    total = sum(m.out_features + m.in_features for m in linear)
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in in_linear and tensor.dim() == 2:
            total += sum(tensor.shape)
    return total


def target_training_bytes(build: Callable[[], nn.Module], rows: int) -> int:
    """Estimated peak bytes of a training step (or evaluation) over `rows` examples."""
    with torch.device("meta"):
        model = build()
    parameters = sum(p.numel() for p in model.parameters())
    activations = rows * _widths_per_row(model)
    return FLOAT_BYTES * (PARAMETER_COPIES * parameters + ACTIVATION_COPIES * activations)


def check_target_memory(build: Callable[[], nn.Module], rows: int, name: str) -> None:
    """Raise `SPDUserError` when training the target `build` makes (on `rows` examples at a time)
    cannot fit in the memory this machine has available."""
    needed = target_training_bytes(build, rows)
    available = available_bytes(torch.device("cpu"))
    if available is None or needed <= USABLE_SHARE * available:
        return
    raise SPDUserError(
        f"training target {name} does not fit in memory: about {needed / GIB:.2f} GiB for "
        f"{rows} examples at a time, {available / GIB:.2f} GiB available; lower batch_size or "
        "the model's sizes (n_features, d_embed, d_mlp, n_layers, n_hidden)"
    )
