"""Stochastic Parameter Decomposition (SPD).

The path a run takes, one stage per subpackage, each importing only the stages before it:
YAML → `config` → `loading` (the target) → `models` (ComponentModel) → `train` (optimize)
→ `losses` → `eval` (metrics, figures) → `persistence` (run directory, checkpoints)
→ `tracking` (W&B, reports); `experiments` and `launch` drive it from the command line.

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
