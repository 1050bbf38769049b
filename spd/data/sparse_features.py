"""Sparse-feature inputs for the toy models (TMS and residual MLP)."""

import hashlib
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from spd.data.stream_state import SampledBatches

DataGenerationType = Literal["at_least_zero_active", "exactly_one_active"]
_told_device_change = False  # the notice below is printed once per process, not per stream


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
        return {"generator": self.generator.get_state(), "device_type": self.device.type}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved stream; across device types, continue a fresh one (with a notice).

        CPU and CUDA generators have different state formats, so a run saved on a GPU and
        continued on a CPU (or the reverse) cannot replay the saved stream. It continues with a
        generator seeded from the saved state instead: still reproducible, not bit-identical to
        the uninterrupted run.
        """
        saved: Tensor = state["generator"]
        # Checkpoints written before the device type was recorded: the state's size tells.
        same_size = saved.numel() == self.generator.get_state().numel()
        saved_type = state.get("device_type", self.device.type if same_size else "another device")
        if saved_type == self.device.type:
            self.generator.set_state(saved)
            return
        seed = int.from_bytes(hashlib.sha256(saved.numpy().tobytes()).digest()[:7], "little")
        self.generator.manual_seed(seed)
        global _told_device_change
        if not _told_device_change:
            print(
                f"spd: the data streams were saved on {saved_type} and continue on "
                f"{self.device.type} from new seeds; the rest of the run is reproducible but not "
                "bit-identical to a run that never stopped",
                flush=True,
            )
            _told_device_change = True
