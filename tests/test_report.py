"""The HTML run report and the `spd-report` summary page, built from real run directories."""

import base64
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from spd.errors import SPDUserError
from spd.persistence.run_dir import read_metrics
from spd.scripts.report import main as report_main
from spd.tracking.curves import curves_html, metric_series
from spd.tracking.report import final_metric_values, latest_figures
from tests.tiny_runs import run_tiny_tms

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ["ci_histograms", "feature_vectors_linear1", "permuted_ci", "uv_matrices"]


@dataclass
class Page(HTMLParser):
    """The parts of an HTML page these tests look at."""

    sections: list[str] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (alt, src)
    links: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)  # tags that would load something else
    rows: list[list[str]] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    pre: str = ""
    _cell: list[str] | None = None
    _in_pre: bool = False

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self.sections.append(a["id"])
        elif tag == "img":
            self.images.append((a["alt"], a["src"]))
        elif tag == "a":
            self.links.append(a["href"])
        elif tag in ("script", "link", "iframe") or (
            tag == "img" and not a["src"].startswith("data:")
        ):
            self.external.append(tag)
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "pre":
            self._in_pre = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            self.rows[-1].append(text)
            if tag == "th":
                self.headers.append(text)
            self._cell = None
        elif tag == "pre":
            self._in_pre = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_pre:
            self.pre += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    root = tmp_path_factory.mktemp("report_runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPD_OUT_DIR", str(root))
        patch.delenv("WANDB_MODE", raising=False)
        yield [run_tiny_tms(seed=seed, run_name=f"seed{seed}").path for seed in (0, 1)]


def test_run_report_shows_final_metrics_figures_and_config(two_runs: list[Path]) -> None:
    run_dir = two_runs[0]
    page = parse(run_dir / "report.html")
    assert page.sections == ["headline", "curves", "metrics", "figures", "config"]
    assert page.external == []

    # Every metric's last logged value and step, an eval/ value that final/ repeats shown once.
    table = {row[0]: row[1:] for row in page.rows if len(row) == 3 and row[0] != "metric"}
    last = final_metric_values(read_metrics(run_dir))
    repeats = {
        key
        for key in last
        if key.startswith("eval/") and last.get("final/" + key[len("eval/") :]) == last[key]
    }
    assert "eval/mmcs/linear1" in repeats
    assert set(table) == set(last) - repeats
    for key in table:
        step, value = last[key]
        assert table[key] == [f"{value:.4g}", str(step)]
    assert "final/mmcs/linear1" in table and table["final/mmcs/linear1"][1] == "20"

    # Each figure once, at its latest step, embedded byte for byte.
    assert [alt for alt, _ in page.images] == FIGURES
    for alt, src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        data = base64.b64decode(src[len(prefix) :])
        assert data.startswith(PNG_SIGNATURE)
        assert data == (run_dir / "figures" / f"{alt}_20.png").read_bytes()

    assert page.pre == (run_dir / "final_config.yaml").read_text()


def test_summary_page_compares_runs(
    two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pages" / "summary.html"
    report_main([str(p) for p in two_runs] + ["--out", str(out), "--title", "Seeds"])
    assert "2 run(s)" in capsys.readouterr().out
    page = parse(out)
    assert page.sections == ["runs", "curves", "metrics", "config", "figures"]
    assert page.external == []
    names = [p.name for p in two_runs]
    assert (
        page.headers.count(names[0]) == page.headers.count(names[1]) == 2
    )  # metrics and config tables
    metric_rows = {
        row[0]: row[1:] for row in page.rows if len(row) == 3 and row[0].startswith("final/")
    }
    for column, run_dir in enumerate(two_runs):
        value = final_metric_values(read_metrics(run_dir))["final/mmcs/linear1"][1]
        assert metric_rows["final/mmcs/linear1"][column] == f"{value:.4g}"
    config_rows = {
        row[0]: row[1:] for row in page.rows if row and row[0] in ("seed", "run_name", "C")
    }
    assert config_rows == {"seed": ["0", "1"], "run_name": ['"seed0"', '"seed1"']}  # C is shared
    assert len(page.images) == 2 * len(FIGURES)
    run_links = [link for link in page.links if not link.startswith("#")]
    assert [(out.parent / link).resolve() for link in run_links] == [
        (p / "report.html").resolve() for p in two_runs
    ]


def test_summary_of_a_folder_takes_every_run_in_it(two_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "all.html"
    report_main([str(two_runs[0].parent), "--out", str(out)])
    page = parse(out)
    assert len(page.images) == 2 * len(FIGURES)
    with pytest.raises(SPDUserError, match="not a run directory and holds none"):
        report_main([str(tmp_path), "--out", str(tmp_path / "x.html")])
    with pytest.raises(SPDUserError, match="no such directory"):
        report_main([str(tmp_path / "missing")])


def test_a_folder_of_launches_finds_runs_at_any_depth(
    two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`spd-run` writes `<output root>/<launch id>/<run>`; `spd-report <output root>` finds them."""
    root = tmp_path / "spd_out"
    nested = [root / "20250101-120000-abc123" / two_runs[0].name]
    nested.append(root / "older" / "20241231-000000-def456" / two_runs[1].name)
    for source, copy in zip(two_runs, nested, strict=True):
        shutil.copytree(source, copy)
    (root / "20250101-120000-abc123" / "launch.json").write_text("{}\n")
    out = tmp_path / "all.html"
    report_main([str(root), "--out", str(out)])
    assert "2 run(s)" in capsys.readouterr().out
    run_links = [link for link in parse(out).links if not link.startswith("#")]
    assert sorted((out.parent / link).resolve() for link in run_links) == sorted(
        (p / "report.html").resolve() for p in nested
    )


def test_latest_figures_picks_highest_step_per_name(tmp_path: Path) -> None:
    for name in (
        "feature_vectors_linear1_0.png",
        "feature_vectors_linear1_300.png",
        "ci_5.png",
        "ci_40.png",
        "notes.png",
    ):
        (tmp_path / name).write_bytes(b"")
    found = [(f.name, f.step) for f in latest_figures(tmp_path)]
    assert found == [("ci", 40), ("feature_vectors_linear1", 300)]


def test_curves_plot_every_series_with_log_scale_where_values_span_decades() -> None:
    rows = [
        {
            "step": s,
            "train/loss/total": 10.0 ** (-s / 10),
            "train/lr": 1e-3,
            "train/p": 2.0 - s / 20,
        }
        for s in range(0, 31, 10)
    ] + [{"step": 30, "eval/mmcs/linear1": 0.9, "final/mmcs/linear1": 0.9}]
    series = metric_series(rows)
    assert series["train/loss/total"] == [(s, 10.0 ** (-s / 10)) for s in (0, 10, 20, 30)]
    page = curves_html([("a", series), ("b", {"train/lr": [(0, 2e-3), (30, 2e-3)]})])
    charts = dict(re.findall(r'data-group="([^"]+)"><h3>[^<]*</h3><svg[^>]*data-log="(\w+)"', page))
    # Three decades of loss: log scale; a flat lr and a p from 2 to 0.5: linear.
    assert charts == {
        "train/loss": "true",
        "train/lr": "false",
        "train/p": "false",
        "eval/mmcs": "false",  # one chart per family, a line per layer
        "final/mmcs": "false",
    }
    lr_chart = page[page.index('data-group="train/lr"') :].split("</div>", 1)[0]
    assert lr_chart.count('class="series"') == 2  # both runs overlaid
    assert "lr · a" in lr_chart and "lr · b" in lr_chart
