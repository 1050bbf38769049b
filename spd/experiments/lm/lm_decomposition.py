"""Decompose a Hugging Face causal language model.

    python spd/experiments/lm/lm_decomposition.py spd/experiments/lm/ss_emb_config.yaml
    python spd/experiments/lm/lm_decomposition.py spd/experiments/lm/lm_example_emb_config.yaml \\
        --override steps=500

The target is any `transformers` causal LM named by class path and loaded with
`from_pretrained(pretrained_model_name_hf)` (a hub id or a local directory); its `logits` are the
output. Model, tokenizer and dataset are resolved before anything is loaded
(`spd/experiments/lm/sources.py`): a local copy is used when there is one, and hub ids that
cannot be fetched here stop the run with one message.

At the end, the CE/KL figures and CI-L0 of the last evaluation are printed, logged to
metrics.jsonl (as `final/…`) and written to summary.json.
"""

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from spd.config.schema import Config, LMTaskConfig
from spd.data.lm_data import lm_batches, load_tokenizer
from spd.errors import SPDUserError, run_cli
from spd.experiments.decompose import decompose_main
from spd.experiments.lm.sources import resolve_sources
from spd.experiments.tasks import Task
from spd.train.optimize import OptimizeResult

EVAL_SEED_OFFSET = 1_000_003
SUMMARY_PREFIXES = ("eval/ce_kl/", "eval/ci_l0/")


def _vocab_size(target: nn.Module) -> int:
    get_embeddings = getattr(target, "get_input_embeddings", None)
    embedding = get_embeddings() if callable(get_embeddings) else None
    if not isinstance(embedding, nn.Embedding):
        raise SPDUserError(f"{type(target).__name__} is not a causal LM with an input embedding")
    return embedding.num_embeddings


def prepare_target(target: nn.Module) -> None:
    """Set a loaded LM up for decomposition, in place: no key/value cache (whole sequences are
    run, a cache would only cost memory) and float32 weights (the components and CI functions
    are float32; a checkpoint stored in half precision is upcast)."""
    model_config = getattr(target, "config", None)
    if model_config is not None and hasattr(model_config, "use_cache"):
        model_config.use_cache = False
    if any(p.dtype != torch.float32 for p in target.parameters()):
        target.float()


def make_data(
    config: Config, target: nn.Module, device: torch.device
) -> tuple[Iterator[Tensor], Iterator[Tensor]]:
    """Token streams of the train and eval splits, each seeded from the task's shuffle seed."""
    task = config.task_config
    if not isinstance(task, LMTaskConfig):
        raise SPDUserError(
            f"lm_decomposition.py needs task_config.task_name 'lm', got '{task.task_name}'"
        )
    prepare_target(target)
    tokenizer = load_tokenizer(task.tokenizer_name)
    if len(tokenizer) > _vocab_size(target):
        raise SPDUserError(
            f"tokenizer {task.tokenizer_name} has {len(tokenizer)} tokens but the model's vocabulary "
            f"has {_vocab_size(target)}; use the model's own tokenizer"
        )
    seed = config.seed if task.shuffle_seed is None else task.shuffle_seed
    train = lm_batches(task, tokenizer, task.train_split, config.microbatch_size, seed)
    evals = lm_batches(
        task, tokenizer, task.eval_split, config.eval_batch_size, seed + EVAL_SEED_OFFSET
    )
    return train, evals


def summarize(result: OptimizeResult) -> dict[str, float]:
    """The CE/KL figures and CI-L0 of the last evaluation."""
    return {
        key.removeprefix("eval/"): value
        for key, value in result.final_metrics.items()
        if key.startswith(SUMMARY_PREFIXES)
    }


TASK = Task(
    name="lm",
    make_data=make_data,
    summarize=lambda result, _config: summarize(result),
    prepare=resolve_sources,
)


def main() -> None:
    decompose_main(__doc__ or "", script_task="lm")


if __name__ == "__main__":
    run_cli(main)
