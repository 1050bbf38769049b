"""Targets saved by the original SPD implementation: `<name>.pth` beside `<name>_train_config.yaml`.

The original stores a trained toy target as a state dict `tms.pth` (or `resid_mlp.pth`) next to
its training config `tms_train_config.yaml` (`resid_mlp_train_config.yaml`, with
`label_coeffs.json` for the residual MLP), locally or as the files of a W&B run. A config's
`pretrained_model_path` may name the `.pth` file, or the directory (or `wandb:` run) holding the
pair; the target classes' `from_pretrained` read it through `find_original_target`.

Whether a TMS target's `linear1` and `linear2` are tied is part of that training config
(`tied_weights`), not of the original's run configs: `original_tied_weights` reads it so that a
run from the original's files ties exactly when the target was tied.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spd.config.loading import parse_yaml_text, read_text_file
from spd.errors import SPDUserError
from spd.loading.run_paths import resolve_run_path

TRAIN_CONFIG_SUFFIX = "_train_config.yaml"
# Where the original's training configs keep the target's shape (assumed; docs/original_configs.md).
MODEL_BLOCKS = {"tms": "tms_model_config", "resid_mlp": "resid_mlp_model_config"}
TIED_PAIR = ["linear1", "linear2"]


@dataclass(frozen=True)
class OriginalTarget:
    """A target in the original's layout: its name (`tms`, `resid_mlp`), weights and training
    config (as read from YAML)."""

    name: str
    weights: Path
    train_config: dict[str, Any]

    @property
    def directory(self) -> Path:
        return self.weights.parent

    def model_block(self) -> dict[str, Any]:
        """The shape of the target: the training config's model block."""
        key = MODEL_BLOCKS.get(self.name, f"{self.name}_model_config")
        block = self.train_config.get(key)
        if not isinstance(block, dict):
            raise SPDUserError(
                f"{self.directory / (self.name + TRAIN_CONFIG_SUFFIX)} has no '{key}' block with "
                "the target's shape"
            )
        return block


def find_original_target(path: Path) -> OriginalTarget | None:
    """The original-layout target at `path` (a `<name>.pth` file, or a directory holding exactly
    one `<name>.pth` with its `<name>_train_config.yaml`); None if `path` is not one."""
    if path.is_file():
        candidates = [path] if path.suffix == ".pth" else []
    elif path.is_dir():
        candidates = sorted(path.glob("*.pth"))
    else:
        return None
    pairs = [w for w in candidates if (w.parent / (w.stem + TRAIN_CONFIG_SUFFIX)).is_file()]
    if len(pairs) != 1:
        return None
    weights = pairs[0]
    train_config_path = weights.parent / (weights.stem + TRAIN_CONFIG_SUFFIX)
    train_config = parse_yaml_text(
        read_text_file(train_config_path, "target train config"), str(train_config_path)
    )
    if not isinstance(train_config, dict):
        raise SPDUserError(f"{train_config_path} must hold a YAML mapping")
    return OriginalTarget(weights.stem, weights, train_config)


def original_tied_weights(pretrained_model_path: str) -> list[list[str]] | None:
    """For a TMS target in the original's layout: `[["linear1", "linear2"]]` if its training
    config says it is tied, `[]` if it says untied; None for any other target."""
    resolved = resolve_run_path(pretrained_model_path)
    target = find_original_target(resolved) if resolved is not None else None
    if target is None or target.name != "tms":
        return None
    block = target.model_block()
    tied = block.get("tied_weights", target.train_config.get("tied_weights"))
    if not isinstance(tied, bool):
        raise SPDUserError(
            f"{target.directory / ('tms' + TRAIN_CONFIG_SUFFIX)} does not say whether the target "
            "is tied (tms_model_config.tied_weights); set tied_weights in the run config"
        )
    return [TIED_PAIR] if tied else []
