"""A launch's manifest (`launch.json`) and its summary page.

    python -m spd.launch.report <launch dir>

`spd-run` records each launch in `<launch dir>/launch.json` (each run's name, output directory,
swept values and command). The summary page, `<launch dir>/report.html`, compares the runs
(rendered by `spd.tracking.report.render_summary`, the package's one HTML generator); runs that
have not written a run directory yet are listed as missing.
"""

import argparse
import json
from pathlib import Path
from typing import Any

from spd.config.loading import parse_yaml_text
from spd.errors import SPDUserError, run_cli
from spd.persistence.atomic_files import atomic_write_text
from spd.tracking.report import REPORT_NAME, RunRecord, read_run, render_summary

MANIFEST = "launch.json"


def write_manifest(launch_dir: Path, manifest: dict[str, Any]) -> Path:
    """Record a launch (id, snapshot, runs with their commands) in its launch directory."""
    path = launch_dir / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def find_run_dir(out_dir: Path, run_name: str) -> Path | None:
    """The newest run directory under `out_dir` whose final config has this run name."""
    found = []
    for config_file in sorted(out_dir.glob("*/final_config.yaml")):
        try:
            config = parse_yaml_text(config_file.read_text(errors="replace"), str(config_file))
        except SPDUserError:
            continue  # a damaged run directory is no run this launch can name
        if isinstance(config, dict) and config.get("run_name") == run_name:
            found.append(config_file.parent)
    return found[-1] if found else None


def build_report(launch_dir: Path, title: str | None = None) -> Path:
    """Write `report.html` comparing the runs of the launch in `launch_dir`; return its path."""
    manifest_path = launch_dir / MANIFEST
    if not manifest_path.is_file():
        raise SPDUserError(
            f"{launch_dir} has no {MANIFEST}; give the directory spd-run printed for the launch"
        )
    manifest = json.loads(manifest_path.read_text())
    records: list[RunRecord] = []
    swept: list[dict[str, Any]] = []
    missing: list[str] = []
    for run in manifest["runs"]:
        run_dir = find_run_dir(Path(run["out_dir"]), run["name"])
        if run_dir is None:
            missing.append(run["name"])
            continue
        records.append(read_run(run_dir))
        swept.append(run.get("swept") or {})
    heading = title or manifest.get("report_title") or f"spd launch {manifest['launch_id']}"
    path = launch_dir / REPORT_NAME
    atomic_write_text(path, render_summary(records, launch_dir, heading, swept, missing))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("launch_dir", type=Path)
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    print(f"spd: launch report written to {build_report(args.launch_dir, args.title)}")


if __name__ == "__main__":
    run_cli(main)
