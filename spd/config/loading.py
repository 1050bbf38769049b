"""Reading a `Config` from YAML, applying overrides, and reporting mistakes in one line."""

import difflib
import sys
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from spd.config.original_format import looks_original, translate_original
from spd.config.schema import Config
from spd.errors import SPDUserError

# (source, note) pairs already printed: a launcher validates each config more than once.
_WARNED: set[tuple[str, str]] = set()


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
    loc = tuple(p for p in error["loc"] if p not in ("tms", "resid_mlp", "lm", "generic"))
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping which repeats a key (plain YAML keeps the last)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # pyright: ignore[reportArgumentType]
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' appears twice (first at line {seen[key] + 1}); keep one of them",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,  # pyright: ignore[reportArgumentType]
)


def parse_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text, refusing repeated keys; a syntax error is an `SPDUserError` naming `source`."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise SPDUserError(f"invalid YAML in {source}{where}: {problem}") from None
    except RecursionError:
        raise SPDUserError(f"invalid YAML in {source}: nested too deeply") from None


def read_text_file(path: Path, what: str = "config file") -> str:
    """The UTF-8 text of a file the user named, with a clear error for each way that fails."""
    if not path.exists():
        raise SPDUserError(f"{what} not found: {path}")
    if path.is_dir():
        raise SPDUserError(f"{what} {path} is a directory; give the path of a YAML file")
    if not path.is_file():
        raise SPDUserError(f"{what} {path} is not a regular file")
    try:
        raw = path.read_bytes()
    except PermissionError:
        raise SPDUserError(
            f"{what} {path} is not readable (permission denied); fix its permissions"
        ) from None
    except OSError as err:
        raise SPDUserError(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SPDUserError(
            f"{what} {path} is not UTF-8 text (byte {err.start}); save it as UTF-8 YAML"
        ) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping, turning every way a file can be unreadable into an `SPDUserError`.

    The file must be UTF-8 text holding a mapping, and no mapping in it may repeat a key.
    """
    text = read_text_file(path)
    if "\x00" in text:
        raise SPDUserError(f"config file {path} contains NUL bytes; it is not a YAML text file")
    data = parse_yaml_text(text, str(path))
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


def upgrade_original(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` translated from the original implementation's format if it is in that format,
    with one warning line on stderr per translated key; otherwise `data` itself."""
    if not looks_original(data):
        return data
    try:
        translated, notes = translate_original(data, frozenset(Config.model_fields))
    except SPDUserError as err:
        raise SPDUserError(f"{source}: {err}") from None
    for note in notes:
        warn_once(source, f"original-format key: {note}")
    return translated


def warn_once(source: str, message: str) -> None:
    """Print `spd: warning: <source>: <message>` on stderr, once per process."""
    if (source, message) not in _WARNED:
        _WARNED.add((source, message))
        print(f"spd: warning: {source}: {message}", file=sys.stderr)


def config_dict(path: Path | str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config file as a mapping in this format (translated from the original format if it is
    in that one), with dotted-key overrides applied; not yet validated."""
    data = upgrade_original(read_yaml(Path(path)), str(path))
    return apply_overrides(data, overrides) if overrides else data


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a YAML config file, with optional dotted-key overrides.

    A file in the original implementation's format is translated (see `upgrade_original`); its
    targets' weight tying is decided by `spd.loading.run_config.load_run_config`.
    """
    return config_from_dict(config_dict(path, overrides), source=str(path))


def config_to_yaml(config: Config) -> str:
    """A config as YAML text, in the exact form `load_config` reads back."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
