"""The stored result of an analysis pass: `analysis/analysis.json` plus `analysis/analysis.npz`.

The JSON holds what describes the pass (run, counts, settings, vocabulary, layer names and what each
layer has); the npz holds the arrays, named `<layer index>/<array>`. The layout is documented in
docs/analysis.md; `load_analysis(run_dir)` reads both back.
"""

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spd.analysis.accumulators import AnalysisAccumulator
from spd.errors import SPDUserError, one_line
from spd.persistence.atomic_files import atomic_write_text

ANALYSIS_DIR = "analysis"
JSON_FILE = "analysis.json"
NPZ_FILE = "analysis.npz"
FORMAT_VERSION = 1


@dataclass
class LayerAnalysis:
    """One decomposed layer's arrays (see docs/analysis.md for each name and shape)."""

    name: str
    C: int
    arrays: dict[str, np.ndarray]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


@dataclass
class Analysis:
    """A loaded analysis: its description (`meta`), the vocabulary and every layer."""

    meta: dict[str, Any]
    vocab: list[str]
    layers: list[LayerAnalysis] = field(default_factory=list)

    def layer(self, name: str) -> LayerAnalysis:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer '{name}'; layers: {', '.join(lay.name for lay in self.layers)}")

    def top_tokens(self, layer: str, c: int) -> list[tuple[str, int, float]]:
        """(token, fire count, precision) of the tokens subcomponent `c` fires on most."""
        arrays = self.layer(layer)
        rows = zip(
            arrays["token_ids"][c],
            arrays["token_fires"][c],
            arrays["token_precision"][c],
            strict=True,
        )
        return [(self.vocab[int(t)], int(n), float(p)) for t, n, p in rows if n > 0]


def _top_rows(values: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    m = min(m, values.shape[1])
    top = values.topk(m, dim=1)
    return top.values, top.indices


def summarize(
    acc: AnalysisAccumulator, n_top_tokens: int = 50, n_cofire: int = 10
) -> dict[str, dict[str, np.ndarray]]:
    """Every layer's stored arrays, computed from the accumulated statistics."""
    n = max(acc.n_tokens, 1)
    token_count = acc.token_count.cpu()
    partner_index, partner_count = acc.cofire.index.cpu(), acc.cofire.count.cpu()
    n_cofire = min(n_cofire, partner_index.shape[1])  # the slots are kept best first
    owner = torch.cat(
        [torch.full((layer.fire_count.numel(),), i) for i, layer in enumerate(acc.layers.values())]
    )
    local = torch.cat([torch.arange(layer.fire_count.numel()) for layer in acc.layers.values()])
    out: dict[str, dict[str, np.ndarray]] = {}
    start = 0
    for name, layer in acc.layers.items():
        fire_count = layer.fire_count.cpu()
        C = fire_count.numel()
        token_fires, token_ids = _top_rows(layer.token_fires.cpu(), n_top_tokens)
        partners = partner_index[start : start + C, :n_cofire].clamp(min=0)  # empty: count 0
        partner_counts = partner_count[start : start + C, :n_cofire]
        start += C
        arrays: dict[str, torch.Tensor] = {
            "fire_count": fire_count,
            "density": fire_count.double() / n,
            "mean_ci": layer.ci_sum.cpu() / n,
            "histogram": layer.histogram.cpu(),
            "token_ids": token_ids,
            "token_fires": token_fires,
            "token_precision": token_fires.double() / token_count[token_ids].clamp(min=1),
            "cofire_layer": owner[partners],
            "cofire_index": local[partners],
            "cofire_count": partner_counts.clamp(min=0),
            "cofire_fraction": partner_counts.clamp(min=0).double()
            / fire_count.clamp(min=1)[:, None],
        }
        for kind, slots in (("top", layer.top), ("random", layer.random)):
            arrays[f"{kind}_valid"] = torch.isfinite(slots.score.cpu())
            arrays[f"{kind}_ci"] = slots.ci.cpu()
            arrays[f"{kind}_tokens"] = slots.tokens.cpu()
            arrays[f"{kind}_window_ci"] = slots.window_ci.cpu()
        out[name] = {key: value.numpy() for key, value in arrays.items()}
    return out


def write_analysis(
    directory: Path,
    meta: dict[str, Any],
    vocab: list[str],
    layers: dict[str, dict[str, np.ndarray]],
) -> Path:
    """Write analysis.json and analysis.npz into `directory` (each atomically); returns the JSON path."""
    directory.mkdir(parents=True, exist_ok=True)
    flat = {
        f"{index}/{key}": value
        for index, arrays in enumerate(layers.values())
        for key, value in arrays.items()
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **flat)  # pyright: ignore[reportArgumentType]
    tmp = directory / f".{NPZ_FILE}.tmp"
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(directory / NPZ_FILE)
    description = {
        "format_version": FORMAT_VERSION,
        **meta,
        "layers": [
            {"name": name, "C": int(arrays["fire_count"].shape[0]), "arrays": sorted(arrays)}
            for name, arrays in layers.items()
        ],
        "vocab": vocab,
    }
    path = directory / JSON_FILE
    atomic_write_text(path, json.dumps(description) + "\n")
    return path


def load_analysis(path: str | Path) -> Analysis:
    """Read an analysis back from a run directory, its `analysis/` folder, or analysis.json."""
    path = Path(path)
    if path.is_dir() and (path / ANALYSIS_DIR / JSON_FILE).is_file():
        path = path / ANALYSIS_DIR
    if path.is_dir():
        path = path / JSON_FILE
    if not path.is_file():
        raise SPDUserError(f"no analysis at {path}; run `spd-analyze RUN_DIR` first")
    try:
        description = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        description = None
    if not isinstance(description, dict):
        raise SPDUserError(
            f"{path} is not an analysis written by spd-analyze; give a run directory analysed by it"
        )
    if description.get("format_version") != FORMAT_VERSION:
        raise SPDUserError(
            f"{path} has format version {description.get('format_version')}, this spd reads "
            f"{FORMAT_VERSION}; rerun spd-analyze"
        )
    vocab = description.pop("vocab")
    layer_info = description.pop("layers")
    arrays = path.with_name(NPZ_FILE)
    try:
        # allow_pickle=False: an object array planted in the file is refused, never unpickled.
        with np.load(arrays, allow_pickle=False) as npz:
            layers = [
                LayerAnalysis(
                    info["name"], info["C"], {key: npz[f"{i}/{key}"] for key in info["arrays"]}
                )
                for i, info in enumerate(layer_info)
            ]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        raise SPDUserError(
            one_line(f"cannot read {arrays}: {type(err).__name__}: {err}; rerun spd-analyze")
        ) from None
    return Analysis(description, vocab, layers)
