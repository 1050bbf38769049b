"""A run directory as the app serves it: config, analysis (if any) and, on first use, the model.

`load_run` reads only the config and the analysis, so the app starts at once; the component
model (and an LM's tokenizer) is built on the first request that needs it. `encode` turns a
prompt (an LM's text, or a toy's feature list such as `f3 f7=0.5`) into the model's input.
"""

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from spd.analysis.store import Analysis, load_analysis
from spd.app.attribution import use_dense_paths
from spd.config.loading import load_config
from spd.config.schema import Config
from spd.data.lm_data import load_tokenizer
from spd.errors import SPDUserError
from spd.experiments.tasks import TokenSource, get_task
from spd.models.component_model import ComponentModel
from spd.persistence.checkpoints import latest_checkpoint
from spd.persistence.run_dir import CONFIG_FILE

_FEATURE = re.compile(r"^f?(\d+)(?:=(-?\d+(?:\.\d*)?(?:e-?\d+)?))?$")


@dataclass
class LoadedRun:
    """One served run. `analysis_message` says why there is no analysis, when there is none."""

    path: Path
    config: Config
    analysis: Analysis | None
    analysis_message: str | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _model: ComponentModel | None = None
    _tokenizer: object | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def token_source(self) -> TokenSource | None:
        """How the run's task reads token sequences; None for a task whose inputs are not text."""
        source = get_task(self.config.task_config.task_name).analysis_source
        return source if isinstance(source, TokenSource) else None

    @property
    def kind(self) -> str:
        return "tokens" if self.token_source is not None else "toy"

    @property
    def model(self) -> ComponentModel:
        """The component model of the latest checkpoint, in eval mode, loaded once."""
        if self._model is None:
            model = ComponentModel.from_pretrained(latest_checkpoint(self.path))
            if self.token_source is not None:
                self.token_source.prepare_target(model.target)
            use_dense_paths(model)
            self._model = model.eval()
        return self._model

    def tokenizer(self) -> object:
        """An LM run's tokenizer, loaded once."""
        source = self.token_source
        assert source is not None
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(source.tokenizer_name(self.config))
        return self._tokenizer

    def context_length(self) -> int:
        """The longest prompt an LM run takes: its training length, or the model's, if shorter."""
        source = self.token_source
        assert source is not None
        seq_len = source.max_seq_len(self.config)
        model_config = getattr(self.model.target, "config", None)
        limit = getattr(model_config, "max_position_embeddings", None) or getattr(
            model_config, "n_positions", None
        )
        return min(seq_len, limit) if isinstance(limit, int) else seq_len

    def n_inputs(self) -> int:
        """A toy model's input width (its number of features)."""
        n = getattr(getattr(self.model.target, "config", None), "n_features", None)
        return n if isinstance(n, int) else next(iter(self.model.components.values())).d_in

    def encode(self, prompt: str) -> Tensor:
        """The model input for `prompt`: token ids (1, seq) for an LM, a vector (1, n) for a toy."""
        if not prompt.strip():
            raise SPDUserError(
                "the prompt is empty: type some text (toys: features like 'f3 f7=0.5')"
            )
        if self.kind == "tokens":
            ids = self.tokenizer()(prompt, add_special_tokens=False)["input_ids"]  # pyright: ignore[reportCallIssue]
            limit = self.context_length()
            if len(ids) > limit:
                raise SPDUserError(
                    f"the prompt is {len(ids)} tokens long; this model takes at most {limit}"
                )
            return torch.tensor([ids], dtype=torch.long)
        return self._toy_input(prompt)

    def _toy_input(self, prompt: str) -> Tensor:
        n = self.n_inputs()
        x = torch.zeros(1, n)
        for part in prompt.replace(",", " ").split():
            match = _FEATURE.match(part)
            if match is None or int(match[1]) >= n:
                raise SPDUserError(
                    f"'{part}' is not a feature of this model: write f0 … f{n - 1}, "
                    "optionally with a value (f3=0.5)"
                )
            x[0, int(match[1])] = float(match[2]) if match[2] else 1.0
        return x

    def token_strings(self, ids: list[int]) -> list[str]:
        """How each token id reads (an LM's vocabulary; a toy's output index as `out<i>`)."""
        if self.kind != "tokens":
            return [f"out{i}" for i in ids]
        return token_labels(self.tokenizer(), ids)


def token_labels(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token id as text; a token that is part of a multi-byte character (it decodes alone to
    U+FFFD) as its vocabulary entry in ⟨⟩, so that two such tokens stay distinguishable."""
    texts = [str(tokenizer.decode([i])) for i in ids]
    return [
        f"⟨{tokenizer.convert_ids_to_tokens(i)}⟩" if "\ufffd" in text else text
        for text, i in zip(texts, ids, strict=True)
    ]


def load_run(path: Path) -> LoadedRun:
    """A run directory's config and analysis; a run without analysis is served without it."""
    if not path.is_dir():
        raise SPDUserError(f"no such run directory: {path}")
    if not (path / CONFIG_FILE).is_file():
        raise SPDUserError(f"{path} is not a run directory (no {CONFIG_FILE})")
    latest_checkpoint(path)  # a run without a checkpoint fails here, with its own message
    config = load_config(path / CONFIG_FILE)
    try:
        analysis, message = load_analysis(path), None
    except SPDUserError:
        analysis = None
        message = f"{path.name} has no analysis: run `spd-analyze {path}` first"
    return LoadedRun(path, config, analysis, message)
