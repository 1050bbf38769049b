"""The files of a pretraining run directory, and its checkpoints.

    <run dir>/pretrain_config.yaml     the config, names resolved (what --resume reads)
    <run dir>/metrics.jsonl            one JSON row per logged step: train/loss, lr, eval/ce
    <run dir>/checkpoints/step_<n>.pt  the state after n optimiser steps (the newest few kept)
    <run dir>/model/                   the trained model (config.json, model.safetensors), its
                                       tokenizer and pretrain_info.json, written at the end

A checkpoint holds tensors and plain values only (read back with `weights_only`): the model's
and AdamW's state dicts, every random generator and the position of the training stream.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spd.loading.weights_only import load_weights_only
from spd.persistence.atomic_files import atomic_torch_save, atomic_write_text

CONFIG_FILE = "pretrain_config.yaml"
CHECKPOINT_NAME = re.compile(r"step_(\d+)\.pt")


@dataclass(frozen=True)
class PretrainRunFiles:
    """Where a run directory keeps each of its files."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model_dir(self) -> Path:
        """The finished model, loadable with `TargetLM.from_pretrained`."""
        return self.root / "model"

    def checkpoint_paths(self) -> list[Path]:
        """Every checkpoint, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if CHECKPOINT_NAME.fullmatch(p.name)]
        return sorted(found, key=lambda p: int(p.name[5:-3]))

    def save_checkpoint(self, step: int, state: dict[str, Any], keep: int) -> Path:
        """Write the state after `step` steps atomically and keep only the newest `keep`."""
        path = self.checkpoints / f"step_{step:08d}.pt"
        atomic_torch_save({"step": step, **state}, path)
        for old in self.checkpoint_paths()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def load_latest_checkpoint(self) -> dict[str, Any]:
        """The newest checkpoint's content (tensors and plain values only)."""
        paths = self.checkpoint_paths()
        assert paths, "checked before the run starts"
        return load_weights_only(paths[-1], "pretraining checkpoint")

    def append_metrics(self, row: dict[str, float | int]) -> None:
        with self.metrics_file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """Drop rows logged after `after_step` (a resumed run logs those steps again)."""
        if not self.metrics_file.is_file():
            return
        rows = [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line]
        kept = [json.dumps(r) + "\n" for r in rows if r["step"] <= after_step]
        atomic_write_text(self.metrics_file, "".join(kept))
