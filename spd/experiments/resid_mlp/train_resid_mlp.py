"""Train residual-MLP targets of any size from a YAML training config.

    python spd/experiments/resid_mlp/train_resid_mlp.py my_resid.yaml [--override model.d_mlp=20]
    python spd/experiments/resid_mlp/train_resid_mlp.py --experiment resid_mlp1 [--seed 0]

A training config (`ResidMLPTrainConfig`; the shipped recipes are `train_configs/<name>.yaml`)
sets the shape (`model.n_features`, `model.d_embed`, `model.d_mlp` neurons per layer,
`model.n_layers`, `model.embed_seed`), the label coefficients (`label_coeffs`), the data
(`feature_probability`) and the optimisation (`steps`, `batch_size`, `lr`, `weight_decay`, `seed`).
Recipe of the shipped targets: each feature active w.p. 0.01 with value U[-1, 1]; labels
y = x + ReLU(x); MSE between the read-off output and the labels; AdamW (weight decay 0.01),
lr 3e-3 with a cosine schedule, batch 2048. Only the MLP weights train; the embedding is fixed.
The target directory gets `model.pth`, `train_config.yaml` (recipe, model shape and final eval
losses) and `label_coeffs.json`.
"""

import argparse
from functools import partial
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from jaxtyping import Float
from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from torch import Tensor

from spd.config.schema import Probability, StrictModel
from spd.data.sparse_features import SparseFeatureData
from spd.errors import OneLineArgumentParser, run_cli
from spd.experiments.resid_mlp.labels import residual_relu_labels, save_label_coeffs
from spd.experiments.resid_mlp.models import ResidMLP, ResidMLPModelConfig
from spd.experiments.target_memory import check_target_memory
from spd.experiments.train_configs import (
    add_arguments,
    load_train_config,
    parsed_overrides,
    selected_jobs,
    shipped_configs,
)
from spd.train.progress import progress_bar
from spd.train.schedules import lr_at_step

TARGETS_DIR = Path(__file__).parent / "targets"
TRAIN_CONFIGS_DIR = Path(__file__).parent / "train_configs"
VALUE_RANGE = (-1.0, 1.0)
EVAL_SEED_OFFSET = 10_000
EVAL_EXAMPLES = 100_000
EVAL_CHUNK = 10_000


class ResidMLPTrainConfig(StrictModel):
    """The recipe of one target; `steps` was chosen so that the loss has flattened out."""

    model: ResidMLPModelConfig = Field(description="The target's shape")
    seed: Annotated[int, Field(ge=0, lt=2**32)] = Field(
        default=0, description="Seed of the initialisation and the data"
    )
    steps: PositiveInt = Field(default=2000, description="Training steps")
    batch_size: PositiveInt = Field(default=2048, description="Examples per step")
    lr: PositiveFloat = Field(default=3e-3, description="AdamW learning rate")
    weight_decay: float = Field(default=0.01, description="AdamW weight decay")
    feature_probability: Probability = Field(
        default=0.01, description="Chance that each feature is active in an example"
    )
    label_coeffs: float | list[float] = Field(
        default=1.0,
        description="c of the labels y = x + ReLU(c ⊙ x): one number for every feature, or one "
        "per feature",
    )

    @model_validator(mode="after")
    def _check_coeffs(self) -> "ResidMLPTrainConfig":
        if isinstance(self.label_coeffs, list) and len(self.label_coeffs) != self.model.n_features:
            raise ValueError(
                f"label_coeffs has {len(self.label_coeffs)} values but model.n_features is "
                f"{self.model.n_features}; give one per feature or a single number"
            )
        return self

    def coeffs(self) -> Float[Tensor, " n_features"]:
        """The label coefficients as one value per feature."""
        if isinstance(self.label_coeffs, list):
            return torch.tensor(self.label_coeffs)
        return torch.full((self.model.n_features,), float(self.label_coeffs))


# The recipes of the shipped targets, read from their shipped training configs.
RECIPES: dict[str, ResidMLPTrainConfig] = {
    name: load_train_config(ResidMLPTrainConfig, path)
    for name, path in shipped_configs(TRAIN_CONFIGS_DIR).items()
}


def feature_data(config: ResidMLPTrainConfig, seed: int) -> SparseFeatureData:
    """The recipe's input distribution, seeded."""
    return SparseFeatureData(
        config.model.n_features, config.feature_probability, value_range=VALUE_RANGE, seed=seed
    )


def eval_losses(
    model: ResidMLP,
    config: ResidMLPTrainConfig,
    coeffs: torch.Tensor,
    n_examples: int = EVAL_EXAMPLES,
    seed_offset: int = EVAL_SEED_OFFSET,
) -> dict[str, float]:
    """MSE to the labels on fresh inputs, for the model and for the model with its MLPs removed.

    The second number (out = W_Eᵀ W_E x, the residual stream alone) is the baseline the MLPs
    have to beat.
    """
    data = feature_data(config, seed=seed_offset + config.seed)
    total, total_without_mlp = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, n_examples, EVAL_CHUNK):
            x = data.sample(min(EVAL_CHUNK, n_examples - start))
            y = residual_relu_labels(x, coeffs)
            total += float(F.mse_loss(model(x), y, reduction="sum"))
            total_without_mlp += float(F.mse_loss(x @ model.W_E @ model.W_E.T, y, reduction="sum"))
    n_values = n_examples * config.model.n_features
    return {"eval_loss": total / n_values, "eval_loss_without_mlp": total_without_mlp / n_values}


def train(
    config: ResidMLPTrainConfig, coeffs: torch.Tensor, show_progress: bool = True
) -> ResidMLP:
    """Train one residual-MLP target from scratch (only the MLP weights train)."""
    torch.manual_seed(config.seed)
    model = ResidMLP(config.model)
    data = feature_data(config, seed=config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    progress = progress_bar(range(config.steps), show_progress, desc="train resid_mlp")
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = lr_at_step(step, config.steps, config.lr, "cosine")
        x = data.sample(config.batch_size)
        loss = F.mse_loss(model(x), residual_relu_labels(x, coeffs))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            progress.set_postfix(loss=f"{loss.item():.3g}", refresh=False)
    return model


def main() -> None:
    parser = OneLineArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, list(RECIPES))
    parser.add_argument("--seed", type=int, default=None, help="sets seed")
    parser.add_argument("--steps", type=int, default=None, help="sets steps")
    args = parser.parse_args()
    overrides = parsed_overrides(args)
    for key, value in (("seed", args.seed), ("steps", args.steps)):
        if value is not None:
            overrides[key] = value
    for name, path, out in selected_jobs(args, shipped_configs(TRAIN_CONFIGS_DIR), TARGETS_DIR):
        config = load_train_config(ResidMLPTrainConfig, path, overrides)
        check_target_memory(partial(ResidMLP, config.model), config.batch_size, name)
        coeffs = config.coeffs()
        model = train(config, coeffs, show_progress=not args.no_progress)
        losses = eval_losses(model, config, coeffs)
        model.save(out, {**config.model_dump(), **losses})
        save_label_coeffs(out, coeffs)
        print(
            f"{name}: eval MSE {losses['eval_loss']:.4e} "
            f"(without the MLPs {losses['eval_loss_without_mlp']:.4e}) -> {out}",
            flush=True,
        )


if __name__ == "__main__":
    run_cli(main)
