"""Data parallelism: one process per rank, started by `torchrun`, averaging gradients and metrics.

A process learns its place from the variables `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK).
Without them it is the only rank, and every helper here is a no-op, so single-process code paths
run unchanged. The process group uses `nccl` when the run's device is CUDA and `gloo` otherwise.
"""

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from jaxtyping import Bool
from torch import Tensor, nn

from spd.errors import SPDUserError

# Seeds of rank r's data and mask streams are offset by r × this (a prime, so that the streams of
# different ranks never coincide with the eval stream's fixed offset or with each other).
RANK_SEED_STRIDE = 104_729


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in a data-parallel run."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and reports to sinks."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SPDUserError(f"environment variable {name}='{raw}' must be an integer") from None


def rank_info() -> RankInfo:
    """Rank, world size and local rank from the environment (0, 1, 0 when not under torchrun)."""
    info = RankInfo(
        rank=_env_int("RANK", 0),
        world_size=_env_int("WORLD_SIZE", 1),
        local_rank=_env_int("LOCAL_RANK", 0),
    )
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise SPDUserError(
            f"inconsistent RANK={info.rank} / WORLD_SIZE={info.world_size} in the environment"
        )
    return info


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def device_for_rank(device: torch.device) -> torch.device:
    """Under torchrun each rank of a CUDA run takes the GPU with its local rank."""
    if device.type != "cuda" or not launched_by_torchrun():
        return device
    local = torch.device("cuda", rank_info().local_rank)
    torch.cuda.set_device(local)
    return local


def setup(device: torch.device) -> None:
    """Join the process group of a torchrun launch (idempotent; nothing to do otherwise)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)


def teardown() -> None:
    """Leave the process group, if this process joined one.

    All ranks leave together: rank 0 still writes the summary and report after training, and a
    rank that destroyed its group and exited meanwhile could abort the others' gloo threads.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    return rank_info().is_main


def rank_seed(seed: int, rank: int | None = None) -> int:
    """The seed of this rank's own stream derived from a run's seed (unchanged on rank 0)."""
    return seed + RANK_SEED_STRIDE * (rank_info().rank if rank is None else rank)


def _reduce_device() -> torch.device:
    # nccl reduces CUDA tensors only; gloo reduces CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace every gradient by its mean over ranks (one collective on a flat buffer)."""
    if not dist.is_initialized():
        return
    params = list(params)
    for p in params:
        # A rank whose loss did not reach a parameter still has to take part in the reduction.
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    average_tensors([p.grad for p in params if p.grad is not None])


def average_tensors(tensors: Sequence[Tensor]) -> None:
    """Replace each tensor by its mean over ranks, in place (one collective on a flat buffer)."""
    if not dist.is_initialized() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors]).to(_reduce_device())
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def broadcast_tensors(tensors: Sequence[Tensor]) -> None:
    """Copy rank 0's values into each tensor, in place, on every rank."""
    if not dist.is_initialized():
        return
    for t in tensors:
        buffer = t.detach().to(_reduce_device())
        dist.broadcast(buffer, src=0)
        t.copy_(buffer)


def average_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The mean of each metric over ranks (every rank must pass the same keys)."""
    if not dist.is_initialized() or not metrics:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor(
        [float(metrics[k]) for k in keys], dtype=torch.float64, device=_reduce_device()
    )
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, values.tolist(), strict=True)}


def combine_firing(fired: Bool[Tensor, "..."], n_examples: int) -> tuple[Bool[Tensor, "..."], int]:
    """Whether each subcomponent fired on any rank, and the examples counted over all ranks.

    One collective: the firing flags and the count are summed together.
    """
    if not dist.is_initialized():
        return fired, n_examples
    device = _reduce_device()
    packed = torch.cat(
        [fired.flatten().long().to(device), torch.tensor([n_examples], device=device)]
    )
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    any_fired = (packed[:-1] > 0).view(fired.shape).to(fired.device)
    return any_fired, int(packed[-1])
