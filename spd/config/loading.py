"""Reading a `Config` from YAML, applying overrides, and reporting mistakes in one line."""

import difflib
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from spd.config.schema import Config
from spd.errors import SPDUserError


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (used to suggest valid keys).

    `loc` is pydantic's raw error location: list indices are skipped, and a discriminated union
    (the task config) appears as its tag value, e.g. ('task_config', 'tms', 'feature_probabilty').
    """
    owners: list[type[BaseModel]] = [Config]
    for part in loc[:-1]:
        by_tag = [m for m in owners if _tag(m) == part]
        if by_tag or isinstance(part, int):
            owners = by_tag or owners
            continue
        if len(owners) != 1 or part not in owners[0].model_fields:
            return None
        annotation = owners[0].model_fields[part].annotation
        owners = [
            a
            for a in get_args(annotation) or (annotation,)
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
    return owners[0] if len(owners) == 1 else None


def _tag(model: type[BaseModel]) -> object:
    field = model.model_fields.get("task_name")
    return None if field is None else field.default


def _describe(error: Any, source: str) -> str:
    loc = tuple(p for p in error["loc"] if p not in ("tms", "resid_mlp", "lm"))
    key = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        owner = _model_at(tuple(error["loc"]))
        hint = ""
        if owner is not None:
            close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{source}: unknown config key '{key}'{hint}"
    if error["type"] == "missing":
        return f"{source}: missing required config key '{key}'"
    value = error.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
    return f"{source}: invalid value for '{key}'{shown}: {error['msg']}"


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict as a `Config`, raising `SPDUserError` with every problem on one line."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        problems = [_describe(e, source) for e in err.errors()]
        raise SPDUserError("; ".join(problems)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping, turning a missing file or a syntax error into a clear `SPDUserError`."""
    if not path.is_file():
        raise SPDUserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise SPDUserError(f"invalid YAML in {path}{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SPDUserError(
            f"{path} must contain a YAML mapping of config keys, got {type(data).__name__}"
        )
    return data


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `data` with dotted keys (`task_config.feature_probability`) replaced."""
    result: dict[str, Any] = _deep_copy(data)
    for dotted, value in overrides.items():
        node = result
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SPDUserError(f"override '{dotted}': '{part}' is not a nested config block")
            node = child
        node[parts[-1]] = value
    return result


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a YAML config file, with optional dotted-key overrides."""
    path = Path(path)
    data = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return config_from_dict(data, source=str(path))


def config_to_yaml(config: Config) -> str:
    """A config as YAML text, in the exact form `load_config` reads back."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
