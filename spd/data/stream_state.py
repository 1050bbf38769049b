"""Data streams whose position survives a checkpoint.

A stream that can say where it is implements `StatefulStream` (an iterator of batches with
`state_dict()` / `load_state_dict()`); `SampledBatches` makes one from any sampler that keeps its
randomness in its own state (e.g. `SparseFeatureData`). `optimize()` wraps every stream it is
given in a `TrackedStream`, which checkpoints a `StatefulStream` through its own state and any
other iterator by the number of batches drawn, replaying that many on resume.
"""

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class StatefulStream(Protocol):
    """An endless iterator of batches that can save and restore its position."""

    def __next__(self) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StatefulSampler(Protocol):
    """Draws batches of a requested size; its state decides every later draw."""

    def sample(self, batch_size: int) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SampledBatches:
    """An endless `StatefulStream` of `sampler.sample(batch_size)`; its state is the sampler's."""

    def __init__(self, sampler: StatefulSampler, batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size

    def __iter__(self) -> "SampledBatches":
        return self

    def __next__(self) -> Tensor:
        return self.sampler.sample(self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


class TrackedStream:
    """Wraps a stream, counting the batches drawn so any stream can be checkpointed.

    A `StatefulStream` is restored from its own state; any other iterator is fast-forwarded by
    drawing and discarding as many batches as had been drawn (exact for deterministic streams,
    but it costs the time of producing them again).
    """

    def __init__(self, inner: Iterator[Tensor]) -> None:
        self.inner = inner
        self.drawn = 0

    def __iter__(self) -> "TrackedStream":
        return self

    def __next__(self) -> Tensor:
        batch = next(self.inner)
        self.drawn += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        own = self.inner.state_dict() if isinstance(self.inner, StatefulStream) else None
        return {"drawn": self.drawn, "state": own}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["state"] is not None and isinstance(self.inner, StatefulStream):
            self.inner.load_state_dict(state["state"])
        else:
            for _ in range(state["drawn"] - self.drawn):
                next(self.inner)
        self.drawn = state["drawn"]
