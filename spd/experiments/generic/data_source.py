"""Data sources named by import path: the input batches of the `generic` task.

A data source is a function (or a class) importable as `package.module:name` (or
`package.module.name`). It is called with keyword arguments only:

    name(batch_size=B, seed=S, **data_params)

and must return an iterable of input batches: tensors whose first axis is the batch (size B), as
the target's `forward` takes them. A finite iterable is started again with the next seed when it
runs out (a new epoch), so a source over a fixed data set works as well as an endless generator.
Resuming a run replays the batches drawn so far, so a source should give the same batches for
the same seed.
"""

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from spd.errors import SPDUserError
from spd.loading.user_modules import import_user_module

DataSource = Callable[..., object]  # checked when called: it must return an iterable of tensors


def import_data_source(path: str) -> DataSource:
    """The callable named by `path`; an import problem is one `SPDUserError` line."""
    module_name, sep, name = path.partition(":")
    if not sep:
        module_name, _, name = path.rpartition(".")
    where = f"task_config.data_source '{path}'"
    if not module_name or not name:
        raise SPDUserError(f"{where} must be an import path like 'mypkg.data:make_batches'")
    module = import_user_module(module_name, where, "; is it on PYTHONPATH?")
    source = getattr(module, name, None)
    if source is None:
        raise SPDUserError(f"{where}: module '{module_name}' has no attribute '{name}'")
    if not callable(source):
        raise SPDUserError(
            f"{where}: '{name}' is a {type(source).__name__}, not a function or class"
        )
    return source


def _open(
    source: DataSource, path: str, batch_size: int, seed: int, params: dict[str, Any]
) -> Iterator[Tensor]:
    try:
        batches = source(batch_size=batch_size, seed=seed, **params)
    except TypeError as err:
        raise SPDUserError(
            f"task_config.data_source '{path}' cannot be called with batch_size, seed and "
            f"data_params {sorted(params)}: {err}"
        ) from None
    if isinstance(batches, Tensor) or not isinstance(batches, Iterable):
        raise SPDUserError(
            f"task_config.data_source '{path}' returned a {type(batches).__name__}; it must "
            "return (or be) an iterable of batch tensors, e.g. a generator"
        )
    return iter(batches)


def check_batch(batch: object, path: str, batch_size: int) -> Tensor:
    """`batch` if it is a tensor whose first axis is `batch_size`; otherwise a one-line error."""
    if not isinstance(batch, Tensor):
        raise SPDUserError(
            f"task_config.data_source '{path}' yielded a {type(batch).__name__}; "
            "each batch must be one tensor, the target's input"
        )
    if batch.ndim == 0 or batch.shape[0] != batch_size:
        raise SPDUserError(
            f"task_config.data_source '{path}' yielded a batch of shape {tuple(batch.shape)}; "
            f"its first axis must be the batch size {batch_size}"
        )
    return batch


def source_batches(
    path: str, batch_size: int, seed: int, params: dict[str, Any], device: torch.device
) -> Iterator[Tensor]:
    """Endless batches of the source on `device`; epoch k (k = 0, 1, …) is seeded `seed + k`."""
    source = import_data_source(path)
    for epoch in itertools.count():
        drawn = 0
        for batch in _open(source, path, batch_size, seed + epoch, params):
            drawn += 1
            yield check_batch(batch, path, batch_size).to(device)
        if drawn == 0:
            raise SPDUserError(f"task_config.data_source '{path}' yielded no batch")


def check_target_takes(target: nn.Module, batch: Tensor, path: str) -> None:
    """Run the target on one batch; a batch it cannot take is a one-line error."""
    try:
        with torch.no_grad():
            target(batch)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        first_line = str(err).split("\n")[0]
        raise SPDUserError(
            f"task_config.data_source '{path}' yields batches of shape {tuple(batch.shape)} and "
            f"dtype {batch.dtype} that the target {type(target).__name__} cannot take: {first_line}"
        ) from None
