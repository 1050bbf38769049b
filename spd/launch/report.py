"""The summary page of a launch: one table of every run's final numbers, as a standalone HTML file.

    python -m spd.launch.report <launch dir>

A launch directory holds `launch.json` (written by `spd-run`: each run's name and output
directory). Runs that have not written a run directory yet are listed as missing.
"""

import argparse
import html
import json
from pathlib import Path
from typing import Any

import yaml

from spd.errors import SPDUserError, run_cli
from spd.persistence.run_dir import read_metrics

MANIFEST = "launch.json"
REPORT = "report.html"


def write_manifest(launch_dir: Path, manifest: dict[str, Any]) -> Path:
    """Record a launch (id, snapshot, runs with their commands) in its launch directory."""
    launch_dir.mkdir(parents=True, exist_ok=True)
    path = launch_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def find_run_dir(out_dir: Path, run_name: str) -> Path | None:
    """The newest run directory under `out_dir` whose final config has this run name."""
    found = []
    for config_file in sorted(out_dir.glob("*/final_config.yaml")):
        if (yaml.safe_load(config_file.read_text()) or {}).get("run_name") == run_name:
            found.append(config_file.parent)
    return found[-1] if found else None


def final_values(run_dir: Path) -> dict[str, float]:
    """The last logged value of every metric of a run."""
    values: dict[str, float] = {}
    if (run_dir / "metrics.jsonl").is_file():
        for row in read_metrics(run_dir):
            values.update({k: v for k, v in row.items() if k != "step"})
    return values


def build_report(launch_dir: Path, title: str | None = None) -> Path:
    """Write `report.html` for the launch in `launch_dir` and return its path."""
    manifest_path = launch_dir / MANIFEST
    if not manifest_path.is_file():
        raise SPDUserError(
            f"{launch_dir} has no {MANIFEST}; give the directory spd-run printed for the launch"
        )
    manifest = json.loads(manifest_path.read_text())
    rows: list[tuple[str, Path | None, dict[str, float]]] = []
    for run in manifest["runs"]:
        run_dir = find_run_dir(Path(run["out_dir"]), run["name"])
        rows.append((run["name"], run_dir, final_values(run_dir) if run_dir else {}))
    columns = sorted(
        {key for _, _, values in rows for key in values if key.startswith(("final/", "eval/"))}
    )
    heading = html.escape(
        title or manifest.get("report_title") or f"spd launch {manifest['launch_id']}"
    )
    header = "".join(f"<th>{html.escape(c)}</th>" for c in ["run", "run directory", *columns])
    body = []
    for name, run_dir, values in rows:
        cells = [html.escape(name), html.escape(str(run_dir) if run_dir else "missing")]
        cells += [f"{values[c]:.4g}" if c in values else "" for c in columns]
        body.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{heading}</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px}"
        "table{border-collapse:collapse}</style></head>"
        f"<body><h1>{heading}</h1><table><tr>{header}</tr>{''.join(body)}</table></body></html>\n"
    )
    path = launch_dir / REPORT
    path.write_text(page)
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
