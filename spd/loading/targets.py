"""Loading the target model named in a config by class import path and checkpoint."""

import pickle
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from spd.config.loading import parse_yaml_text, read_text_file
from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.loading.hf_hub import fetch_guard
from spd.loading.run_paths import resolve_run_path
from spd.loading.user_modules import import_user_module

# What a damaged or incomplete target checkpoint makes `from_pretrained` raise.
LOAD_ERRORS = (
    OSError,
    RuntimeError,
    ValueError,
    KeyError,
    TypeError,
    pickle.UnpicklingError,
    yaml.YAMLError,
)


def import_class(path: str) -> type:
    """Import `package.module.ClassName`, failing with a clear message."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise SPDUserError(
            f"pretrained_model_class '{path}' must be a full import path like 'pkg.module.Class'"
        )
    module = import_user_module(module_name, f"pretrained_model_class '{path}'")
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise SPDUserError(
            f"pretrained_model_class '{path}': module '{module_name}' has no class '{class_name}'"
        )
    return cls


def load_target_model(config: Config) -> nn.Module:
    """Instantiate the target through its class's `from_pretrained(path)` and put it in eval mode."""
    cls = import_class(config.pretrained_model_class)
    from_pretrained = getattr(cls, "from_pretrained", None)
    if from_pretrained is None:
        raise SPDUserError(
            f"{config.pretrained_model_class} has no classmethod from_pretrained(path); add one that "
            "returns the trained module"
        )
    if config.pretrained_model_path is not None:
        # A local path or a `wandb:` run (downloaded once into the cache): see spd/loading/run_paths.py.
        path = resolve_run_path(config.pretrained_model_path)
        if path is None:
            hint = (
                cls.train_hint(str(config.pretrained_model_path))
                if hasattr(cls, "train_hint")
                else getattr(
                    cls,
                    "TRAIN_HINT",
                    "train the target first and point pretrained_model_path at it",
                )
            )
            raise SPDUserError(
                f"target checkpoint not found: {config.pretrained_model_path}; {hint}"
            )
        source: str | Path = path
    else:
        assert config.pretrained_model_name_hf is not None, "the config validator requires it"
        source = config.pretrained_model_name_hf
    try:
        if isinstance(source, str):
            # A hub id: fail fast, in one line, when it cannot be fetched (spd/loading/hf_hub.py).
            with fetch_guard("model", source, "pretrained_model_name_hf"):
                model = from_pretrained(source)
        else:
            try:
                model = from_pretrained(source)
            except SPDUserError as err:
                # E.g. weights that cannot be read (spd.loading.weights_only): name the target.
                raise SPDUserError(
                    f"cannot load target {config.pretrained_model_class} from {source}: {err}"
                ) from None
    except LOAD_ERRORS as err:
        # A damaged or incomplete target checkpoint: say which, without a traceback.
        message = f"cannot load target {config.pretrained_model_class} from {source}: {err!r}"
        raise SPDUserError(message.split("\n")[0]) from None
    if not isinstance(model, nn.Module):
        raise SPDUserError(
            f"{config.pretrained_model_class}.from_pretrained did not return an nn.Module"
        )
    model.eval()
    return model


def read_train_config(directory: Path) -> dict[str, Any]:
    """A shipped or trained target's `train_config.yaml`, read strictly (UTF-8, no repeated
    keys): a damaged file must not load with a guessed meaning."""
    config_file = directory / "train_config.yaml"
    return parse_yaml_text(read_text_file(config_file, "target train config"), str(config_file))
