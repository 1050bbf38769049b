"""The residual-MLP target: a fixed random embedding, a residual stream and ReLU MLP blocks.

    h = W_E x;   for each layer:  h = h + mlp_out(relu(mlp_in(h)));   out = W_Eᵀ h

`W_E` (n_features × d_embed) has unit-norm rows, is drawn once from a seed and never trained;
it is a buffer, so it is saved with the state dict but is not a parameter. The blocks are
`layers.N.mlp_in` (d_embed → d_mlp) and `layers.N.mlp_out` (d_mlp → d_embed), `nn.Linear`
without bias, which is what SPD decomposes.
"""

from pathlib import Path

import torch
import yaml
from jaxtyping import Float
from pydantic import NonNegativeInt, PositiveInt
from torch import Tensor, nn

from spd.config.loading import parse_yaml_text, read_text_file
from spd.config.schema import StrictModel
from spd.persistence.atomic_files import atomic_torch_save, atomic_write_text


class ResidMLPModelConfig(StrictModel):
    """Shape of a residual-MLP target; `d_mlp` is the number of neurons of each layer."""

    n_features: PositiveInt
    d_embed: PositiveInt = 1000
    d_mlp: PositiveInt
    n_layers: PositiveInt
    embed_seed: NonNegativeInt = 0


def random_unit_embedding(
    n_features: int, d_embed: int, seed: int
) -> Float[Tensor, "n_features d_embed"]:
    """Gaussian rows normalised to unit length, reproducible from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.randn(n_features, d_embed, generator=generator)
    return embedding / embedding.norm(dim=1, keepdim=True)


class MLPBlock(nn.Module):
    """One residual block's MLP: mlp_out(relu(mlp_in(h)))."""

    def __init__(self, d_embed: int, d_mlp: int) -> None:
        super().__init__()
        self.mlp_in = nn.Linear(d_embed, d_mlp, bias=False)
        self.mlp_out = nn.Linear(d_mlp, d_embed, bias=False)

    def forward(self, h: Float[Tensor, "... d_embed"]) -> Float[Tensor, "... d_embed"]:
        return self.mlp_out(torch.relu(self.mlp_in(h)))


class ResidMLP(nn.Module):
    """Residual MLP of `n_layers` blocks over a fixed embedding (see the module docstring)."""

    # Each batch row is processed on its own: SPD may skip rows that cannot change a loss
    # (spd.losses.row_selection).
    independent_rows = True

    TRAIN_HINT = "train it with: python spd/experiments/resid_mlp/train_resid_mlp.py --experiment resid_mlpN (N = 1, 2, 3)"

    W_E: Tensor

    def __init__(self, config: ResidMLPModelConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer(
            "W_E", random_unit_embedding(config.n_features, config.d_embed, config.embed_seed)
        )
        self.layers = nn.ModuleList(
            MLPBlock(config.d_embed, config.d_mlp) for _ in range(config.n_layers)
        )

    def forward(self, x: Float[Tensor, "... n_features"]) -> Float[Tensor, "... n_features"]:
        h = x @ self.W_E
        for layer in self.layers:
            h = h + layer(h)
        return h @ self.W_E.T

    def save(self, directory: Path, train_config: dict[str, object]) -> None:
        """Write `model.pth` (state dict, embedding included) and `train_config.yaml`."""
        directory.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.state_dict(), directory / "model.pth")
        atomic_write_text(
            directory / "train_config.yaml", yaml.safe_dump(train_config, sort_keys=False)
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ResidMLP":
        """Load from a directory holding `model.pth` and `train_config.yaml` (with a `model` block)."""
        directory = Path(path)
        # Read strictly (UTF-8, no repeated keys): a damaged file must not load with a guessed meaning.
        config_file = directory / "train_config.yaml"
        train_config = parse_yaml_text(
            read_text_file(config_file, "target train config"), str(config_file)
        )
        model = cls(ResidMLPModelConfig.model_validate(train_config["model"]))
        state = torch.load(directory / "model.pth", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model
