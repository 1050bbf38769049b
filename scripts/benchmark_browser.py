"""How fast the component browser opens for a run with many subcomponents, in headless Chromium.

    python scripts/benchmark_browser.py [--layers 4] [--C 1000] [--vocab 4096] [--out DIR]

Writes a synthetic analysis (random arrays of the stored shapes, default 4 layers × 1000 = 4000
subcomponents, 20 top and 20 random contexts of 11 tokens each) through the real store and page
builder, opens the page from the file system with Debian's Chromium and reports: the page's size,
the time until the table is drawn, the time to open one subcomponent, re-sort the table and search
for a token. The numbers are about rendering; the statistics themselves are meaningless.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

from spd.analysis.browser import write_browser
from spd.analysis.store import ANALYSIS_DIR, write_analysis

CHROMIUM = "/usr/bin/chromium"


def synthetic_layer(
    rng: np.random.Generator, C: int, vocab: int, k: int, window: int
) -> dict[str, np.ndarray]:
    fire_count = rng.integers(0, 5000, C)
    arrays: dict[str, np.ndarray] = {
        "fire_count": fire_count,
        "density": fire_count / 1e6,
        "mean_ci": rng.random(C) * 0.01,
        "histogram": rng.integers(0, 1000, (C, 20)),
        "token_ids": rng.integers(0, vocab, (C, 20)),
        "token_fires": np.sort(rng.integers(1, 500, (C, 20)))[:, ::-1],
        "token_precision": rng.random((C, 20)),
        "cofire_layer": rng.integers(0, 4, (C, 10)),
        "cofire_index": rng.integers(0, C, (C, 10)),
        "cofire_count": rng.integers(1, 100, (C, 10)),
        "cofire_fraction": rng.random((C, 10)),
        "read_token_ids": rng.integers(0, vocab, (C, 20)),
        "read_token_scores": rng.random((C, 20)),
    }
    for kind in ("top", "random"):
        arrays[f"{kind}_valid"] = np.ones((C, k), dtype=bool)
        arrays[f"{kind}_ci"] = rng.random((C, k))
        arrays[f"{kind}_tokens"] = rng.integers(0, vocab, (C, k, window))
        arrays[f"{kind}_window_ci"] = rng.random((C, k, window)) ** 4
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--C", type=int, default=1000)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=None, help="keep the page here")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    run_dir = args.out or Path(tempfile.mkdtemp())
    settings = {"threshold": 0.1, "top_k": 20, "n_random": 20, "context_before": 8,
                "context_after": 2, "n_bins": 20}  # fmt: skip
    meta = {"kind": "lm", "dataset": "synthetic", "split": "eval", "n_tokens": 1_000_000,
            "settings": settings, "hist_edges": np.linspace(0, 1, 21).tolist()}  # fmt: skip
    vocab = [f"tok{i}" for i in range(args.vocab)]
    layers = {
        f"layer.{i}": synthetic_layer(rng, args.C, args.vocab, 20, 11) for i in range(args.layers)
    }
    write_analysis(run_dir / ANALYSIS_DIR, meta, vocab, layers)
    start = time.perf_counter()
    html = write_browser(run_dir)
    build_s = time.perf_counter() - start
    figures: dict[str, float] = {
        "subcomponents": args.layers * args.C,
        "page_mb": html.stat().st_size / 2**20,
        "build_s": build_s,
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
        start = time.perf_counter()
        page.goto(html.as_uri())
        page.locator("#rows tr").first.wait_for()
        figures["open_to_table_s"] = time.perf_counter() - start
        start = time.perf_counter()
        page.click("#rows a >> nth=0")
        page.locator("#top-contexts .tok").first.wait_for()
        figures["open_subcomponent_s"] = time.perf_counter() - start
        page.go_back()
        start = time.perf_counter()
        page.click("th[data-key=meanCi]")
        page.locator("th.sorted-desc[data-key=meanCi]").wait_for()
        figures["sort_s"] = time.perf_counter() - start
        start = time.perf_counter()
        page.fill("#search", "tok17")
        page.locator("#results-body tr").first.wait_for()
        figures["search_s"] = time.perf_counter() - start - 0.15  # minus the input debounce
        browser.close()
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}, indent=1))


if __name__ == "__main__":
    main()
