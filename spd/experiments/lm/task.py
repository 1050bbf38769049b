"""The `lm` task: token sequences of a text dataset for a Hugging Face causal language model.

Model, tokenizer and dataset names are resolved before anything is loaded (`sources.py`): a local
copy is used when there is one, and hub ids that cannot be fetched here stop the run with one
message. At the end, the CE/KL figures and CI-L0 of the last evaluation are the summary.
"""

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.experiments.lm.config import LMTaskConfig
from spd.experiments.lm.sources import local_source_overrides, resolve_sources
from spd.experiments.tasks import Task, TokenSource, register_task
from spd.train.data_shard import DataShard

if TYPE_CHECKING:
    from spd.train.optimize import OptimizeResult

EVAL_SEED_OFFSET = 1_000_003
SUMMARY_PREFIXES = ("eval/ce_kl/", "eval/ci_l0/")


def _task(config: Config) -> LMTaskConfig:
    task = config.task_config
    if not isinstance(task, LMTaskConfig):
        raise SPDUserError(f"the lm task needs task_config.task_name 'lm', got '{task.task_name}'")
    return task


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
    config: Config, target: nn.Module, device: torch.device, shard: DataShard
) -> tuple[Iterator[Tensor], Iterator[Tensor]]:
    """Token streams of the train and eval splits, each seeded from the task's shuffle seed.

    Every rank shuffles the documents in the same order and packs its own share of them (see
    `lm_batches`), so the ranks read different sequences.
    """
    # Here, not at the top: `lm_data` imports `datasets` and `transformers`, and every config
    # validation imports this module.
    from spd.data.lm_data import lm_batches, load_tokenizer

    task = _task(config)
    prepare_target(target)
    tokenizer = load_tokenizer(task.tokenizer_name)
    if len(tokenizer) > _vocab_size(target):
        raise SPDUserError(
            f"tokenizer {task.tokenizer_name} has {len(tokenizer)} tokens but the model's vocabulary "
            f"has {_vocab_size(target)}; use the model's own tokenizer"
        )
    seed = config.seed if task.shuffle_seed is None else task.shuffle_seed
    documents = (shard.rank, shard.world_size)
    train = lm_batches(
        task, tokenizer, task.train_split, shard.microbatch_size, seed, shard=documents
    )
    evals = lm_batches(
        task,
        tokenizer,
        task.eval_split,
        shard.eval_batch_size,
        seed + EVAL_SEED_OFFSET,
        shard=documents,
    )
    return train, evals


def analysis_batches(
    config: Config, split: str, batch_size: int, seed: int
) -> tuple[Iterator[Tensor], dict[str, str]]:
    """Token batches of the run's train or eval split for `spd-analyze`, and which they are."""
    from spd.data.lm_data import lm_batches, load_tokenizer  # see make_data

    task = _task(config)
    split_name = task.eval_split if split == "eval" else task.train_split
    tokens = lm_batches(task, load_tokenizer(task.tokenizer_name), split_name, batch_size, seed)
    return tokens, {"dataset": task.dataset_name, "split_name": split_name}


def check_lm_run(config: Config) -> None:
    """The LM checks that run before anything is written (`spd.experiments.lm.preflight`)."""
    # Imported here: the checks load datasets and transformers, which a config lookup must not.
    from spd.experiments.lm.preflight import check_lm_run as check

    check(config)


def summarize(result: "OptimizeResult") -> dict[str, float]:
    """The CE/KL figures and CI-L0 of the last evaluation."""
    return {
        key.removeprefix("eval/"): value
        for key, value in result.final_metrics.items()
        if key.startswith(SUMMARY_PREFIXES)
    }


TASK = register_task(
    Task(
        name="lm",
        config_class=LMTaskConfig,
        make_data=make_data,
        summarize=lambda result, _config: summarize(result),
        analysis_source=TokenSource(
            prepare_target=prepare_target,
            tokenizer_name=lambda config: _task(config).tokenizer_name,
            max_seq_len=lambda config: _task(config).max_seq_len,
            batches=analysis_batches,
        ),
        prepare=resolve_sources,
        check=check_lm_run,
        launch_overrides=local_source_overrides,
    )
)
