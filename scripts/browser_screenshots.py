"""Screenshots of a run's component browser (the ones in docs/figures/), taken in headless Chromium.

    python scripts/browser_screenshots.py RUN_DIR OUT_DIR [--search TOKEN] [--layer 0]

Writes OUT_DIR/browser_table.png (the table, densest first), browser_subcomponent.png (the
page of `--subcomponent`, by default the densest whose top token has precision 1) and
browser_search.png (a token search). RUN_DIR must have been analysed (`spd-analyze RUN_DIR --browse`).
"""

import argparse
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

from spd.analysis.browser import write_browser
from spd.analysis.store import load_analysis

CHROMIUM = "/usr/bin/chromium"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--search", default="dog")
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--subcomponent", type=int, default=None, help="the one to show")
    args = parser.parse_args()
    html = write_browser(args.run_dir)
    layer = load_analysis(args.run_dir).layers[args.layer]
    order = np.argsort(-layer["density"], kind="stable")
    exact = [c for c in order if layer["token_precision"][c, 0] == 1.0 and layer["fire_count"][c]]
    shown = args.subcomponent if args.subcomponent is not None else int((exact or order)[0])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(html.as_uri())
        page.select_option("#layer", str(args.layer))
        page.screenshot(path=str(args.out_dir / "browser_table.png"))
        page.set_viewport_size({"width": 1200, "height": 1400})  # down to the first contexts
        page.goto(f"{html.as_uri()}#L{args.layer}/c{shown}")
        page.locator("#detail h2").wait_for()
        page.screenshot(path=str(args.out_dir / "browser_subcomponent.png"))
        page.set_viewport_size({"width": 1200, "height": 800})
        page.goto(html.as_uri())
        page.fill("#search", args.search)
        page.locator("#results-body tr").first.wait_for()
        page.screenshot(path=str(args.out_dir / "browser_search.png"))
        browser.close()
    print(f"subcomponent {shown} of {layer.name}; screenshots in {args.out_dir}")


if __name__ == "__main__":
    main()
