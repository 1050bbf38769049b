"""The reports' curves and the `spd-app` views in a real headless Chromium (Debian's, through
Playwright), against real run directories and a real `spd-app` process.

Skipped when no Chromium binary is installed (`apt-get install -y chromium`). Set
SPD_SCREENSHOT_DIR to keep the screenshots (docs/figures/ holds those in the docs).
"""

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from spd.analysis.analyze import PassOptions, analyze_run
from spd.models.component_model import ComponentModel
from spd.persistence.checkpoints import latest_checkpoint
from tests.analysis_runs import (
    PLANTED,
    PLANTED_TEXT,
    TWIN,
    PlantedRun,
    build_tiny_example,
    planted_run,
)
from tests.paths import REPO_ROOT
from tests.test_browser import CHROMIUM
from tests.tiny_runs import run_tiny_tms

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary (/usr/bin/chromium): install it with `apt-get install -y chromium`",
)
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="pip install playwright (dev extras)"
)


@pytest.fixture(scope="module")
def tms_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("app_runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPD_OUT_DIR", str(root))
        patch.delenv("WANDB_MODE", raising=False)
        return run_tiny_tms(run_name="tms").path


@pytest.fixture
def page() -> Iterator["Page"]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        # Wide enough for the planted run's whole graph: a screenshot then shows every label.
        page = browser.new_page(viewport={"width": 1700, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        yield page
        browser.close()
        assert not errors, errors


def _screenshot(page: "Page", name: str) -> None:
    directory = os.environ.get("SPD_SCREENSHOT_DIR")
    if directory:
        page.screenshot(path=str(Path(directory) / name), full_page=False)


def test_report_curves_render(page: "Page", tms_run: Path) -> None:
    page.goto((tms_run / "report.html").as_uri())
    loss = page.locator('.chart[data-group="train/loss"]')
    # One drawn line per loss term and the total, each with an extent on the screen.
    lines = loss.locator("polyline.series")
    assert lines.count() >= 3
    for i in range(lines.count()):
        box = lines.nth(i).bounding_box()
        assert box is not None and box["width"] > 100
    assert "total" in loss.locator("ul").inner_text()
    assert page.locator('.chart[data-group="train/n_alive"] polyline.series').count() == 2
    assert page.locator(".headline [data-key='final/mmcs/linear1']").is_visible()
    page.locator("#curves").scroll_into_view_if_needed()
    _screenshot(page, "report_curves.png")


@dataclass(frozen=True)
class App:
    url: str
    planted: PlantedRun
    bare: Path


PROMPT = "Once upon a time, the little dog ran to the park. The end"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    root = tmp_path_factory.mktemp("app")
    example = build_tiny_example(root)
    planted = planted_run(example, root / "planted", patterns=["model.layers.0.mlp.down_proj"])
    analyze_run(
        planted.run_dir,
        PassOptions(n_tokens=3000, batch_size=4, show_progress=False, top_k=8, n_random=8),
    )
    bare = planted_run(example, root / "bare").run_dir  # no analysis
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "spd.app.cli", str(planted.run_dir), str(bare), "--port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2)]
        assert "run `spd-analyze" in lines[0], lines
        url = re.search(r"http://127\.0\.0\.1:\d+/", lines[1])
        assert url is not None, lines
        yield App(url[0], planted, bare)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0


def test_app_lists_runs(page: "Page", app: App) -> None:
    page.goto(app.url)
    rows = page.locator("#runs tbody tr")
    playwright_api.expect(rows).to_have_count(2)
    assert "planted" in rows.nth(0).inner_text() and "2 layer(s)" in rows.nth(0).inner_text()
    assert "run `spd-analyze" in rows.nth(1).inner_text()  # served, with the hint
    _screenshot(page, "app_runs.png")
    page.goto(app.url + "#/run/1")
    playwright_api.expect(page.locator(".note")).to_contain_text("spd-analyze")
    page.goto(app.url + "#/run/0")
    playwright_api.expect(page.locator("#rows tr")).to_have_count(3)  # the planted ones
    page.click(f"#rows a[href='#/run/0/L0/c{PLANTED}']")
    playwright_api.expect(page.locator("#sub-title")).to_contain_text(f"subcomponent {PLANTED}")
    assert set(page.locator("#top-contexts .tok").all_inner_texts()) >= {PLANTED_TEXT}
    _screenshot(page, "app_subcomponent.png")


def _graph(page: "Page", app: App, prompt: str) -> None:
    page.goto(app.url + "#/run/0/graph")
    page.fill("#prompt", prompt)
    page.click("#run-graph")


def test_graph_and_ablating_the_strongest_node_lowers_the_top_logit(page: "Page", app: App) -> None:
    _graph(page, app, PROMPT)
    page.locator("#graph circle.node").first.wait_for()
    assert page.locator("#graph circle.node").count() > 3
    assert page.locator("#graph line.edge").count() > 0
    page.locator("#graph circle.node").last.hover()
    assert "logit" in page.locator("#tooltip").inner_text()
    _screenshot(page, "app_graph.png")

    graph = page.evaluate("graphState[0].graph")
    n_layers = len(graph["layers"])
    top = next(i for i, n in enumerate(graph["nodes"]) if n["layer"] == n_layers)
    to_top = {s: w for s, t, w in graph["edges"] if t == top}
    strongest = max(to_top, key=lambda s: to_top[s])
    assert to_top[strongest] > 0
    page.check(f"input.pick[data-node='{strongest}']")
    page.click("#ablate")
    row = page.locator("#intervention-table tbody tr").last
    row.wait_for()
    _screenshot(page, "app_intervention.png")

    # The same masks by hand: CI of every layer, the strongest node's set to 0.
    node = graph["nodes"][strongest]
    model = ComponentModel.from_pretrained(latest_checkpoint(app.planted.run_dir)).eval()
    tokens = app.planted.tokenizer(PROMPT, add_special_tokens=False, return_tensors="pt")[
        "input_ids"
    ]
    with torch.no_grad():
        _, pre_acts = model.forward_with_pre_acts(tokens)
        ci, _ = model.causal_importances(pre_acts, app.planted.config.sigmoid_type)
        before = model.forward_with_components(tokens, ci)[0, -1].softmax(-1)
        ci[graph["layers"][node["layer"]]][0, node["position"], node["index"]] = 0.0
        after = model.forward_with_components(tokens, ci)[0, -1].softmax(-1)
    token = int(before.argmax())
    assert float(after[token]) < float(before[token])
    shown = dict(_probabilities(row.locator("td.after").inner_text()))
    word = app.planted.tokenizer.decode([token])
    if word in shown:  # still among the top 5 after the ablation
        assert shown[word] == pytest.approx(float(after[token]), abs=6e-4)
    before_shown = _probabilities(row.locator("td.before").inner_text())
    assert before_shown[0][1] == pytest.approx(float(before[token]), abs=6e-4)


def _probabilities(text: str) -> list[tuple[str, float]]:
    """(token, probability) pairs of a cell reading 'tok 0.123 tok 0.045 …'."""
    return [(m[1], float(m[2])) for m in re.finditer(r"(.*?) (\d\.\d+(?:e-\d+)?)(?:\s|$)", text)]


def test_bad_prompts_answer_in_the_page(page: "Page", app: App) -> None:
    _graph(page, app, "   ")
    playwright_api.expect(page.locator("#graph-error .error")).to_contain_text("prompt is empty")
    _graph(page, app, " the" * 200)
    playwright_api.expect(page.locator("#graph-error .error")).to_contain_text("at most 32")


def test_cluster_page_opens(page: "Page", app: App) -> None:
    page.goto(app.url + "#/run/0/clusters")
    page.click("#clusters a[href='#/run/0/cluster/0']")
    members = page.locator("#members li")
    playwright_api.expect(members).to_have_count(2)  # PLANTED and TWIN fire on the same token
    assert set(members.all_inner_texts()) == {
        f"model.embed_tokens #{PLANTED}",
        f"model.embed_tokens #{TWIN}",
    }
    assert page.locator("#cluster-contexts .tok").count() > 0
    _screenshot(page, "app_cluster.png")
