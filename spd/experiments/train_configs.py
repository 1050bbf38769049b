"""Target-training configs from YAML files, shared by the toy families' training scripts.

    train_<family>.py CONFIG.yaml [--override key.path=value]... [--out DIR]
    train_<family>.py --experiment NAME                 # a shipped config, by its file name

The shipped recipes of the registered targets are files like any other
(`spd/experiments/<family>/train_configs/<name>.yaml`).
"""

import argparse
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from spd.config.loading import apply_overrides, read_yaml
from spd.errors import SPDUserError
from spd.experiments.run_decomposition import parse_override
from spd.persistence.run_dir import check_writable_directory, output_root

ModelT = TypeVar("ModelT", bound=BaseModel)


def validate_train_config(cls: type[ModelT], data: dict[str, Any], source: str) -> ModelT:
    """`data` as a `cls`, every problem named by its dotted key on one line."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            key = ".".join(str(p) for p in error["loc"]) or "(top level)"
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            elif error["type"] == "missing":
                problems.append(f"missing required key '{key}'")
            else:
                problems.append(f"invalid value for '{key}': {error['msg']}")
        raise SPDUserError(f"{source}: " + "; ".join(problems)) from None


def shipped_configs(directory: Path) -> dict[str, Path]:
    """The shipped training configs in `directory`, by name (the file name without `.yaml`)."""
    return {path.stem: path for path in sorted(directory.glob("*.yaml"))}


def load_train_config(
    cls: type[ModelT], path: Path, overrides: dict[str, Any] | None = None
) -> ModelT:
    """Read a training config file and apply dotted overrides."""
    data = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return validate_train_config(cls, data, str(path))


def add_arguments(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """The options every training script shares (CONFIG, --experiment, --override, --out)."""
    parser.add_argument("config", type=Path, nargs="?", help="training config YAML file")
    parser.add_argument(
        "--experiment",
        choices=[*names, "all"],
        default=None,
        help="train a shipped target (or all of them) from its shipped config",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a (dotted) key of the training config, e.g. model.n_features=12; repeatable",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="with CONFIG: the target directory to write (default <output root>/targets/<config "
        "name>); with --experiment: the directory to write <name>/ into (default: the shipped one)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def selected_jobs(
    args: argparse.Namespace, shipped: dict[str, Path], shipped_out: Path
) -> list[tuple[str, Path, Path]]:
    """(name, config file, target directory) of each target to train; a target directory that
    cannot be written fails here, before any training."""
    if (args.config is None) == (args.experiment is None):
        raise SPDUserError("give a training config file or --experiment NAME (not both)")
    if args.config is not None:
        jobs = [
            (
                args.config.stem,
                args.config,
                args.out or output_root(None) / "targets" / args.config.stem,
            )
        ]
    else:
        names = list(shipped) if args.experiment == "all" else [args.experiment]
        base = args.out or shipped_out
        jobs = [(name, shipped[name], base / name) for name in names]
    for _, _, out in jobs:
        check_writable_directory(out, "--out")
    return jobs


def parsed_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `--override` options as a dict of dotted keys."""
    return dict(parse_override(o) for o in args.override)
