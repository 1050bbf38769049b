"""The component browser's data, one request at a time: a page of a layer's table, one
subcomponent's page and a token search, read from the stored analysis (`spd.analysis.store`).

Nothing is built for the whole run up front, so a run of tens of thousands of subcomponents
answers each request in the time of the rows it returns.
"""

from typing import Any

import numpy as np

from spd.analysis.accumulators import PAD_TOKEN
from spd.analysis.store import Analysis, LayerAnalysis
from spd.errors import SPDUserError

SORT_KEYS = {"density": "density", "mean_ci": "mean_ci", "index": None}
N_TABLE_TOKENS = 3
N_ONE_HOT = 10


def layer_of(analysis: Analysis, layer: int) -> LayerAnalysis:
    """Layer number `layer` of the analysis, or a one-line error naming the valid range."""
    if not 0 <= layer < len(analysis.layers):
        raise SPDUserError(f"no layer {layer}; this run has layers 0 … {len(analysis.layers) - 1}")
    return analysis.layers[layer]


def table_page(
    analysis: Analysis,
    layer: int,
    offset: int,
    limit: int,
    sort: str = "density",
    descending: bool = True,
    hide_dead: bool = True,
) -> dict[str, Any]:
    """Rows `offset … offset + limit` of a layer's table, sorted, and the number of rows in all."""
    if sort not in SORT_KEYS:
        raise SPDUserError(f"unknown sort key '{sort}'; choose one of {', '.join(SORT_KEYS)}")
    data = layer_of(analysis, layer)
    order = np.arange(data.C)
    if hide_dead:
        order = order[data["fire_count"] > 0]
    key = SORT_KEYS[sort]
    if key is not None:
        order = order[np.argsort(data[key][order], kind="stable")]
    if descending:
        order = order[::-1]
    rows = [
        {
            "index": int(c),
            "density": float(data["density"][c]),
            "mean_ci": float(data["mean_ci"][c]),
            "tokens": [t for t, _, _ in analysis.top_tokens(data.name, int(c))[:N_TABLE_TOKENS]],
        }
        for c in order[offset : offset + limit]
    ]
    return {"layer": data.name, "C": data.C, "total": len(order), "rows": rows}


def _contexts(analysis: Analysis, data: LayerAnalysis, kind: str, c: int) -> list[dict[str, Any]]:
    valid = data[f"{kind}_valid"][c]
    order = np.argsort(-data[f"{kind}_ci"][c], kind="stable")
    return [
        {
            "ci": float(data[f"{kind}_ci"][c, j]),
            "tokens": [
                analysis.vocab[t] if t != PAD_TOKEN else None
                for t in data[f"{kind}_tokens"][c, j].tolist()
            ],
            "window_ci": data[f"{kind}_window_ci"][c, j].astype(float).round(3).tolist(),
        }
        for j in order
        if valid[j]
    ]


def subcomponent(analysis: Analysis, layer: int, c: int) -> dict[str, Any]:
    """Everything the subcomponent page shows of subcomponent `c` of layer number `layer`."""
    data = layer_of(analysis, layer)
    if not 0 <= c < data.C:
        raise SPDUserError(f"no subcomponent {c} in {data.name}; it has 0 … {data.C - 1}")
    partners = [
        {
            "layer": int(li),
            "layer_name": analysis.layers[int(li)].name,
            "index": int(j),
            "fraction": float(f),
        }
        for li, j, n, f in zip(
            data["cofire_layer"][c],
            data["cofire_index"][c],
            data["cofire_count"][c],
            data["cofire_fraction"][c],
            strict=True,
        )
        if n > 0
    ]
    page: dict[str, Any] = {
        "layer": layer,
        "layer_name": data.name,
        "index": c,
        "fires": int(data["fire_count"][c]),
        "density": float(data["density"][c]),
        "mean_ci": float(data["mean_ci"][c]),
        "histogram": data["histogram"][c].tolist(),
        "tokens": [
            {"token": t, "fires": n, "precision": p}
            for t, n, p in analysis.top_tokens(data.name, c)
        ],
        "partners": partners,
        "top": _contexts(analysis, data, "top", c),
        "random": _contexts(analysis, data, "random", c),
    }
    if "onehot_ci" in data.arrays:
        onehot = data["onehot_ci"][:, c]
        shown = np.argsort(-onehot, kind="stable")[:N_ONE_HOT]
        page["onehot"] = [{"feature": int(f), "ci": float(onehot[f])} for f in shown]
    return page


def search(analysis: Analysis, text: str, limit: int = 200) -> list[dict[str, Any]]:
    """Subcomponents that fire on a token reading exactly `text`, most firings first."""
    ids = {i for i, token in enumerate(analysis.vocab) if token == text}
    if not ids:
        ids = {i for i, token in enumerate(analysis.vocab) if token.strip() == text.strip()}
    found = []
    for layer, data in enumerate(analysis.layers):
        hits = np.isin(data["token_ids"], list(ids)) & (data["token_fires"] > 0)
        for c, j in zip(*hits.nonzero(), strict=True):
            found.append(
                {
                    "layer": layer,
                    "layer_name": data.name,
                    "index": int(c),
                    "token": analysis.vocab[int(data["token_ids"][c, j])],
                    "fires": int(data["token_fires"][c, j]),
                    "precision": float(data["token_precision"][c, j]),
                }
            )
    found.sort(key=lambda hit: -hit["fires"])
    return found[:limit]
