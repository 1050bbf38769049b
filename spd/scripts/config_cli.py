"""`spd-config`: tools for config files.

    spd-config upgrade OLD.yaml > NEW.yaml      # a config of the original implementation, in this format
    spd-config upgrade OLD.yaml --target DIR    # the same, its (wandb:) target replaced by a local copy
    spd-config fields [BLOCK]                   # every config key: type, default, meaning
    spd-config starter --model-class CLS --checkpoint PATH   # list the modules it can decompose
    spd-config starter --hf DIR --patterns 'model.layers.0.mlp.*' --out my_run.yaml

`upgrade` translates every key of the original's formats, earlier and later
(docs/original_configs.md), takes weight tying from an original-format TMS target's own training
config, checks that the result is a valid config, and prints it as YAML on stdout; each
translated key is one warning line on stderr. It needs neither W&B nor the network: a `wandb:`
target is kept as it is (or replaced with `--target`), and its weight tying is decided when the
run fetches it.
A key without a translation is a one-line error (exit code 2).

`starter` loads a model (a class by import path with its checkpoint, or a Hugging Face
directory), lists its decomposable modules (name, kind, shape) and, given `--patterns`, writes a
commented starter config for them (spd/experiments/starter_config.py).

`fields` lists the keys of the top-level config, or of one block (`task_config.<task_name>`,
`metrics` / `figures` entries), with their types, defaults and descriptions; for `metrics` and
`figures` also every registered name with its parameters.
"""

import argparse
import json
import sys
import textwrap
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

from spd.config.evaluator_reference import evaluator_reference
from spd.config.loading import config_dict, config_from_dict
from spd.config.loss_registry import LOSS_TERMS
from spd.config.schema import config_blocks
from spd.errors import OneLineArgumentParser, run_cli, write_guard
from spd.loading.run_config import in_an_original_format, with_target_ties
from spd.persistence.atomic_files import atomic_write_text


def upgraded_yaml(path: Path, target: str | None = None) -> str:
    """The config at `path` in this format, as YAML text that `load_config` reads unchanged.

    Needs no network: a `wandb:` target is not fetched (see `with_target_ties`). `target`
    replaces `pretrained_model_path`, e.g. with a local copy of a W&B run's files.
    """
    data = config_dict(path, {"pretrained_model_path": target} if target is not None else None)
    data = with_target_ties(data, str(path), fetch=False, from_original=in_an_original_format(path))
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


def reference_blocks() -> dict[str, type[BaseModel]]:
    """`spd.config.schema.config_blocks()`, plus each loss term's parameter block as `losses.<name>`."""
    terms = {f"losses.{term.name}": term.params for term in LOSS_TERMS.in_order()}
    return {**config_blocks(), **terms}


# `fields metrics` / `fields figures`: the {name, params} entry, then every registered name.
EVALUATOR_BLOCKS: dict[str, Literal["metric", "figure"]] = {
    "metrics": "metric",
    "figures": "figure",
}


def print_fields(block: str) -> None:
    """The reference of one block; for metrics and figures also the names they may take."""
    kind = EVALUATOR_BLOCKS.get(block)
    blocks = reference_blocks()
    print(field_reference(blocks.get(block) or blocks["metrics"]), end="")
    if kind is not None:
        print(f"\nregistered {block} (name, params with defaults):")
        print(evaluator_reference(kind, type_text), end="")


def add_starter_arguments(starter: argparse.ArgumentParser) -> None:
    """The options of `spd-config starter`."""
    starter.add_argument("--model-class", help="import path of a class with from_pretrained(path)")
    starter.add_argument("--checkpoint", help="the path its from_pretrained takes")
    starter.add_argument("--hf", metavar="DIR", help="a Hugging Face causal-LM directory instead")
    starter.add_argument(
        "--patterns", nargs="+", help="fnmatch patterns of the modules to decompose"
    )
    starter.add_argument("--C", type=int, default=None, help="subcomponents per layer")
    starter.add_argument("--out", type=Path, default=None, help="write here (default: stdout)")


def starter(args: argparse.Namespace) -> None:
    """Without --patterns, the model's decomposable modules; with them, the starter config."""
    from spd.experiments.starter_config import load_model, starter_yaml
    from spd.models.decomposable import decomposable_modules, module_table

    loaded = load_model(args.model_class, args.checkpoint, args.hf)
    if not args.patterns:
        print(module_table(decomposable_modules(loaded.model)), end="")
        print("choose modules with --patterns (fnmatch), e.g. --patterns 'layers.*.mlp_in'")
        return
    text = starter_yaml(loaded, args.patterns, args.C)
    if args.out is None:
        print(text, end="")
        return
    with write_guard("the starter config", args.out):
        atomic_write_text(args.out, text)
    print(f"spd-config: wrote {args.out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(
        prog="spd-config", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    upgrade = commands.add_parser("upgrade", help="print an original-format config in this format")
    upgrade.add_argument("config", type=Path, help="the config file to upgrade")
    upgrade.add_argument(
        "--target",
        metavar="PATH",
        default=None,
        help="write this pretrained_model_path instead of the file's (e.g. a local copy of its "
        "wandb: target)",
    )
    fields = commands.add_parser("fields", help="list the config keys with their meanings")
    fields.add_argument(
        "block",
        nargs="?",
        default="config",
        choices=list(dict.fromkeys([*reference_blocks(), *EVALUATOR_BLOCKS])),
    )
    add_starter_arguments(
        commands.add_parser(
            "starter", help="list a model's decomposable modules; write a starter config for some"
        )
    )
    args = parser.parse_args(argv)
    if args.command == "fields":
        print_fields(args.block)
    elif args.command == "starter":
        starter(args)
    else:
        print(upgraded_yaml(args.config, args.target), end="")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
