"""Train TMS targets of any size from a YAML training config; check every feature is represented.

    python spd/experiments/tms/train_tms.py my_tms.yaml [--override model.n_features=12] [--out DIR]
    python spd/experiments/tms/train_tms.py --experiment tms_5-2 [--seed 0] [--retry-seeds 5]

A training config (`TMSTrainConfig`; the shipped recipes are `train_configs/<name>.yaml`) sets
the shape (`model.n_features`, `model.n_hidden`, `model.n_hidden_layers` fixed identity layers,
`model.init`), the data (`feature_probability`), the optimisation (`steps`, `batch_size`, `lr`,
`weight_decay`), `seed` and `retry_seeds`. Recipe of the shipped targets: reconstruct sparse
inputs (each feature active w.p. 0.05, value U[0, 1]) with MSE, AdamW (weight decay 0.01),
constant lr 5e-3, 10k steps, batch 1024 (5-2) or 8192 (40-10).
A target in which some feature has a column norm ‖W[:, j]‖ below 0.5 has a dead feature: it is
reported, and with `retry_seeds` the next seeds are tried until one represents every feature.
The target directory gets `model.pth` and `train_config.yaml`; point a decomposition config's
`pretrained_model_path` at it.
"""

import argparse
from functools import partial
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from spd.config.schema import Probability, StrictModel
from spd.data.sparse_features import SparseFeatureData
from spd.errors import OneLineArgumentParser, SPDUserError, run_cli
from spd.experiments.target_memory import check_target_memory
from spd.experiments.tms.models import TMSModel, TMSModelConfig
from spd.experiments.train_configs import (
    add_arguments,
    load_train_config,
    parsed_overrides,
    selected_jobs,
    shipped_configs,
)
from spd.train.progress import progress_bar

TARGETS_DIR = Path(__file__).parent / "targets"
TRAIN_CONFIGS_DIR = Path(__file__).parent / "train_configs"
DEAD_FEATURE_NORM = 0.5


class TMSTrainConfig(StrictModel):
    """How one TMS target is trained (one YAML file)."""

    model: TMSModelConfig = Field(description="The target's shape")
    seed: Annotated[int, Field(ge=0, lt=2**32)] = Field(
        default=0, description="Seed of the initialisation and the data"
    )
    steps: PositiveInt = Field(default=10_000, description="Training steps")
    batch_size: PositiveInt = Field(default=1024, description="Examples per step")
    lr: PositiveFloat = Field(default=5e-3, description="AdamW learning rate")
    weight_decay: float = Field(default=0.01, description="AdamW weight decay")
    feature_probability: Probability = Field(
        default=0.05, description="Chance that each feature is active in an example"
    )
    retry_seeds: NonNegativeInt = Field(
        default=0,
        description="How many further seeds to try (seed+1, …) when a feature dies",
    )


# The recipes of the shipped targets, read from their shipped training configs.
RECIPES: dict[str, TMSTrainConfig] = {
    name: load_train_config(TMSTrainConfig, path)
    for name, path in shipped_configs(TRAIN_CONFIGS_DIR).items()
}


def dead_features(model: TMSModel) -> list[int]:
    """Features whose input column W[:, j] has norm below DEAD_FEATURE_NORM."""
    norms = model.linear1.weight.detach().norm(dim=0)
    return [j for j, n in enumerate(norms.tolist()) if n < DEAD_FEATURE_NORM]


def eval_loss(model: TMSModel, config: TMSTrainConfig, n: int = 100_000) -> float:
    data = SparseFeatureData(
        config.model.n_features, config.feature_probability, seed=10_000 + config.seed
    )
    with torch.no_grad():
        x = data.sample(n)
        return float(torch.nn.functional.mse_loss(model(x), x))


def train(config: TMSTrainConfig, show_progress: bool = True) -> TMSModel:
    """Train one TMS target from scratch."""
    torch.manual_seed(config.seed)
    model = TMSModel(config.model)
    model.tie_weights()
    data = SparseFeatureData(config.model.n_features, config.feature_probability, seed=config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    for _ in progress_bar(range(config.steps), show_progress, desc="train tms"):
        x = data.sample(config.batch_size)
        loss = torch.nn.functional.mse_loss(model(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.untie_weights()
    return model


def train_until_alive(
    name: str, config: TMSTrainConfig, out: Path, show_progress: bool = True
) -> bool:
    """Train seeds `seed … seed + retry_seeds` until one represents every feature; save that
    one to `out`. Returns whether one did."""
    for seed in range(config.seed, config.seed + config.retry_seeds + 1):
        attempt = config.model_copy(update={"seed": seed})
        model = train(attempt, show_progress=show_progress)
        dead = dead_features(model)
        loss = eval_loss(model, attempt)
        if not dead:
            model.save(out, {**attempt.model_dump(), "final_eval_loss": loss})
            print(
                f"{name}: seed {seed}, all {attempt.model.n_features} features represented, "
                f"eval MSE {loss:.5f} -> {out}",
                flush=True,
            )
            return True
        norms = model.linear1.weight.detach().norm(dim=0)
        shown = ", ".join(f"{j}: {norms[j]:.2f}" for j in dead)
        print(
            f"{name}: seed {seed} leaves feature(s) dead (‖W[:, j]‖ < {DEAD_FEATURE_NORM}: "
            f"{shown}); not saved",
            flush=True,
        )
    return False


def main() -> None:
    parser = OneLineArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, list(RECIPES))
    parser.add_argument("--seed", type=int, default=None, help="first seed to try (sets seed)")
    parser.add_argument("--retry-seeds", type=int, default=None, help="sets retry_seeds")
    parser.add_argument("--steps", type=int, default=None, help="sets steps")
    args = parser.parse_args()
    overrides = parsed_overrides(args)
    for key, value in (
        ("seed", args.seed),
        ("retry_seeds", args.retry_seeds),
        ("steps", args.steps),
    ):
        if value is not None:
            overrides[key] = value
    failed: list[str] = []
    for name, path, out in selected_jobs(args, shipped_configs(TRAIN_CONFIGS_DIR), TARGETS_DIR):
        config = load_train_config(TMSTrainConfig, path, overrides)
        check_target_memory(partial(TMSModel, config.model), config.batch_size, name)
        if not train_until_alive(name, config, out, show_progress=not args.no_progress):
            failed.append(name)
    if failed:
        raise SPDUserError(
            f"no seed tried represented every feature for: {', '.join(failed)}; raise retry_seeds "
            "(--retry-seeds)"
        )


if __name__ == "__main__":
    run_cli(main)
