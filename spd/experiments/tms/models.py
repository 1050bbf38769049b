"""The TMS target: x̂ = ReLU(Wᵀ (I…) W x + b), with W tied between `linear1` and `linear2`."""

from pathlib import Path
from typing import Literal

import torch
import yaml
from jaxtyping import Float
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import Tensor, nn
from torch.nn.utils import parametrize

from spd.config.schema import StrictModel
from spd.experiments.train_hints import train_hint
from spd.loading.original_targets import OriginalTarget, find_original_target
from spd.loading.targets import read_train_config
from spd.loading.weights_only import load_weights_only


class TMSModelConfig(StrictModel):
    """Shape of a TMS target."""

    n_features: PositiveInt = Field(description="Input (and output) features")
    n_hidden: PositiveInt = Field(description="Hidden dimension the features are squeezed into")
    n_hidden_layers: NonNegativeInt = Field(
        default=0, description="Frozen identity layers between linear1 and linear2 (the -id models)"
    )
    # Xavier-normal, as in the original TMS work: with PyTorch's default (uniform ±1/√n_features)
    # every seed we tried for 40-10 left features dead. The shipped 5-2 targets were trained with
    # the default and record it.
    init: Literal["xavier_normal", "torch_default"] = Field(
        default="xavier_normal", description="Initialisation of W when training from scratch"
    )


class _TransposeOf(nn.Module):
    """Parametrisation that makes a weight the transpose of another module's weight."""

    def __init__(self, source: nn.Linear) -> None:
        super().__init__()
        self._source = (source,)  # a tuple keeps it out of the module tree

    def forward(self, _: Tensor) -> Tensor:
        return self._source[0].weight.T


class TMSModel(nn.Module):
    """`linear1` = W (features → hidden, no bias), optional frozen identity `hidden_layers`,
    `linear2` = Wᵀ (hidden → features, with bias), ReLU on the output.

    While training the target, `tie_weights()` makes linear2's weight a live transpose of
    linear1's; `untie_weights()` freezes the current value into a plain `Linear` (what SPD sees).
    """

    # Each batch row is processed on its own: SPD may skip rows that cannot change a loss
    # (spd.losses.row_selection).
    independent_rows = True

    @classmethod
    def train_hint(cls, missing: str) -> str:
        """How to train the missing target `missing` (a shipped recipe's name, or the user's own)."""
        here = Path(__file__).parent
        return train_hint(here / "train_tms.py", here / "train_configs", here / "targets", missing)

    def __init__(self, config: TMSModelConfig) -> None:
        super().__init__()
        self.config = config
        self.linear1 = nn.Linear(config.n_features, config.n_hidden, bias=False)
        if config.init == "xavier_normal":
            nn.init.xavier_normal_(self.linear1.weight)
        self.hidden_layers = nn.ModuleList()
        for _ in range(config.n_hidden_layers):
            layer = nn.Linear(config.n_hidden, config.n_hidden, bias=False)
            with torch.no_grad():
                layer.weight.copy_(torch.eye(config.n_hidden))
            layer.requires_grad_(False)
            self.hidden_layers.append(layer)
        self.linear2 = nn.Linear(config.n_hidden, config.n_features, bias=True)
        with torch.no_grad():
            self.linear2.weight.copy_(self.linear1.weight.T)

    def forward(self, x: Float[Tensor, "... n_features"]) -> Float[Tensor, "... n_features"]:
        h = self.linear1(x)
        for layer in self.hidden_layers:
            h = layer(h)
        return torch.relu(self.linear2(h))

    def tie_weights(self) -> None:
        parametrize.register_parametrization(self.linear2, "weight", _TransposeOf(self.linear1))

    def untie_weights(self) -> None:
        parametrize.remove_parametrizations(self.linear2, "weight", leave_parametrized=True)
        self.linear2.weight.requires_grad_(False)
        with torch.no_grad():
            self.linear2.weight.copy_(self.linear1.weight.T)

    def save(self, directory: Path, train_config: dict[str, object]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / "model.pth")
        (directory / "train_config.yaml").write_text(yaml.safe_dump(train_config, sort_keys=False))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "TMSModel":
        """Load from a directory holding `model.pth` and `train_config.yaml` (with a `model` block),
        or from the original implementation's `tms.pth` + `tms_train_config.yaml` (the file or its
        directory; see `spd.loading.original_targets`)."""
        directory = Path(path)
        original = None if (directory / "model.pth").is_file() else find_original_target(directory)
        if original is not None:
            return cls._from_original(original)
        train_config = read_train_config(directory)
        model = cls(TMSModelConfig.model_validate(train_config["model"]))
        model.load_state_dict(load_weights_only(directory / "model.pth", "target weights"))
        return model

    @classmethod
    def _from_original(cls, target: OriginalTarget) -> "TMSModel":
        block = target.model_block()
        model = cls(
            TMSModelConfig(
                n_features=block["n_features"],
                n_hidden=block["n_hidden"],
                n_hidden_layers=block.get("n_hidden_layers", 0),
            )
        )
        state = load_weights_only(target.weights, "target weights")
        # A tied target's linear2 weight is linear1's transpose whether or not it was stored.
        if "linear2.weight" not in state and "linear1.weight" in state:
            state["linear2.weight"] = state["linear1.weight"].T.contiguous()
        model.load_state_dict(state)
        for layer in model.hidden_layers:
            layer.requires_grad_(False)
        return model
