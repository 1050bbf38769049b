"""Parameter sweeps: a YAML file of values to try, expanded into one run per combination.

A sweep file has a `global` block and optional blocks named after registered experiments:

    global:
      seed: {values: [0, 1]}
      task_config:
        feature_probability: {values: [0.05, 0.1]}
    tms_5-2:
      lr: {values: [0.001, 0.003]}

A parameter is a mapping with exactly one key, `values` (a non-empty list); any other mapping is
a nested config block. An experiment's block overrides `global` at any depth: a parameter it
names replaces the global one at that path (and everything `global` sweeps below that path).
The grid of all combinations becomes one run each, named after the values it sets.
"""

import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spd.errors import SPDUserError

GLOBAL_BLOCK = "global"
DEFAULT_SWEEP_FILE = Path(__file__).resolve().parent.parent / "scripts" / "sweep_params.yaml"
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._,=+-]")
# Runs one launch may plan: each is validated before any starts, so a larger grid (usually a
# mistake, e.g. a values list pasted in twice) would plan for minutes before it is noticed.
MAX_SWEEP_RUNS = 1000

SweepParams = dict[str, list[Any]]  # dotted config key -> values to try


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: the global parameters and those of each named experiment."""

    path: Path
    global_params: SweepParams
    experiment_params: dict[str, SweepParams]

    def params_for(self, experiment: str) -> SweepParams:
        """The parameters of one experiment: its own block over the global one."""
        own = self.experiment_params.get(experiment, {})
        merged = {
            key: values
            for key, values in self.global_params.items()
            if not any(key == k or key.startswith(k + ".") for k in own)
        }
        merged.update(own)
        return merged


def _flatten(node: Any, key: str, where: str) -> SweepParams:
    """Dotted config keys and their values below `node`; `where` names it in messages."""
    if not isinstance(node, dict):
        raise SPDUserError(
            f"{where}: '{key}' must be a mapping with a 'values' list, "
            f"e.g. {key.rsplit('.', 1)[-1]}: {{values: [1, 2]}}"
        )
    if "values" in node:
        values = node["values"]
        if set(node) != {"values"} or not isinstance(values, list) or not values:
            raise SPDUserError(
                f"{where}: '{key}' must have exactly one key 'values' holding a non-empty list"
            )
        return {key: values}
    params: SweepParams = {}
    for child_key, child in node.items():
        params.update(_flatten(child, f"{key}.{child_key}", where))
    return params


def _flatten_block(block: Any, name: str, source: Path) -> SweepParams:
    where = f"sweep file {source}, block '{name}'"
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise SPDUserError(f"{where}: must be a mapping of config keys to {{values: [...]}}")
    params: SweepParams = {}
    for key, child in block.items():
        params.update(_flatten(child, str(key), where))
    return params


def load_sweep(path: Path, known_experiments: list[str]) -> Sweep:
    """Read and check a sweep file (blocks, parameter shapes); values are checked per run later."""
    if not path.is_file():
        raise SPDUserError(
            f"sweep file not found: {path} (create it from spd/scripts/sweep_params.yaml.example "
            "or run `make install`)"
        )
    # Imported here: the config schema (pydantic) is not needed for `spd-run --help`.
    from spd.config.loading import read_yaml

    data = read_yaml(path)
    unknown = [str(key) for key in data if key != GLOBAL_BLOCK and key not in known_experiments]
    if unknown:
        raise SPDUserError(
            f"sweep file {path}: unknown block '{unknown[0]}'; blocks are '{GLOBAL_BLOCK}' or "
            f"the launch's experiments (or --config names): {', '.join(known_experiments)}"
        )
    blocks = {str(name): _flatten_block(block, str(name), path) for name, block in data.items()}
    return Sweep(path=path, global_params=blocks.pop(GLOBAL_BLOCK, {}), experiment_params=blocks)


def expand_grid(params: SweepParams) -> list[dict[str, Any]]:
    """Every combination of values, as dotted-key overrides (parents before their children).

    Refuses a grid of more than `MAX_SWEEP_RUNS` runs before building any of it.
    """
    size = math.prod(len(values) for values in params.values())
    if size > MAX_SWEEP_RUNS:
        counts = " x ".join(f"{len(values)} {key}" for key, values in params.items())
        raise SPDUserError(
            f"the sweep expands to {size} runs ({counts}), more than the {MAX_SWEEP_RUNS} one "
            "launch plans; sweep fewer values, or split it into several sweep files"
        )
    keys = sorted(params, key=lambda k: k.count("."))
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(params[k] for k in keys))
    ]


def _format_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_format_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", "="), sort_keys=True)
    return repr(value) if isinstance(value, float) else str(value)


def run_label(overrides: dict[str, Any]) -> str:
    """A file-name-safe label naming the values a sweep run sets, e.g. `lr=0.001-seed=1`."""
    text = "-".join(f"{key}={_format_value(value)}" for key, value in overrides.items())
    return _UNSAFE_NAME_CHARS.sub("_", text)


def unique_names(names: list[str]) -> list[str]:
    """Make names distinct by numbering repeats (values that differ only in unsafe characters)."""
    taken: set[str] = set()
    result = []
    for name in names:
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}-{n}"
        taken.add(candidate)
        result.append(candidate)
    return result
