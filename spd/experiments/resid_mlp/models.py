"""The residual-MLP target: a fixed random embedding, a residual stream and ReLU MLP blocks.

    h = W_E x;   for each layer:  h = h + mlp_out(relu(mlp_in(h)));   out = W_Eᵀ h

`W_E` (n_features × d_embed) has unit-norm rows, is drawn once from a seed and never trained;
it is a buffer, so it is saved with the state dict but is not a parameter. The blocks are
`layers.N.mlp_in` (d_embed → d_mlp) and `layers.N.mlp_out` (d_mlp → d_embed), `nn.Linear`
without bias, which is what SPD decomposes. Targets of the original implementation may differ in
three ways, each a field of `ResidMLPModelConfig`: GELU instead of ReLU, MLP biases, and a stored
unembedding `W_U` in place of W_Eᵀ.
"""

from pathlib import Path
from typing import Literal

import torch
import yaml
from jaxtyping import Float
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import Tensor, nn

from spd.config.schema import StrictModel
from spd.experiments.train_hints import train_hint
from spd.loading.original_targets import OriginalTarget, find_original_target
from spd.loading.targets import read_train_config
from spd.loading.weights_only import load_weights_only
from spd.models.low_rank_stream import LowRankStream, read_stream, write_stream
from spd.persistence.atomic_files import atomic_torch_save, atomic_write_text


class ResidMLPModelConfig(StrictModel):
    """Shape of a residual-MLP target; `d_mlp` is the number of neurons of each layer."""

    n_features: PositiveInt = Field(description="Input features (one-hot directions of W_E)")
    d_embed: PositiveInt = Field(default=1000, description="Width of the residual stream")
    d_mlp: PositiveInt = Field(description="Neurons of each MLP layer")
    n_layers: PositiveInt = Field(description="MLP layers (blocks mlp_in, mlp_out)")
    embed_seed: NonNegativeInt = Field(
        default=0, description="Seed of the fixed random unit-norm embedding W_E"
    )
    act_fn: Literal["relu", "gelu"] = Field(
        default="relu", description="The MLP nonlinearity (the original's targets may use gelu)"
    )
    mlp_bias: bool = Field(
        default=False, description="Whether mlp_in and mlp_out have biases (kept, not decomposed)"
    )
    own_unembed: bool = Field(
        default=False,
        description="Read off with a stored W_U (d_embed × n_features) instead of W_Eᵀ, as the "
        "original's targets do",
    )


def random_unit_embedding(
    n_features: int, d_embed: int, seed: int
) -> Float[Tensor, "n_features d_embed"]:
    """Gaussian rows normalised to unit length, reproducible from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.randn(n_features, d_embed, generator=generator)
    return embedding / embedding.norm(dim=1, keepdim=True)


class MLPBlock(nn.Module):
    """One residual block's MLP: mlp_out(act(mlp_in(h))), act ReLU (or GELU)."""

    def __init__(self, d_embed: int, d_mlp: int, act_fn: str = "relu", bias: bool = False) -> None:
        super().__init__()
        self.mlp_in = nn.Linear(d_embed, d_mlp, bias=bias)
        self.mlp_out = nn.Linear(d_mlp, d_embed, bias=bias)
        self.act = nn.GELU() if act_fn == "gelu" else nn.ReLU()

    def forward(self, h: Float[Tensor, "... d_embed"]) -> Float[Tensor, "... d_embed"]:
        return self.mlp_out(self.act(self.mlp_in(h)))


class ResidMLP(nn.Module):
    """Residual MLP of `n_layers` blocks over a fixed embedding (see the module docstring)."""

    # Each batch row is processed on its own: SPD may skip rows that cannot change a loss
    # (spd.losses.row_selection).
    independent_rows = True

    @classmethod
    def train_hint(cls, missing: str) -> str:
        """How to train the missing target `missing` (a shipped recipe's name, or the user's own)."""
        here = Path(__file__).parent
        return train_hint(
            here / "train_resid_mlp.py", here / "train_configs", here / "targets", missing
        )

    W_E: Tensor
    W_U: Tensor

    def __init__(self, config: ResidMLPModelConfig) -> None:
        super().__init__()
        self.config = config
        # Forward through a `LowRankStream` (exact, faster); False gives the plain dense path.
        self.factor_stream = True
        self.register_buffer(
            "W_E", random_unit_embedding(config.n_features, config.d_embed, config.embed_seed)
        )
        if config.own_unembed:
            self.register_buffer("W_U", self.W_E.T.clone())
        self.layers = nn.ModuleList(
            MLPBlock(config.d_embed, config.d_mlp, config.act_fn, config.mlp_bias)
            for _ in range(config.n_layers)
        )

    def forward(self, x: Float[Tensor, "... n_features"]) -> Float[Tensor, "... n_features"]:
        unembed = self.W_U if self.config.own_unembed else self.W_E.T
        if not self.factor_stream or x.dim() != 2:
            h = x @ self.W_E
            for layer in self.layers:
                h = h + layer(h)
            return h @ unembed
        # The same sums, reassociated: the stream stays a sum of (rows × few) @ (few × d_embed)
        # products, so each layer reads it in ~n_features + Σ mlp widths dimensions, not d_embed.
        stream = LowRankStream.of(x, self.W_E)
        for layer in self.layers:
            assert isinstance(layer, MLPBlock)
            hidden = layer.act(read_stream(layer.mlp_in, stream))
            stream = stream + write_stream(layer.mlp_out, hidden)
        return stream.project(unembed)

    def save(self, directory: Path, train_config: dict[str, object]) -> None:
        """Write `model.pth` (state dict, embedding included) and `train_config.yaml`."""
        directory.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.state_dict(), directory / "model.pth")
        atomic_write_text(
            directory / "train_config.yaml", yaml.safe_dump(train_config, sort_keys=False)
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ResidMLP":
        """Load from a directory holding `model.pth` and `train_config.yaml` (with a `model` block),
        or from the original implementation's `resid_mlp.pth` + `resid_mlp_train_config.yaml`
        (the file or its directory; see `spd.loading.original_targets`)."""
        directory = Path(path)
        original = None if (directory / "model.pth").is_file() else find_original_target(directory)
        if original is not None:
            return cls._from_original(original)
        train_config = read_train_config(directory)
        model = cls(ResidMLPModelConfig.model_validate(train_config["model"]))
        state = load_weights_only(directory / "model.pth", "target weights")
        model.load_state_dict(state)
        return model

    @classmethod
    def _from_original(cls, target: OriginalTarget) -> "ResidMLP":
        block = target.model_block()
        state = load_weights_only(target.weights, "target weights")
        model = cls(
            ResidMLPModelConfig(
                n_features=block["n_features"],
                d_embed=block["d_embed"],
                d_mlp=block["d_mlp"],
                n_layers=block["n_layers"],
                act_fn=block.get("act_fn_name", "relu"),
                mlp_bias=any(k.endswith(".bias") for k in state),
                own_unembed="W_U" in state,
            )
        )
        model.load_state_dict(state)
        return model
