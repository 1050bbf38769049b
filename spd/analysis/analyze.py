"""`analyze_run`: one analysis pass over a run's data, written to `<run dir>/analysis/`."""

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from spd.analysis.accumulators import AccumulatorSettings, AnalysisAccumulator
from spd.analysis.pass_loop import STATE_FILE, restore_state, run_pass
from spd.analysis.sources import pass_source
from spd.analysis.store import ANALYSIS_DIR, summarize, write_analysis
from spd.config.device import resolve_device
from spd.config.loading import load_config
from spd.errors import SPDUserError
from spd.models.component_model import ComponentModel
from spd.persistence.checkpoint_check import newest_good_checkpoint
from spd.persistence.run_dir import CONFIG_FILE


@dataclass(frozen=True)
class PassOptions:
    """The command-line options of a pass."""

    n_tokens: int = 100_000
    split: str = "eval"
    batch_size: int | None = None  # default: the run's eval_batch_size
    threshold: float | None = None  # default: the run's ci_alive_threshold
    top_k: int = 20
    n_random: int = 20
    context_before: int = 8
    context_after: int = 2
    n_bins: int = 20
    save_every: int = 50
    device: str = "auto"
    fresh: bool = False
    show_progress: bool = True


def _check_pass(run_dir: Path, options: PassOptions) -> None:
    """The run directory and the options must make sense before anything is loaded."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise SPDUserError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    if options.n_tokens < 1:
        raise SPDUserError(f"--tokens must be at least 1, got {options.n_tokens}")
    if options.split not in ("train", "eval"):
        raise SPDUserError(f"--split must be 'train' or 'eval', got '{options.split}'")


def _accumulator_settings(
    options: PassOptions, run_threshold: float, kind: str
) -> AccumulatorSettings:
    """The accumulators' settings; toy data has no token context to keep."""
    return AccumulatorSettings(
        threshold=run_threshold if options.threshold is None else options.threshold,
        top_k=options.top_k,
        n_random=options.n_random,
        context_before=0 if kind == "toy" else options.context_before,
        context_after=0 if kind == "toy" else options.context_after,
        n_bins=options.n_bins,
    )


def analyze_run(run_dir: Path, options: PassOptions) -> Path:
    """Stream `options.n_tokens` tokens of the run's data through its decomposition; returns the
    path of the written analysis.json. Continues a stopped pass with the same options."""
    _check_pass(run_dir, options)
    config = load_config(run_dir / CONFIG_FILE)
    checkpoint, _ = newest_good_checkpoint(run_dir, training_state=False)
    device = resolve_device(options.device)
    model = ComponentModel.from_pretrained(checkpoint)
    batch_size = options.batch_size or config.eval_batch_size
    source = pass_source(model, config, options.split, batch_size, device)
    settings = _accumulator_settings(options, config.ci_alive_threshold, source.kind)
    acc = AnalysisAccumulator(model.module_C, len(source.vocab), settings, device)
    out_dir = run_dir / ANALYSIS_DIR
    out_dir.mkdir(exist_ok=True)
    state_path = out_dir / STATE_FILE
    identity = {
        "checkpoint": checkpoint.name,
        "split": options.split,
        "batch_size": batch_size,
    }
    if options.fresh:
        state_path.unlink(missing_ok=True)
    resumed = restore_state(acc, state_path, identity)
    if resumed and options.show_progress:
        print(f"spd-analyze: continuing from {acc.n_tokens} tokens ({state_path})", flush=True)
    start, tokens_before = time.perf_counter(), acc.n_tokens
    run_pass(
        acc,
        source.batches,
        source.ci_of,
        options.n_tokens,
        state_path,
        identity,
        options.save_every,
        options.show_progress,
    )
    seconds = time.perf_counter() - start
    layers = summarize(acc)
    for name, extra in source.extras.items():
        layers[name].update(extra)
    meta = {
        "kind": source.kind,
        "run_dir": str(run_dir.resolve()),
        **identity,
        **source.meta,
        "device": str(device),
        "n_tokens": acc.n_tokens,
        "n_batches": acc.n_batches,
        "settings": asdict(settings),
        "hist_edges": torch.linspace(0, 1, settings.n_bins + 1).tolist(),
        "last_pass_tokens_per_second": (acc.n_tokens - tokens_before) / max(seconds, 1e-9),
        "accumulator_bytes": acc.nbytes(),
        "token_count": acc.token_count.cpu().tolist(),
    }
    return write_analysis(out_dir, meta, source.vocab, layers)
