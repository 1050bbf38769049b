"""A run's periodic evaluation: fresh batches from the eval stream, every configured metric (and,
when due, slow metrics and figures), metrics averaged over ranks."""

import torch
from matplotlib.figure import Figure

from spd.config.schema import Config
from spd.eval.evaluate import evaluate
from spd.train import distributed
from spd.train.setup import Training


def evaluate_step(
    training: Training, config: Config, device: torch.device, step: int, include_slow: bool
) -> tuple[dict[str, float], dict[str, Figure]]:
    """Draw `n_eval_steps` eval batches and evaluate the model on them."""
    inputs = [next(training.streams["eval"]).to(device) for _ in range(config.n_eval_steps)]
    metrics, figures = evaluate(training.model, config, inputs, step, include_slow=include_slow)
    return distributed.average_metrics(metrics), figures
