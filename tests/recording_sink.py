"""A metrics sink for tests: keeps what `optimize()` reports, in memory."""

from matplotlib.figure import Figure


class RecordingSink:
    """Keeps what optimize() reports, in memory."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.figures: list[tuple[int, str]] = []

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.rows.append((step, dict(metrics)))

    def save_figure(self, step: int, name: str, figure: Figure) -> None:
        self.figures.append((step, name))

    def series(self, key: str) -> dict[int, float]:
        return {step: row[key] for step, row in self.rows if key in row}

    def train_rows(self) -> list[dict[str, float]]:
        """The training-log rows, each with its step under "step"."""
        return [{"step": step, **row} for step, row in self.rows if "train/loss/total" in row]
