"""One evaluation: every metric (and, when due, every slow metric and figure) the config selects."""

from matplotlib.figure import Figure
from torch import Tensor

from spd.config.evaluators import registry
from spd.config.schema import Config
from spd.eval.context import EvalContext
from spd.models.component_model import ComponentModel


def evaluate(
    model: ComponentModel, config: Config, inputs: list[Tensor], step: int, include_slow: bool
) -> tuple[dict[str, float], dict[str, Figure]]:
    """Run the configured metrics (and, with `include_slow`, slow metrics and figures)."""
    ctx = EvalContext(model=model, config=config, inputs=inputs, step=step)
    metrics: dict[str, float] = {}
    figures: dict[str, Figure] = {}
    metric_registry, figure_registry = registry("metric"), registry("figure")
    was_training = model.training
    model.eval()
    for spec in config.metrics:
        evaluator = metric_registry[spec.name]
        if include_slow or not evaluator.slow:
            metrics.update({f"eval/{k}": v for k, v in evaluator.fn(ctx, **spec.params).items()})
    if include_slow:
        for spec in config.figures:
            figures.update(figure_registry[spec.name].fn(ctx, **spec.params))
    model.train(was_training)
    return metrics, figures
