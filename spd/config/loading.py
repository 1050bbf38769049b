"""Reading a `Config` from YAML, applying overrides, and reporting mistakes in one line."""

import difflib
import sys
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from spd.config.bounded_yaml import MAX_YAML_BYTES, BoundedSafeLoader, load_bounded
from spd.config.flat_loss_keys import FLAT_KEYS, flat_override_paths, translate_flat_losses
from spd.config.original_format import looks_original, translate_original
from spd.config.original_later_format import looks_later, translate_later
from spd.config.schema import Config, TaskConfig, task_config_class
from spd.errors import SPDUserError

# (source, note) pairs already printed: a launcher validates each config more than once.
_WARNED: set[tuple[str, str]] = set()
# Keys of earlier versions of this format, by their new name: they still load (in files, overrides
# and the configs stored in checkpoints), with one warning line each.
RENAMED_KEYS = {"gate_type": "ci_fn_type", "gate_hidden_dims": "ci_fn_hidden_dims"}


def _model_at(loc: tuple[int | str, ...], data: Any) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (used to suggest valid keys).

    `loc` is pydantic's error location, walked through `data` alongside: list indices are
    skipped, and the task block's model is the one its `task_name` in `data` selects.
    """
    owners: list[type[BaseModel]] = [Config]
    for part in loc[:-1]:
        data = _child(data, part)
        if isinstance(part, int):
            continue
        if len(owners) != 1 or part not in owners[0].model_fields:
            return None
        annotation = owners[0].model_fields[part].annotation
        owners = [
            a
            for a in get_args(annotation) or (annotation,)
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if owners == [TaskConfig] and isinstance(data, dict):
            try:
                owners = [task_config_class(data.get("task_name"))]
            except ValueError:
                return None
    return owners[0] if len(owners) == 1 else None


def _child(data: Any, part: int | str) -> Any:
    if isinstance(data, dict):
        return data.get(part)
    if isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
        return data[part]
    return None


def _short_repr(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters: a huge value must not become a huge message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}…({len(text)} chars)"


def _describe(error: Any, source: str, data: Any) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        owner = _model_at(loc, data)
        hint = ""
        if owner is not None:
            # The flat loss keys of earlier versions still load (translated), so they are
            # suggested too.
            known = [*owner.model_fields, *(FLAT_KEYS if owner is Config else ())]
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{source}: unknown config key '{key}'{hint}"
    if error["type"] == "missing":
        return f"{source}: missing required config key '{key}'"
    value = error.get("input")
    shown = f" (got {_short_repr(value)})" if not isinstance(value, dict | list) else ""
    return f"{source}: invalid value for '{key}'{shown}: {error['msg']}"


def upgrade_flat_losses(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` with the flat loss keys of earlier versions moved into `losses:`
    (`spd.config.flat_loss_keys`), printing one warning line per key; otherwise `data` itself."""
    try:
        translated, notes = translate_flat_losses(data)
    except SPDUserError as err:
        raise SPDUserError(f"{source}: {err}") from None
    for note in notes:
        warn_once(source, note)
    return translated


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict as a `Config`, raising `SPDUserError` with every problem on one line.

    A renamed key (`RENAMED_KEYS`) is read under its new name and flat loss keys (a stored run of
    an earlier version) are translated, each with a warning line.
    """
    try:
        return Config.model_validate(upgrade_flat_losses(upgrade_renamed(data, source), source))
    except ValidationError as err:
        problems = [_describe(e, source, data) for e in err.errors()]
        raise SPDUserError("; ".join(problems)) from None


class _UniqueKeyLoader(BoundedSafeLoader):
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
        return load_bounded(text, _UniqueKeyLoader)
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
    if path.stat().st_size > MAX_YAML_BYTES:
        raise SPDUserError(
            f"{what} {path} is larger than {MAX_YAML_BYTES // 2**20} MiB; it is not a config file"
        )
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
    """Return a copy of `data` with dotted keys (`task_config.feature_probability`) replaced.

    In a list of `{name, …}` entries a part selects the entry of that name, added if missing:
    `losses.importance_minimality.coeff=0.01`.
    """
    result: dict[str, Any] = _deep_copy(data)
    for dotted, value in overrides.items():
        node: Any = result
        parts = dotted.split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                node = _named_entry(node, part, dotted)
                continue
            node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise SPDUserError(f"override '{dotted}': '{part}' is not a nested config block")
        if isinstance(node, list):
            raise SPDUserError(f"override '{dotted}': name a key inside an entry of the list")
        node[parts[-1]] = value
    return result


def _named_entry(entries: list[Any], name: str, dotted: str) -> dict[str, Any]:
    """The entry of `entries` named `name` (appended if there is none)."""
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    if not all(isinstance(entry, dict) and "name" in entry for entry in entries):
        raise SPDUserError(f"override '{dotted}': '{name}' is not a named entry of a list")
    entries.append({"name": name})
    return entries[-1]


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    return [_deep_copy(v) for v in data] if isinstance(data, list) else data


def _upgrade_flat_overrides(
    data: dict[str, Any], overrides: dict[str, Any], source: str
) -> dict[str, Any]:
    """`overrides` with each flat loss key (`importance_minimality_coeff=0.5`) turned into the
    `losses.<term>…` paths it sets in `data` (already in `losses:` form), one warning line each."""
    entries = data.get("losses")
    listed = (
        [str(e.get("name")) for e in entries if isinstance(e, dict)]
        if isinstance(entries, list)
        else []
    )
    result: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in FLAT_KEYS:
            result[key] = value
            continue
        paths = flat_override_paths(key, listed)
        warn_once(source, f"flat loss override '{key}' -> {', '.join(paths) or 'no listed term'}")
        result.update(dict.fromkeys(paths, value))
    return result


def upgrade_original(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` translated from the original implementation's format (earlier or later) if it is
    in one, with one warning line on stderr per translated key; otherwise `data` itself."""
    later = looks_later(data)
    if not (later or looks_original(data)):
        return data
    try:
        # The later format's own keys first; what remains is translated as the earlier format's.
        translated, notes = translate_later(data) if later else (data, [])
        # The renamed keys and flat loss keys are translated afterwards, as in any file of this format.
        known = frozenset(Config.model_fields) | RENAMED_KEYS.keys() | FLAT_KEYS
        translated, more = translate_original(translated, known)
        notes += more
    except SPDUserError as err:
        raise SPDUserError(f"{source}: {err}") from None
    for note in notes:
        warn_once(source, f"original-format key: {note}")
    return translated


def upgrade_renamed(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` with each key of `RENAMED_KEYS` under its new name, one warning line per key; a
    mapping that has both names of one key is an `SPDUserError`."""
    renamed = [old for old in RENAMED_KEYS if old in data]
    for old in renamed:
        new = RENAMED_KEYS[old]
        if new in data:
            raise SPDUserError(
                f"{source}: config has both '{old}' (the old name) and '{new}'; keep '{new}'"
            )
        warn_once(source, f"config key '{old}' is now '{new}'; write '{new}'")
    # Rebuilt in place order, so that an upgraded file keeps its layout.
    return {RENAMED_KEYS.get(k, k): v for k, v in data.items()} if renamed else data


def warn_once(source: str, message: str) -> None:
    """Print `spd: warning: <source>: <message>` on stderr, once per process."""
    if (source, message) not in _WARNED:
        _WARNED.add((source, message))
        print(f"spd: warning: {source}: {message}", file=sys.stderr)


def config_dict(path: Path | str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config file as a mapping in this format (translated from the original format if it is
    in that one), with dotted-key overrides applied; not yet validated."""
    source = str(path)
    data = upgrade_flat_losses(
        upgrade_renamed(upgrade_original(read_yaml(Path(path)), source), source), source
    )
    if not overrides:
        return data
    if "losses" not in data and any(k in FLAT_KEYS or k.startswith("losses.") for k in overrides):
        # An override of one term keeps the default terms the file relies on.
        data = {**data, "losses": default_losses()}
    return apply_overrides(data, _upgrade_flat_overrides(data, overrides, str(path)))


def default_losses() -> list[dict[str, Any]]:
    """The `losses:` entries a config without that key gets, as plain mappings."""
    factory = Config.model_fields["losses"].default_factory
    assert factory is not None
    return [spec.model_dump(mode="json") for spec in factory()]  # pyright: ignore[reportCallIssue]


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a YAML config file, with optional dotted-key overrides.

    A file in the original implementation's format is translated (see `upgrade_original`); its
    targets' weight tying is decided by `spd.loading.run_config.load_run_config`.
    """
    return config_from_dict(config_dict(path, overrides), source=str(path))


def config_to_yaml(config: Config) -> str:
    """A config as YAML text, in the exact form `load_config` reads back."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
