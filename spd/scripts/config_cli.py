"""`spd-config`: tools for config files.

    spd-config upgrade OLD.yaml > NEW.yaml      # a config of the original implementation, in this format

`upgrade` translates every key of the original's format (docs/original_configs.md), takes weight
tying from an original-format TMS target's own training config, checks that the result is a
valid config, and prints it as YAML on stdout; each translated key is one warning line on stderr.
A key without a translation is a one-line error (exit code 2).
"""

import argparse
from pathlib import Path

import yaml

from spd.config.loading import config_dict, config_from_dict
from spd.errors import OneLineArgumentParser, run_cli
from spd.loading.run_config import with_target_ties


def upgraded_yaml(path: Path) -> str:
    """The config at `path` in this format, as YAML text that `load_config` reads unchanged."""
    data = with_target_ties(config_dict(path), str(path))
    config_from_dict(data, source=str(path))  # the upgraded file must load
    return yaml.safe_dump(data, sort_keys=False)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(
        prog="spd-config", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    upgrade = commands.add_parser("upgrade", help="print an original-format config in this format")
    upgrade.add_argument("config", type=Path, help="the config file to upgrade")
    args = parser.parse_args(argv)
    print(upgraded_yaml(args.config), end="")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
