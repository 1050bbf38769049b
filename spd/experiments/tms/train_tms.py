"""Train the TMS targets with the spec's recipe and check that every feature is represented.

    python spd/experiments/tms/train_tms.py --experiment tms_5-2 [--seed 0] [--retry-seeds 5]

Recipe: reconstruct sparse inputs (each feature active w.p. 0.05, value U[0, 1]) with MSE,
AdamW (weight decay 0.01), constant lr 5e-3, 10k steps, batch 1024 (5-2) or 8192 (40-10).
A target in which some feature has a column norm ‖W[:, j]‖ below 0.5 has a dead feature: it is
reported, and with --retry-seeds the next seeds are tried until one represents every feature.
"""

import argparse
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from tqdm import tqdm

from spd.config.loading import validated_update
from spd.config.schema import StrictModel
from spd.data.sparse_features import SparseFeatureData
from spd.errors import OneLineArgumentParser, SPDUserError, run_cli
from spd.experiments.tms.models import TMSModel, TMSModelConfig
from spd.persistence.run_dir import check_writable_directory

TARGETS_DIR = Path(__file__).parent / "targets"
DEAD_FEATURE_NORM = 0.5


class TMSTrainConfig(StrictModel):
    model: TMSModelConfig
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    steps: PositiveInt = 10_000
    batch_size: PositiveInt = 1024
    lr: PositiveFloat = 5e-3
    weight_decay: float = 0.01
    feature_probability: float = 0.05


# The seeds are those of the shipped targets: the first that represented every feature.
RECIPES: dict[str, TMSTrainConfig] = {
    "tms_5-2": TMSTrainConfig(model=TMSModelConfig(n_features=5, n_hidden=2, init="torch_default")),
    "tms_5-2-id": TMSTrainConfig(
        model=TMSModelConfig(n_features=5, n_hidden=2, n_hidden_layers=1, init="torch_default"),
        seed=4,
    ),
    "tms_40-10": TMSTrainConfig(
        model=TMSModelConfig(n_features=40, n_hidden=10), batch_size=8192, seed=2
    ),
    "tms_40-10-id": TMSTrainConfig(
        model=TMSModelConfig(n_features=40, n_hidden=10, n_hidden_layers=1), batch_size=8192
    ),
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
    for _ in tqdm(range(config.steps), disable=not show_progress, ncols=100, desc="train tms"):
        x = data.sample(config.batch_size)
        loss = torch.nn.functional.mse_loss(model(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.untie_weights()
    return model


def main() -> None:
    parser = OneLineArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", choices=[*RECIPES, "all"], default="all")
    parser.add_argument(
        "--seed", type=int, default=None, help="first seed to try (default: the recipe's)"
    )
    parser.add_argument(
        "--retry-seeds",
        type=int,
        default=0,
        help="try up to this many further seeds if features die",
    )
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    parser.add_argument(
        "--out", type=Path, default=TARGETS_DIR, help="directory to write <experiment>/ into"
    )
    args = parser.parse_args()
    if args.retry_seeds < 0:
        raise SPDUserError(f"--retry-seeds must be 0 or more, got {args.retry_seeds}")
    # Wrong --out fails now, not after minutes of training.
    check_writable_directory(args.out, "--out")
    names = list(RECIPES) if args.experiment == "all" else [args.experiment]
    failed: list[str] = []
    for name in names:
        first = RECIPES[name].seed if args.seed is None else args.seed
        for seed in range(first, first + args.retry_seeds + 1):
            update: dict[str, object] = {"seed": seed}
            if args.steps is not None:
                update["steps"] = args.steps
            config = validated_update(RECIPES[name], update, "command line")
            model = train(config)
            dead = dead_features(model)
            loss = eval_loss(model, config)
            if not dead:
                out = args.out / name
                model.save(out, {**config.model_dump(), "final_eval_loss": loss})
                print(
                    f"{name}: seed {seed}, all {config.model.n_features} features represented, eval MSE {loss:.5f} -> {out}",
                    flush=True,
                )
                break
            norms = model.linear1.weight.detach().norm(dim=0)
            shown = ", ".join(f"{j}: {norms[j]:.2f}" for j in dead)
            print(
                f"{name}: seed {seed} leaves feature(s) dead (‖W[:, j]‖ < {DEAD_FEATURE_NORM}: {shown}); not saved",
                flush=True,
            )
        else:
            failed.append(name)
    if failed:
        raise SPDUserError(
            f"no seed tried represented every feature for: {', '.join(failed)}; raise --retry-seeds"
        )


if __name__ == "__main__":
    run_cli(main)
