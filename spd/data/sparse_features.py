"""Sparse-feature inputs for the toy models (TMS and residual MLP)."""

from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from spd.data.stream_state import SampledBatches

DataGenerationType = Literal["at_least_zero_active", "exactly_one_active"]


class SparseFeatureData:
    """Each feature independently active with `feature_probability`, value uniform in `value_range`.

    `exactly_one_active` instead activates one random feature per example. Draws come from a
    private generator, so the stream is reproducible from `seed` and independent of the global RNG.
    """

    def __init__(
        self,
        n_features: int,
        feature_probability: float,
        device: torch.device | str = "cpu",
        data_generation_type: DataGenerationType = "at_least_zero_active",
        value_range: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        self.n_features = n_features
        self.feature_probability = feature_probability
        self.device = torch.device(device)
        self.data_generation_type: DataGenerationType = data_generation_type
        self.low, self.high = value_range
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def sample(self, batch_size: int) -> Float[Tensor, "batch n_features"]:
        shape = (batch_size, self.n_features)
        values = torch.rand(shape, generator=self.generator, device=self.device)
        values = self.low + (self.high - self.low) * values
        if self.data_generation_type == "exactly_one_active":
            idx = torch.randint(
                self.n_features, (batch_size,), generator=self.generator, device=self.device
            )
            active = torch.nn.functional.one_hot(idx, self.n_features).to(values.dtype)
        else:
            active = (
                torch.rand(shape, generator=self.generator, device=self.device)
                < self.feature_probability
            ).to(values.dtype)
        return values * active

    def batches(self, batch_size: int) -> SampledBatches:
        """An endless stream of batches that can be checkpointed (see `spd.data.stream_state`)."""
        return SampledBatches(self, batch_size)

    def state_dict(self) -> dict[str, Any]:
        """The private generator's state: everything later draws depend on."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
