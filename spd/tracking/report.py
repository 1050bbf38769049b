"""Self-contained HTML reports of run directories (the local counterpart of a W&B report).

`write_run_report(run_dir)` writes `<run dir>/report.html`: the run's decisive numbers
(`spd.tracking.headline`), every logged series as a curve (`spd.tracking.curves`), the final value
of every logged metric (an `eval/` value repeated under `final/` shown once), the latest image of
every figure (embedded as base64 PNG) and the config. The page needs
no server and no other file. `render_summary(runs)` builds one page comparing several runs
(metrics side by side, swept values as columns, the config keys that differ, links to each run's
report, the runs' curves overlaid, each run's figures as thumbnails); `spd-report` and a launch's summary page
(`spd.launch.report`) both use it. This module is the only HTML generator of the package.
"""

import base64
import html
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spd.config.loading import parse_yaml_text, warn_once
from spd.errors import SPDUserError
from spd.persistence.atomic_files import atomic_write_text
from spd.persistence.run_dir import read_metrics
from spd.tracking.curves import Series, curves_html, metric_series
from spd.tracking.group_table import group_tables_html
from spd.tracking.headline import headline_html, table_keys

REPORT_NAME = "report.html"
# How every page written here begins (spd-report replaces an existing file only if it does).
HTML_START = "<!DOCTYPE html>"
_FIGURE_FILE = re.compile(r"^(?P<name>.+)_(?P<step>\d+)\.png$")
# Metric groups in the order a reader wants them; anything else comes last.
_GROUP_ORDER = ("final/", "eval/", "train/")

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
.meta { color: #666; font-size: .85rem; margin-top: 0; }
nav a { margin-right: 1rem; font-size: .9rem; }
table { border-collapse: collapse; font-size: .85rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; }
th { background: #f4f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, monospace; }
tr.group td { background: #fafafa; font-weight: 600; }
.gallery { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; border: 1px solid #e3e3e3; padding: .5rem; background: #fcfcfc; }
figure img { max-width: 100%; display: block; }
figcaption { font-size: .8rem; color: #444; margin-top: .3rem; }
.thumbs figure img { max-width: 220px; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .8rem; }
"""


@dataclass(frozen=True)
class FigureFile:
    """The latest saved image of one named figure."""

    name: str
    step: int
    path: Path


@dataclass
class RunRecord:
    """What a report shows of one run directory."""

    path: Path
    config_text: str
    config: dict[str, Any]
    final_metrics: dict[str, tuple[int, float]] = field(default_factory=dict)
    figures: list[FigureFile] = field(default_factory=list)
    series: dict[str, Series] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def last_step(self) -> int | None:
        return max((step for step, _ in self.final_metrics.values()), default=None)


def is_run_directory(path: Path) -> bool:
    """Whether `path` looks like an spd run directory."""
    return (path / "final_config.yaml").is_file() or (path / "metrics.jsonl").is_file()


def find_run_directories(root: Path) -> list[Path]:
    """Every run directory at or below `root`, at any depth (e.g. `<output root>/<launch id>/<run>`),
    in path order; nothing below a run directory is searched."""
    found: list[Path] = []
    for current, subdirs, _files in os.walk(root):
        path = Path(current)
        if is_run_directory(path):
            found.append(path)
            subdirs.clear()
        else:
            # Hidden folders hold partial downloads and tool caches, not runs.
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    return sorted(found)


def latest_figures(figures_dir: Path) -> list[FigureFile]:
    """For each figure name in `figures/<name>_<step>.png`, the file of the highest step."""
    latest: dict[str, FigureFile] = {}
    for path in figures_dir.glob("*.png") if figures_dir.is_dir() else []:
        match = _FIGURE_FILE.match(path.name)
        if match is None:
            continue
        found = FigureFile(match["name"], int(match["step"]), path)
        if found.name not in latest or found.step > latest[found.name].step:
            latest[found.name] = found
    return sorted(latest.values(), key=lambda f: f.name)


def final_metric_values(rows: Iterable[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    """The last logged (step, value) of every metric key."""
    final: dict[str, tuple[int, float]] = {}
    for row in rows:
        step = int(row.get("step", -1))
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float):
                final[key] = (step, float(value))
    return final


def read_run(path: Path) -> RunRecord:
    """Collect the config, final metrics and latest figures of a run directory."""
    if not is_run_directory(path):
        raise SPDUserError(
            f"{path} is not an spd run directory (no final_config.yaml or metrics.jsonl)"
        )
    config_file = path / "final_config.yaml"
    config_text = config_file.read_text(errors="replace") if config_file.is_file() else ""
    try:
        loaded = parse_yaml_text(config_text, str(config_file)) if config_text else None
    except SPDUserError as err:
        # A damaged config is shown as it is; the rest of the run is still worth reporting.
        warn_once(str(path), f"{err}; its config is left out of the report")
        loaded = None
    record = RunRecord(
        path=path, config_text=config_text, config=loaded if isinstance(loaded, dict) else {}
    )
    if (path / "metrics.jsonl").is_file():
        rows = read_metrics(path)
        record.final_metrics = final_metric_values(rows)
        record.series = metric_series(rows)
    record.figures = latest_figures(path / "figures")
    return record


def _metric_sort_key(key: str) -> tuple[int, str]:
    for rank, prefix in enumerate(_GROUP_ORDER):
        if key.startswith(prefix):
            return rank, key
    return len(_GROUP_ORDER), key


def _group_of(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else "other"


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _image_tag(figure: FigureFile) -> str:
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(figure.name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(figure.name)}, step {figure.step}</figcaption></figure>"
    )


def _gallery(figures: Sequence[FigureFile], thumbnails: bool = False) -> str:
    if not figures:
        return '<p class="empty">No figures were saved.</p>'
    kind = "gallery thumbs" if thumbnails else "gallery"
    return f'<div class="{kind}">' + "".join(_image_tag(f) for f in figures) + "</div>"


def _page(title: str, meta: str, sections: list[tuple[str, str, str]]) -> str:
    """A whole HTML document: `sections` are (id, heading, inner HTML)."""
    nav = "".join(f'<a href="#{sid}">{html.escape(heading)}</a>' for sid, heading, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{html.escape(heading)}</h2>{inner}</section>'
        for sid, heading, inner in sections
    )
    return (
        f'{HTML_START}\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="meta">{meta}</p>\n<nav>{nav}</nav>\n{body}\n'
        "</body>\n</html>\n"
    )


def _grouped_rows(keys: Sequence[str], cells: Callable[[str], str], n_columns: int) -> str:
    """Table rows of metric `keys` with a heading row per group; `cells(key)` gives a row's cells."""
    rows: list[str] = []
    current = None
    for key in sorted(keys, key=_metric_sort_key):
        group = _group_of(key)
        if group != current:
            rows.append(
                f'<tr class="group"><td colspan="{n_columns}">{html.escape(group)}</td></tr>'
            )
            current = group
        rows.append(f"<tr><td>{html.escape(key)}</td>{cells(key)}</tr>")
    return "".join(rows)


def _group_section(final: dict[str, tuple[int, float]]) -> list[tuple[str, str, str]]:
    """The per-layer-group tables (spd.tracking.group_table), where the run logged them."""
    tables = group_tables_html(final)
    return [("groups", "Per layer group", tables)] if tables else []


def render_run_report(run: RunRecord) -> str:
    """The HTML report of one run: final metrics, latest figures, config."""
    if run.final_metrics:
        rows = _grouped_rows(
            table_keys(run.final_metrics),
            lambda k: (
                f'<td class="num">{_format_value(run.final_metrics[k][1])}</td>'
                f'<td class="num">{run.final_metrics[k][0]}</td>'
            ),
            3,
        )
        metrics = f'<table class="metrics"><thead><tr><th>metric</th><th>value</th><th>step</th></tr></thead><tbody>{rows}</tbody></table>'
    else:
        metrics = '<p class="empty">No metrics were logged.</p>'
    config = (
        f"<pre>{html.escape(run.config_text)}</pre>"
        if run.config_text
        else '<p class="empty">No config.</p>'
    )
    meta = (
        f"Run directory {html.escape(str(run.path.resolve()))} · last step {run.last_step} · "
        f"report written {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    sections = [
        ("headline", "Decisive numbers", headline_html(run.final_metrics) or "<p>None logged.</p>"),
        ("curves", "Curves", curves_html([(run.name, run.series)]) or "<p>None logged.</p>"),
        *_group_section(run.final_metrics),
        ("metrics", "Final metrics", metrics),
        ("figures", "Figures", _gallery(run.figures)),
        ("config", "Config", config),
    ]
    return _page(f"SPD run {run.name}", meta, sections)


def write_run_report(run_dir: Path) -> Path:
    """Write (atomically) and return `<run_dir>/report.html`."""
    path = run_dir / REPORT_NAME
    atomic_write_text(path, render_run_report(read_run(run_dir)))
    return path


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = json.dumps(value)
    return flat


def config_differences(runs: Sequence[RunRecord]) -> dict[str, list[str | None]]:
    """Dotted config keys whose value is not the same in every run, with each run's value."""
    flat = [_flatten(run.config) for run in runs]
    keys = sorted(set().union(*flat)) if flat else []
    table = {key: [f.get(key) for f in flat] for key in keys}
    return {key: values for key, values in table.items() if len(set(values)) > 1}


def _swept_cell(values: dict[str, Any], key: str) -> str:
    return html.escape(json.dumps(values[key])) if key in values else ""


def _overview(
    runs: Sequence[RunRecord],
    swept: Sequence[dict[str, Any]],
    missing: Sequence[str],
    out_dir: Path,
) -> str:
    """One row per run: its name, swept values, last step, report link and directory."""
    swept_keys = list(dict.fromkeys(key for values in swept for key in values))
    overview_rows = []
    for run, values in zip(runs, swept, strict=True):
        report = run.path / REPORT_NAME
        link = (
            f'<a href="{html.escape(os.path.relpath(report, out_dir))}">report</a>'
            if report.is_file()
            else ""
        )
        overview_rows.append(
            f"<tr><td>{html.escape(run.name)}</td>"
            + "".join(f"<td>{_swept_cell(values, key)}</td>" for key in swept_keys)
            + f'<td class="num">{run.last_step}</td><td>{link}</td>'
            f"<td>{html.escape(str(run.path.resolve()))}</td></tr>"
        )
    for name in missing:
        overview_rows.append(
            f"<tr><td>{html.escape(name)}</td>"
            + "<td></td>" * len(swept_keys)
            + "<td></td><td></td><td>missing (no run directory yet)</td></tr>"
        )
    swept_head = "".join(f"<th>{html.escape(key)}</th>" for key in swept_keys)
    return (
        f"<table><thead><tr><th>run</th>{swept_head}<th>last step</th><th>report</th>"
        f"<th>directory</th></tr></thead><tbody>{''.join(overview_rows)}</tbody></table>"
    )


def _metrics_side_by_side(runs: Sequence[RunRecord], head: str) -> str:
    """Every metric key a row, each run's final value a column."""
    keys = sorted(set().union(*(run.final_metrics for run in runs)))

    def cells(key: str) -> str:
        values = [run.final_metrics.get(key) for run in runs]
        return "".join(
            f'<td class="num">{"" if v is None else _format_value(v[1])}</td>' for v in values
        )

    return (
        f'<table class="metrics"><thead><tr><th>metric</th>{head}</tr></thead>'
        f"<tbody>{_grouped_rows(keys, cells, len(runs) + 1)}</tbody></table>"
    )


def _config_table(runs: Sequence[RunRecord], head: str) -> str:
    """The config keys that differ between the runs, each run's value a column."""
    differences = config_differences(runs)
    if not differences:
        return "<p>All runs have the same config.</p>"
    diff_rows = "".join(
        f"<tr><td>{html.escape(key)}</td>"
        + "".join(f"<td>{html.escape(v) if v is not None else '—'}</td>" for v in values)
        + "</tr>"
        for key, values in differences.items()
    )
    return f"<table><thead><tr><th>config key</th>{head}</tr></thead><tbody>{diff_rows}</tbody></table>"


def render_summary(
    runs: Sequence[RunRecord],
    out_dir: Path,
    title: str = "SPD runs",
    swept: Sequence[dict[str, Any]] | None = None,
    missing: Sequence[str] = (),
) -> str:
    """One page comparing `runs`: an overview (one row per run, the values a sweep chose for it
    as columns, a link to its report), final metrics side by side, config differences and each
    run's latest figures as thumbnails.

    `swept[i]` holds the swept values of `runs[i]`; `missing` names runs of a launch that wrote no
    run directory. Links are relative to `out_dir`, where the page will be written.
    """
    head = "".join(f"<th>{html.escape(run.name)}</th>" for run in runs)
    swept = list(swept) if swept is not None else [{} for _ in runs]
    galleries = "".join(
        f'<h3 id="run-{i}">{html.escape(run.name)}</h3>{_gallery(run.figures, thumbnails=True)}'
        for i, run in enumerate(runs)
    )
    meta = f"{len(runs)} run(s) · written {time.strftime('%Y-%m-%d %H:%M:%S')}"
    if missing:
        meta += f" · {len(missing)} missing"
    sections = [
        ("runs", "Runs", _overview(runs, swept, missing, out_dir)),
        ("curves", "Curves", curves_html([(r.name, r.series) for r in runs]) or "<p>None.</p>"),
        ("metrics", "Final metrics", _metrics_side_by_side(runs, head)),
        ("config", "Config differences", _config_table(runs, head)),
        ("figures", "Figures", galleries),
    ]
    return _page(title, meta, sections)
