"""The run directory: every run writes its config, metrics, figures and checkpoints to a new one.

Layout:
    <root>/<YYYYmmdd-HHMMSS>-<name>/
        final_config.yaml    the validated config of the run
        metrics.jsonl        one JSON object per logged step
        figures/<name>_<step>.png
        checkpoints/model_<step>.pth
"""

import json
import os
import sys
import time
from pathlib import Path

from matplotlib.figure import Figure

from spd.config.loading import config_to_yaml
from spd.config.schema import Config
from spd.errors import SPDUserError, write_guard
from spd.persistence.atomic_files import atomic_write_text

OUT_DIR_ENV = "SPD_OUT_DIR"
DEFAULT_ROOT = "spd_out"
CONFIG_FILE = "final_config.yaml"


def output_root(configured: str | None) -> Path:
    """SPD_OUT_DIR if set, else the config's `out_dir`, else ./spd_out."""
    return Path(os.environ.get(OUT_DIR_ENV) or configured or DEFAULT_ROOT).expanduser()


def check_writable_directory(path: Path, what: str) -> None:
    """Raise `SPDUserError` unless `path` is, or can be created as, a directory this process may
    write into: every part of it that exists must be a directory, the deepest one writable.

    Called before anything is written, so a wrong output root fails before a run starts.
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise SPDUserError(
            f"{what} {path} is not a directory{where}; choose a directory (out_dir or {OUT_DIR_ENV})"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SPDUserError(
            f"{what} {path} is not writable ({existing}: permission denied); choose a directory "
            f"you can write to (out_dir or {OUT_DIR_ENV})"
        )


def save_config(config: Config, path: Path) -> None:
    """Write a config as YAML (the exact form `load_config` reads back)."""
    atomic_write_text(path, config_to_yaml(config))


class RunDirectory:
    """A freshly created directory that belongs to exactly one run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.figures = path / "figures"
        self.checkpoints = path / "checkpoints"
        self.metrics_file = path / "metrics.jsonl"

    @classmethod
    def create(cls, root: Path, name: str) -> "RunDirectory":
        """Make a new directory under `root`; never reuses an existing one."""
        check_writable_directory(root, "output root")
        with write_guard("the output root", root):
            root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for attempt in range(1000):
            suffix = "" if attempt == 0 else f"-{attempt}"
            path = root / f"{stamp}-{name}{suffix}"
            try:
                with write_guard("a run directory in", root):
                    path.mkdir()
            except FileExistsError:
                continue
            return cls(path)
        raise RuntimeError(f"could not create a new run directory under {root}")

    def write_config(self, config: Config) -> None:
        save_config(config, self.path / CONFIG_FILE)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        # A line cut short by a full disk is dropped on resume (`discard_metrics_from`).
        with (
            write_guard("a metrics line to", self.metrics_file),
            self.metrics_file.open("a") as handle,
        ):
            handle.write(json.dumps({"step": step, **metrics}) + "\n")

    def discard_metrics_from(self, step: int) -> None:
        """Drop the metrics rows of `step` and later (a resumed run logs them again)."""
        if not self.metrics_file.exists():
            return
        kept = []
        for line in self.metrics_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                # Only a process killed mid-append leaves a broken line, and it is the last one.
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] < step:
                kept.append(line + "\n")
        atomic_write_text(self.metrics_file, "".join(kept))

    def save_figure(self, step: int, name: str, figure: Figure) -> Path:
        path = self.figures / f"{name}_{step}.png"
        with write_guard("the figure", path):
            self.figures.mkdir(exist_ok=True)
            figure.savefig(path, dpi=110)
        return path


def read_metrics(path: Path) -> list[dict[str, float]]:
    """All intact rows of a run's metrics.jsonl (a run directory or the file itself).

    A damaged line (overwritten, not a JSON row with a step) is skipped wherever it is, with one
    warning per file saying how many and which line first: one bad line must not hide every other
    row of the run. A last line without its newline is a write cut short (a killed process, a
    full disk), which resume truncates: it is skipped without a warning.
    """
    file = path / "metrics.jsonl" if path.is_dir() else path
    try:
        text = file.read_bytes().decode("utf-8", errors="replace")
    except OSError as err:
        raise SPDUserError(f"cannot read {file}: {err.strerror}") from None
    lines = text.split("\n")
    # split leaves "" after a final newline; anything else there is an unfinished write.
    complete = lines[:-1]
    rows: list[dict[str, float]] = []
    damaged: list[int] = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            damaged.append(number)
    if damaged:
        print(
            f"spd: warning: {file}: skipped {len(damaged)} damaged line(s) (first: line "
            f"{damaged[0]})",
            file=sys.stderr,
        )
    return rows
