"""Where a run's metrics and figures go: every `Sink` the caller passed (run directory, W&B, …)."""

from collections.abc import Iterable, Mapping
from typing import Protocol

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


class Sink(Protocol):
    """Somewhere metrics and figures go (the run directory, W&B)."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def save_figure(self, step: int, name: str, figure: Figure) -> object: ...


class Reporter:
    """Sends metrics and figures to every sink and remembers the latest value of each metric."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = list(sinks)
        self.final_metrics: dict[str, float] = {}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.log_metrics(step, metrics)
        self.final_metrics.update(metrics)

    def log_evaluation(
        self, step: int, metrics: dict[str, float], figures: Mapping[str, Figure]
    ) -> None:
        """Log an evaluation's metrics and save its figures, then close the figures."""
        for sink in self.sinks:
            sink.log_metrics(step, metrics)
            for name, figure in figures.items():
                sink.save_figure(step, name, figure)
        for figure in figures.values():
            plt.close(figure)
        self.final_metrics.update(metrics)
