"""Loading a run's config as the scripts do: the file's own settings plus what its target implies.

A config in the original implementation's format never set weight tying: a TMS target was tied
when its own training config said so. `load_run_config` keeps that meaning: when the config
does not set `tied_weights` and its target is in the original's layout
(`spd.loading.original_targets`), the tying comes from the target's training config, with a
warning line saying so. This project's own TMS targets (`model.pth` + `train_config.yaml`) are
always tied, so an original-format config pointed at one of them (a local stand-in for the
original's tied TMS targets) ties `linear1` and `linear2` too.
"""

from pathlib import Path
from typing import Any

from spd.config.loading import config_dict, config_from_dict, read_yaml, warn_once
from spd.config.original_format import looks_original
from spd.config.original_later_format import looks_later
from spd.config.schema import Config
from spd.loading.original_targets import TIED_PAIR, original_tied_weights
from spd.loading.run_paths import cached_wandb_run, is_wandb_path, parse_wandb_path

# The class path of this project's TMS model (the original's configs name the same path).
TMS_MODEL_CLASS = "spd.experiments.tms.models.TMSModel"


def in_an_original_format(path: Path | str) -> bool:
    """Whether the config file at `path` is in one of the original implementation's formats."""
    raw = read_yaml(Path(path))
    return looks_original(raw) or looks_later(raw)


def with_target_ties(
    data: dict[str, Any], source: str, fetch: bool = True, from_original: bool = False
) -> dict[str, Any]:
    """`data` with `tied_weights` set from an original-layout target when the config has none,
    or, for a config translated from the original's formats (`from_original`), tied when its
    target is one of this project's TMS targets.

    With `fetch` false (translating a config, which needs no network), a `wandb:` target that is
    not in the download cache is left alone: its tying is decided when the config runs.
    """
    path = data.get("pretrained_model_path")
    if "tied_weights" in data or not isinstance(path, str):
        return data
    if not fetch and is_wandb_path(path) and cached_wandb_run(parse_wandb_path(path)) is None:
        warn_once(
            source,
            f"target {path} is not fetched to translate the config; tied_weights is decided from "
            "its training config when the run fetches it (a local copy: upgrade --target DIR)",
        )
        return data
    ties = original_tied_weights(path)
    if ties is None and from_original and _is_our_tms(data):
        warn_once(
            source,
            f"tied_weights: [{TIED_PAIR}]: the TMS target {path} is in this project's layout, "
            "whose TMS models are always tied (as the original's shipped TMS targets)",
        )
        return {**data, "tied_weights": [TIED_PAIR]}
    if ties is None:
        return data
    warn_once(
        source,
        f"tied_weights: {ties or 'none'} from the training config of the original-format "
        f"target {path}",
    )
    return {**data, "tied_weights": ties or None}


def _is_our_tms(data: dict[str, Any]) -> bool:
    return data.get("pretrained_model_class") == TMS_MODEL_CLASS


def load_run_config(path: Path | str, overrides: dict[str, Any] | None = None) -> Config:
    """`load_config`, with weight tying taken from an original-format target (see above)."""
    data = with_target_ties(
        config_dict(path, overrides), str(path), from_original=in_an_original_format(path)
    )
    return config_from_dict(data, source=str(path))
