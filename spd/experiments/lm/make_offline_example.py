"""Build the offline language-model example: corpus, tokenizer and a small Llama, no network.

    python spd/experiments/lm/make_offline_example.py [--out DIR] [--steps N] [--force]

1. Writes a corpus of generated stories (`story_corpus.py`, seeded) as data/train.jsonl and
   data/test.jsonl (column "story").
2. Trains a byte-level BPE tokenizer on the training stories with `tokenizers`.
   The generated stories use few words, so BPE runs out of merges at 1 113 tokens, below the
   4 096 it may use.
3. Trains a Llama of the SimpleStories-1.25M shape family (width 128, 4 layers, tied embeddings)
   whose vocabulary is exactly the tokenizer's (1 113 rows: every embedding row is a token the
   data can hold; about 0.8M parameters) on 512-token sequences for a few minutes on CPU.
4. Saves model and tokenizer (model/) and the corpus (data/) under DIR, default
   <output root>/lm_offline_example, plus example_info.json with the losses.

The directory appears only when complete (built under a temporary name, then renamed). The
registered experiments `lm_example_emb` and `lm_example_mlp` decompose this model.
"""

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from spd.config.option_types import positive_int
from spd.data.lm_data import lm_batches
from spd.errors import SPDUserError, run_cli
from spd.experiments.lm.config import LMTaskConfig
from spd.experiments.lm.sources import default_example_dir
from spd.experiments.lm.story_corpus import story_corpus
from spd.train.schedules import lr_at_step

EOS = "<|endoftext|>"
TEXT_COLUMN = "story"
EVAL_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class ExampleSpec:
    """Sizes of the example; the defaults are the registered example, tests use a tiny one."""

    n_train_stories: int = 20_000
    n_test_stories: int = 1_000
    vocab_size: int = 4096  # the tokenizer's upper bound; the model gets the tokenizer's size
    hidden_size: int = 128
    intermediate_size: int = 256
    n_layers: int = 4
    n_heads: int = 4
    seq_len: int = 512
    batch_size: int = 4
    steps: int = 300
    lr: float = 3e-3
    warmup_pct: float = 0.05
    n_eval_batches: int = 8
    seed: int = 0


@dataclass(frozen=True)
class ExampleInfo:
    """What was built, written to example_info.json."""

    spec: ExampleSpec
    n_parameters: int
    tokenizer_vocab_size: int
    final_train_loss: float
    eval_ce: float
    eval_ce_unigram: float
    train_seconds: float


def write_corpus(data_dir: Path, spec: ExampleSpec) -> list[str]:
    """Write train/test stories as JSON lines; returns the training stories."""
    data_dir.mkdir(parents=True)
    stories = story_corpus(spec.n_train_stories + spec.n_test_stories, spec.seed)
    train, test = stories[: spec.n_train_stories], stories[spec.n_train_stories :]
    for split, texts in (("train", train), ("test", test)):
        with (data_dir / f"{split}.jsonl").open("w") as f:
            for text in texts:
                f.write(json.dumps({TEXT_COLUMN: text}) + "\n")
    return train


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with at most `vocab_size` tokens and EOS as its one special token.

    The generated vocabulary is small, so BPE may run out of merges below `vocab_size`.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS)


def build_llama(spec: ExampleSpec, eos_id: int, vocab_size: int) -> LlamaForCausalLM:
    """An untrained Llama of the example's shape (seeded) with `vocab_size` embedding rows (the
    tokenizer's size, so that no row is a token that cannot occur)."""
    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_heads,
        max_position_embeddings=spec.seq_len,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        use_cache=False,
    )
    return LlamaForCausalLM(config)


def next_token_ce(model: LlamaForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of `model` on a (batch, seq) token batch."""
    logits = model(input_ids=tokens).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def unigram_ce(train_tokens: torch.Tensor, eval_tokens: torch.Tensor, vocab_size: int) -> float:
    """CE of the (add-one smoothed) unigram distribution of the training tokens on eval tokens:
    the loss of a model that learnt word frequencies only."""
    counts = torch.bincount(train_tokens.flatten(), minlength=vocab_size).double() + 1.0
    log_p = (counts / counts.sum()).log()
    return float(-log_p[eval_tokens[:, 1:].flatten()].mean())


def build_example(out_dir: Path, spec: ExampleSpec, log: bool = True) -> ExampleInfo:
    """Write corpus, tokenizer and trained model to `out_dir` (which must not exist yet)."""
    if out_dir.exists():
        raise SPDUserError(f"{out_dir} exists already; pass --force to rebuild it")
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted build
    train_texts = write_corpus(partial / "data", spec)
    tokenizer = train_tokenizer(train_texts, spec.vocab_size)
    eos_id = tokenizer.eos_token_id
    assert isinstance(eos_id, int)
    model = build_llama(spec, eos_id, len(tokenizer))
    task = LMTaskConfig(
        dataset_name=str(partial / "data"),
        text_column=TEXT_COLUMN,
        max_seq_len=spec.seq_len,
        tokenizer_name=str(partial / "model"),
    )
    cache = partial / ".datasets_cache"
    train = lm_batches(task, tokenizer, "train", spec.batch_size, spec.seed, cache)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    model.train()
    start = time.perf_counter()
    loss_value = math.nan
    seen_tokens: list[torch.Tensor] = []
    for step in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at_step(step, spec.steps, spec.lr, "cosine", spec.warmup_pct)
        tokens = next(train)
        if step < spec.n_eval_batches:
            seen_tokens.append(tokens)
        loss = next_token_ce(model, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = loss.item()
        if log and (step % 50 == 0 or step == spec.steps - 1):
            print(f"step {step:5d}  loss {loss_value:.3f}", flush=True)
    train_seconds = time.perf_counter() - start
    model.eval()
    evals = lm_batches(
        task, tokenizer, "test", spec.batch_size, spec.seed + EVAL_SEED_OFFSET, cache
    )
    eval_batches = [next(evals) for _ in range(spec.n_eval_batches)]
    with torch.no_grad():
        eval_ce = float(torch.stack([next_token_ce(model, b) for b in eval_batches]).mean())
    info = ExampleInfo(
        spec=spec,
        n_parameters=sum(p.numel() for p in model.parameters()),
        tokenizer_vocab_size=len(tokenizer),
        final_train_loss=loss_value,
        eval_ce=eval_ce,
        eval_ce_unigram=unigram_ce(torch.cat(seen_tokens), torch.cat(eval_batches), len(tokenizer)),
        train_seconds=train_seconds,
    )
    model.save_pretrained(partial / "model")
    tokenizer.save_pretrained(partial / "model")
    shutil.rmtree(cache)
    (partial / "example_info.json").write_text(json.dumps(asdict(info), indent=2) + "\n")
    partial.rename(out_dir)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: <output root>/lm_offline_example)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=ExampleSpec.steps, help="training steps of the Llama"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing example")
    args = parser.parse_args()
    out_dir: Path = args.out or default_example_dir()
    if args.force and out_dir.exists():
        shutil.rmtree(out_dir)
    spec = replace(ExampleSpec(), steps=args.steps)
    print(f"building the offline LM example in {out_dir}", flush=True)
    info = build_example(out_dir, spec)
    print(
        f"done: {info.n_parameters:,} parameters, tokenizer of {info.tokenizer_vocab_size} tokens, "
        f"{info.train_seconds:.0f} s of training; eval CE {info.eval_ce:.3f} nats/token "
        f"(unigram baseline {info.eval_ce_unigram:.3f}); written to {out_dir}"
    )


if __name__ == "__main__":
    run_cli(main)
