"""Training curves as inline SVG: every logged series over steps, for the HTML reports.

`metric_series(rows)` turns metrics.jsonl rows into one (steps, values) series per key;
`curves_html(runs)` draws one chart per group of related keys (each loss term with the total,
CI-L0 per layer, alive counts per layer, each eval metric family, CE/KL per mask kind), several
runs overlaid in one chart. A chart whose positive values span more than two decades uses a log
scale. The SVG needs no script: hovering a line shows its run, key and last value (`<title>`).
"""

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Series = list[tuple[int, float]]

# Colours that stay apart for the common colour-vision deficiencies (Okabe-Ito, then greys).
PALETTE = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#d55e00",
    "#56b4e9",
    "#f0e442",
    "#000000",
    "#777777",
)
DASHES = ("", "6 3", "2 2", "8 3 2 3")
WIDTH, HEIGHT = 420, 230
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 10, 34
MAX_POINTS = 400  # a line of more points is thinned to about this many
LOG_SPAN = 100.0  # positive values spanning more than this factor get a log axis

CURVES_STYLE = """
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(430px, 1fr)); gap: 1rem; }
.chart { border: 1px solid #e3e3e3; padding: .4rem; background: #fcfcfc; }
.chart h3 { margin: 0 0 .2rem; font-size: .9rem; }
.chart svg text { font: 11px system-ui, sans-serif; fill: #333; }
.chart ul { list-style: none; margin: .2rem 0 0; padding: 0; font-size: .75rem; }
.chart li { display: inline-block; margin-right: .8rem; }
.chart .swatch { display: inline-block; width: 1.4em; height: 0; border-top: 2px solid;
                 vertical-align: middle; margin-right: .3em; }
.headline { background: #f4f8fb; border: 1px solid #cfe0ec; padding: .6rem .9rem; }
.headline .value { font-size: 1.3rem; font-weight: 600; margin-right: .3rem; }
.headline span.item { display: inline-block; margin-right: 1.6rem; }
"""


def metric_series(rows: Iterable[dict[str, Any]]) -> dict[str, Series]:
    """Every numeric key's (step, value) points in logged order; non-finite values are dropped."""
    series: dict[str, Series] = {}
    for row in rows:
        step = int(row.get("step", -1))
        for key, value in row.items():
            if key == "step" or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if math.isfinite(value):
                series.setdefault(key, []).append((step, float(value)))
    return series


def chart_group(key: str) -> str:
    """The chart a key is drawn in: its path without the last part (`train/loss/total` →
    `train/loss`), or the key itself when it has only two parts (`train/lr`)."""
    parts = key.split("/")
    return "/".join(parts[:-1]) if len(parts) > 2 else key


@dataclass(frozen=True)
class Line:
    """One drawn series: its label in the legend and its points."""

    label: str
    points: Series
    colour: str
    dash: str


def _thin(points: Series) -> Series:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def _ticks(low: float, high: float, log: bool) -> list[float]:
    if log:
        first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
        step = max(1, (last - first) // 5)
        return [10.0**e for e in range(first, last + 1, step) if low <= 10.0**e <= high] or [low]
    if high == low:
        return [low]
    raw = (high - low) / 4
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}"


@dataclass(frozen=True)
class _Axes:
    """A chart's value and step ranges, and where a point lands in the SVG."""

    low: float
    high: float
    x_low: float
    x_high: float
    log: bool

    @classmethod
    def of(cls, lines: Sequence[Line]) -> "_Axes":
        values = [v for line in lines for _, v in line.points]
        steps = [s for line in lines for s, _ in line.points]
        log = all(v > 0 for v in values) and max(values) / min(values) > LOG_SPAN
        low, high = min(values), max(values)
        if high == low:
            # Relative padding: an absolute one vanishes in the rounding of a large value.
            pad = max(abs(low) / 2, 0.5)
            low, high = (low / 2, high * 2) if log else (low - pad, high + pad)
        return cls(low, high, min(steps), max(max(steps), min(steps) + 1), log)

    def y_of(self, v: float) -> float:
        if self.log:
            f = (math.log10(v) - math.log10(self.low)) / (
                math.log10(self.high) - math.log10(self.low)
            )
        else:
            f = (v - self.low) / (self.high - self.low)
        return TOP + (1 - f) * (HEIGHT - TOP - BOTTOM)

    def x_of(self, s: float) -> float:
        return LEFT + (s - self.x_low) / (self.x_high - self.x_low) * (WIDTH - LEFT - RIGHT)


def _axes_svg(axes: _Axes) -> list[str]:
    """The frame, the value ticks with grid lines and the step labels."""
    parts = [
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{HEIGHT - TOP - BOTTOM}" fill="#fff" stroke="#ccc"/>'
    ]
    for tick in _ticks(axes.low, axes.high, axes.log):
        y = axes.y_of(tick)
        parts.append(
            f'<line x1="{LEFT - 4}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>'
        )
    for step in sorted({axes.x_low, axes.x_high, (axes.x_low + axes.x_high) // 2}):
        # The end labels align inwards so that none is cut off at the edges.
        anchor = {axes.x_low: "start", axes.x_high: "end"}.get(step, "middle")
        parts.append(
            f'<text x="{axes.x_of(step):.1f}" y="{HEIGHT - BOTTOM + 14}" '
            f'text-anchor="{anchor}">{int(step)}</text>'
        )
    parts.append(
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 2}" text-anchor="middle">step</text>'
    )
    return parts


def _series_svg(line: Line, axes: _Axes) -> str:
    """One series: a polyline (a dot when it has one point) with its last value on hover."""
    points = _thin(line.points)
    if axes.log:
        points = [(s, v) for s, v in points if v > 0]
    coords = " ".join(f"{axes.x_of(s):.1f},{axes.y_of(v):.1f}" for s, v in points)
    tip = html.escape(f"{line.label}: {_label(points[-1][1])} at step {points[-1][0]}")
    if len(points) == 1:
        x, y = coords.split(",")
        return (
            f'<circle class="series" cx="{x}" cy="{y}" r="3" fill="{line.colour}">'
            f"<title>{tip}</title></circle>"
        )
    dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
    return (
        f'<polyline class="series" points="{coords}" fill="none" stroke="{line.colour}" '
        f'stroke-width="1.6"{dash}><title>{tip}</title></polyline>'
    )


def _chart_svg(title: str, lines: Sequence[Line]) -> str:
    """One chart: axes, ticks and a polyline per series."""
    axes = _Axes.of(lines)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
        f'role="img" aria-label="{html.escape(title)}" data-log="{str(axes.log).lower()}">'
    )
    body = _axes_svg(axes) + [_series_svg(line, axes) for line in lines]
    return head + "".join(body) + "</svg>"


def _legend(lines: Sequence[Line]) -> str:
    items = "".join(
        f'<li><span class="swatch" style="border-color:{line.colour};'
        f'border-top-style:{"dashed" if line.dash else "solid"}"></span>'
        f"{html.escape(line.label)}</li>"
        for line in lines
    )
    return f"<ul>{items}</ul>"


def curves_html(runs: Sequence[tuple[str, dict[str, Series]]]) -> str:
    """A grid of charts, one per key group, each run's series overlaid (colour by key, dash by
    run); `runs` are (run name, series). Empty text when nothing was logged over steps."""
    groups: dict[str, list[str]] = {}
    for _, series in runs:
        for key in series:
            members = groups.setdefault(chart_group(key), [])
            if key not in members:
                members.append(key)
    charts = []
    for group in sorted(groups, key=_group_rank):
        keys = sorted(groups[group])
        lines = [
            Line(
                label=(key.removeprefix(group + "/") or key)
                + (f" · {name}" if len(runs) > 1 else ""),
                points=series[key],
                colour=PALETTE[k % len(PALETTE)],
                dash=DASHES[r % len(DASHES)],
            )
            for r, (name, series) in enumerate(runs)
            for k, key in enumerate(keys)
            if key in series
        ]
        if len(lines) == 1 and lines[0].label == group:
            lines = [Line(group.rsplit("/", 1)[-1], lines[0].points, lines[0].colour, "")]
        charts.append(
            f'<div class="chart" data-group="{html.escape(group)}"><h3>{html.escape(group)}</h3>'
            f"{_chart_svg(group, lines)}{_legend(lines)}</div>"
        )
    if not charts:
        return ""
    return f'<style>{CURVES_STYLE}</style><div class="charts">{"".join(charts)}</div>'


def _group_rank(group: str) -> tuple[int, str]:
    order = ("train/loss", "eval/ce_kl", "train/ci_l0", "train/n_alive", "eval/", "train/")
    return next(
        (i for i, prefix in enumerate(order) if group.startswith(prefix)), len(order)
    ), group
