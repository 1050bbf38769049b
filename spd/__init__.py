"""Stochastic Parameter Decomposition (SPD).

The package is split into stages, one subpackage each, from the bottom up: `errors`, `config`
(the typed YAML config and the plug-in registries), `loading` (targets, run paths), `persistence`
(run directories, checkpoints), `data`, `models` (`ComponentModel`, CI functions), `losses`,
`eval` (metrics, figures), `train` (`optimize`), `tracking` (W&B, reports), `experiments` (tasks
and their scripts), `analysis` (`spd-analyze`, `spd-browse`), `app` (`spd-app`), `launch` (`spd-run`'s planning,
SLURM and local runs) and `scripts` (the console scripts). A module imports only its own stage
and the stages below it; `tests/test_import_layers.py` keeps it so (its `STAGES` is this list).

The names users need most are available here: `spd.load_config`, `spd.Config`,
`spd.load_target_model`, `spd.ComponentModel`, `spd.optimize`. They are imported on first use, so that `import spd` (and
the launcher) does not pay for importing torch.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spd.config.loading import load_config
    from spd.config.schema import Config
    from spd.loading.targets import load_target_model
    from spd.models.component_model import ComponentModel
    from spd.train.optimize import optimize

_EXPORTS = {
    "load_config": "spd.config.loading",
    "Config": "spd.config.schema",
    "load_target_model": "spd.loading.targets",
    "ComponentModel": "spd.models.component_model",
    "optimize": "spd.train.optimize",
}
__all__ = ["ComponentModel", "Config", "load_config", "load_target_model", "optimize"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'spd' has no attribute {name!r}")
