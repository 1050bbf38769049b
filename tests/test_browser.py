"""The component browser page in a real headless Chromium (Debian's, driven by Playwright).

Skipped when no Chromium binary is installed here (`apt-get install chromium`; CI installs it in
.ci/run). Set SPD_SCREENSHOT_DIR to keep the screenshots (docs/figures/ holds those in the docs).
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from spd.analysis.analyze import PassOptions, analyze_run
from spd.analysis.browser import write_browser
from tests.analysis_runs import (
    OTHER,
    PLANTED,
    PLANTED_TEXT,
    TWIN,
    PlantedRun,
    build_tiny_example,
    planted_run,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM = next(
    (path for path in CHROMIUM_CANDIDATES if Path(path).is_file()), None
) or shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary (/usr/bin/chromium): install it with `apt-get install -y chromium`",
)
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="pip install playwright (dev extras)"
)


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[PlantedRun, Path]:
    root = tmp_path_factory.mktemp("browser")
    run = planted_run(
        build_tiny_example(root), root / "run", patterns=["model.layers.0.mlp.down_proj"]
    )
    options = PassOptions(n_tokens=3000, batch_size=4, show_progress=False, top_k=8, n_random=8)
    analyze_run(run.run_dir, options)
    return run, write_browser(run.run_dir)


@pytest.fixture
def page(browser_page: tuple[PlantedRun, Path]) -> Iterator["Page"]:
    _, html = browser_page
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(html.as_uri())  # from the file system: no server
        yield page
        browser.close()
        assert not errors, errors


def _screenshot(page: "Page", name: str) -> None:
    directory = os.environ.get("SPD_SCREENSHOT_DIR")
    if directory:
        page.screenshot(path=str(Path(directory) / name), full_page=False)


def _first_column(page: "Page") -> list[int]:
    return [int(text) for text in page.locator("#rows tr td:first-child").all_inner_texts()]


def test_table_renders_and_sorts(page: "Page") -> None:
    # Dead subcomponents are hidden by default: the embedding layer shows its three planted ones,
    # the most frequent first (PLANTED and TWIN fire on the same token).
    assert sorted(_first_column(page)) == sorted([PLANTED, TWIN, OTHER])
    densities = [float(t) for t in page.locator("#rows tr td:nth-child(2)").all_inner_texts()]
    assert densities == sorted(densities, reverse=True)
    _screenshot(page, "browser_table.png")
    page.click("th[data-key=index]")
    assert _first_column(page) == sorted([PLANTED, TWIN, OTHER])
    page.click("th[data-key=index]")
    assert _first_column(page) == sorted([PLANTED, TWIN, OTHER], reverse=True)
    page.uncheck("#hide-dead")
    assert _first_column(page) == list(range(5, -1, -1))
    page.select_option("#layer", "1")
    assert page.locator("#rows tr").count() > 0
    assert "model.layers.0.mlp.down_proj" in page.locator("#layer").inner_text()


def test_subcomponent_page_highlights_its_contexts(
    page: "Page", browser_page: tuple[PlantedRun, Path]
) -> None:
    page.click(f"#rows a[href='#L0/c{PLANTED}']")
    detail = page.locator("#detail")
    assert detail.is_visible()
    # expect() retries until the page has rendered (a plain assert can read the old heading).
    playwright_api.expect(detail.locator("h2")).to_contain_text(f"subcomponent {PLANTED}")
    fired = page.locator("#top-contexts .tok.fire")
    assert fired.count() == 8
    assert set(fired.all_inner_texts()) == {PLANTED_TEXT}
    # CI 1 on the firing token, CI 0 on the others: the strongest and the faintest colour.
    assert "0.900" in (fired.first.get_attribute("style") or "")
    others = page.locator("#top-contexts .tok:not(.fire)").evaluate_all(
        "els => els.map(e => [e.textContent, e.getAttribute('style')])"
    )
    assert others
    assert all("0.080" in style for text, style in others if text != PLANTED_TEXT)
    assert page.locator("#random-contexts .tok.fire").count() == 8
    _screenshot(page, "browser_subcomponent.png")
    # Its twin fires with it on every token: a link to it, which opens the twin's page.
    page.click(f"#detail a[href='#L0/c{TWIN}']")
    playwright_api.expect(page.locator("#detail h2")).to_contain_text(f"subcomponent {TWIN}")
    page.go_back()
    playwright_api.expect(page.locator("#detail h2")).to_contain_text(f"subcomponent {PLANTED}")


def test_search_finds_the_subcomponents_of_a_token(page: "Page") -> None:
    page.fill("#search", PLANTED_TEXT)
    results = page.locator("#results-body tr")
    results.first.wait_for()
    hrefs = page.locator("#results-body a").evaluate_all(
        "els => els.map(e => e.getAttribute('href'))"
    )
    # (The untrained CI functions of the second layer may fire on it too.)
    assert {h for h in hrefs if h.startswith("#L0/")} == {f"#L0/c{PLANTED}", f"#L0/c{TWIN}"}
    _screenshot(page, "browser_search.png")
    page.fill("#search", "zzzz-no-such-token")
    page.locator("#results-body td.note").wait_for()
