"""The component browser: one self-contained static HTML page per run, built from its analysis.

The page (`analysis/browser.html`) embeds the analysis as JSON and renders it with plain
JavaScript: no server, no network, it opens from the file system. The table shows one page of
subcomponents at a time and a subcomponent's contexts are built only when it is opened, so a run
with thousands of subcomponents opens quickly.
"""

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from spd.analysis.store import ANALYSIS_DIR, Analysis, LayerAnalysis, load_analysis
from spd.persistence.atomic_files import atomic_write_text

BROWSER_FILE = "browser.html"
N_ONE_HOT_SHOWN = 10


def _round(values: np.ndarray, digits: int = 4) -> list[Any]:
    return np.round(values.astype(np.float64), digits).tolist()


def _contexts(layer: LayerAnalysis, kind: str, c: int) -> list[list[Any]]:
    """[CI, window tokens, window CIs] of the valid kept positions, best first."""
    valid = layer[f"{kind}_valid"][c]
    order = np.argsort(-layer[f"{kind}_ci"][c], kind="stable")
    return [
        [
            round(float(layer[f"{kind}_ci"][c, j]), 3),
            layer[f"{kind}_tokens"][c, j].tolist(),
            _round(layer[f"{kind}_window_ci"][c, j], 3),
        ]
        for j in order
        if valid[j]
    ]


def _token_scores(layer: LayerAnalysis, side: str) -> list[list[list[Any]]] | None:
    key = f"{side}_token_ids"
    if key not in layer.arrays:
        return None
    ids, scores = layer[key], layer[f"{side}_token_scores"]
    return [
        [[int(t), round(float(s), 3)] for t, s in zip(ids[c], scores[c], strict=True)]
        for c in range(layer.C)
    ]


def _layer_data(layer: LayerAnalysis) -> dict[str, Any]:
    fires = layer["token_fires"]
    data: dict[str, Any] = {
        "name": layer.name,
        "C": layer.C,
        "fires": layer["fire_count"].tolist(),
        "density": _round(layer["density"], 7),
        "meanCi": _round(layer["mean_ci"], 5),
        "hist": layer["histogram"].tolist(),
        "tokens": [
            [
                [int(t), int(n), round(float(p), 3)]
                for t, n, p in zip(
                    layer["token_ids"][c], fires[c], layer["token_precision"][c], strict=True
                )
                if n > 0
            ]
            for c in range(layer.C)
        ],
        "cofire": [
            [
                [int(li), int(j), round(float(f), 4)]
                for li, j, n, f in zip(
                    layer["cofire_layer"][c],
                    layer["cofire_index"][c],
                    layer["cofire_count"][c],
                    layer["cofire_fraction"][c],
                    strict=True,
                )
                if n > 0
            ]
            for c in range(layer.C)
        ],
        "top": [_contexts(layer, "top", c) for c in range(layer.C)],
        "random": [_contexts(layer, "random", c) for c in range(layer.C)],
        "read": _token_scores(layer, "read"),
        "write": _token_scores(layer, "write"),
    }
    if "onehot_ci" in layer.arrays:
        onehot = layer["onehot_ci"]  # (n_features, C)
        shown = min(N_ONE_HOT_SHOWN, onehot.shape[0])
        order = np.argsort(-onehot, axis=0, kind="stable")[:shown]
        data["onehot"] = [
            [[int(f), round(float(onehot[f, c]), 3)] for f in order[:, c]] for c in range(layer.C)
        ]
        data["readVec"] = [_round(v, 3) for v in layer["read_vector"]]
        data["writeVec"] = [_round(v, 3) for v in layer["write_vector"]]
    return data


def browser_html(analysis: Analysis, title: str) -> str:
    """The page for `analysis`, data embedded."""
    data = {
        "meta": {**analysis.meta, "run_name": title, "token_count": None},
        "vocab": analysis.vocab,
        "layers": [_layer_data(layer) for layer in analysis.layers],
    }
    # `</` inside the JSON would end the <script> element early.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    template = resources.files("spd.analysis").joinpath("browser_template.html").read_text()
    return template.replace("__TITLE__", _html_escape(title)).replace("__DATA__", payload)


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_browser(run_dir: Path) -> Path:
    """Write `<run dir>/analysis/browser.html` from the run's analysis; returns its path."""
    analysis = load_analysis(run_dir)
    path = run_dir / ANALYSIS_DIR / BROWSER_FILE
    atomic_write_text(path, browser_html(analysis, run_dir.resolve().name))
    return path
