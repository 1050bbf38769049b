"""`spd-config`: tools for config files.

    spd-config upgrade OLD.yaml > NEW.yaml      # a config of the original implementation, in this format
    spd-config fields [BLOCK]                   # every config key: type, default, meaning

`upgrade` translates every key of the original's format (docs/original_configs.md), takes weight
tying from an original-format TMS target's own training config, checks that the result is a
valid config, and prints it as YAML on stdout; each translated key is one warning line on stderr.
A key without a translation is a one-line error (exit code 2).

`fields` lists the keys of the top-level config, or of one block (`task_config.<task_name>`,
`metrics` / `figures` entries), with their types, defaults and descriptions.
"""

import argparse
import json
import textwrap
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

from spd.config.loading import config_dict, config_from_dict
from spd.config.schema import CONFIG_BLOCKS
from spd.errors import OneLineArgumentParser, run_cli
from spd.loading.run_config import with_target_ties


def upgraded_yaml(path: Path) -> str:
    """The config at `path` in this format, as YAML text that `load_config` reads unchanged."""
    data = with_target_ties(config_dict(path), str(path))
    config_from_dict(data, source=str(path))  # the upgraded file must load
    return yaml.safe_dump(data, sort_keys=False)


def type_text(annotation: Any) -> str:
    """A field's type as a reader of a YAML file needs it: `a | b`, choices spelled out."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is Annotated:
        return type_text(args[0])
    if origin in (Union, UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_text(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def field_reference(block: type[BaseModel]) -> str:
    """One paragraph per field of `block`: `name: type = default`, then its description."""
    paragraphs = []
    for name, field in block.model_fields.items():
        factory = field.default_factory
        value = field.default if factory is None else factory()  # pyright: ignore[reportCallIssue]
        # JSON, which YAML reads as written: null, "auto", [{"name": "ci_l0", "params": {}}].
        default = (
            " (required)"
            if value is PydanticUndefined
            else f" = {json.dumps(to_jsonable_python(value))}"
        )
        description = textwrap.fill(
            field.description or "", width=96, initial_indent="    ", subsequent_indent="    "
        )
        paragraphs.append(f"{name}: {type_text(field.annotation)}{default}\n{description}")
    return "\n".join(paragraphs) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(
        prog="spd-config", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    upgrade = commands.add_parser("upgrade", help="print an original-format config in this format")
    upgrade.add_argument("config", type=Path, help="the config file to upgrade")
    fields = commands.add_parser("fields", help="list the config keys with their meanings")
    fields.add_argument("block", nargs="?", default="config", choices=list(CONFIG_BLOCKS))
    args = parser.parse_args(argv)
    if args.command == "fields":
        print(field_reference(CONFIG_BLOCKS[args.block]), end="")
    else:
        print(upgraded_yaml(args.config), end="")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
