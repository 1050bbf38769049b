"""The pretraining loop: AdamW on next-token cross-entropy, with eval, checkpoints and resume.

Every optimiser step draws one batch (`batch_size / world_size` sequences on each rank), averages
the gradients over the ranks, clips and steps. A checkpoint after step n holds everything the
loop reads from (model, AdamW, random generators, the training stream's position), so a run
continued from it computes exactly what the uninterrupted run would have. When `should_stop`
says so (a signal), the next step's state is checkpointed on every rank's agreement and the
loop returns with `stopped` set. At the end, rank 0 writes the model directory.
"""

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from spd.data.stream_state import TrackedStream
from spd.errors import SPDUserError
from spd.experiments.lm.pretrain.checks import PreparedRun
from spd.experiments.lm.pretrain.config import PretrainConfig, pretrain_config_to_yaml
from spd.experiments.lm.pretrain.data import token_batches
from spd.experiments.lm.pretrain.run_files import PretrainRunFiles
from spd.experiments.lm.target_models.models import TargetLM
from spd.persistence.atomic_files import atomic_write_text
from spd.persistence.rng_state import capture_rng_state, restore_rng_state
from spd.train import distributed
from spd.train.progress import progress_bar
from spd.train.schedules import lr_at_step

# The eval stream's seed is offset from the training stream's (the lm task uses the same offset).
EVAL_SEED_OFFSET = 1_000_003
INFO_FILE = "pretrain_info.json"


@dataclass(frozen=True)
class PretrainResult:
    """How a pretraining run ended."""

    step: int  # optimiser steps done
    stopped: bool  # True: stopped on request, checkpointed at `step`, continue with --resume
    eval_ce: float | None  # the last eval cross-entropy (nats/token)
    model_dir: Path | None  # the finished model's directory (None when stopped)


def next_token_ce(model: TargetLM, tokens: Int[Tensor, "batch seq"]) -> Tensor:
    """Mean cross-entropy of predicting token t+1 from tokens 0..t, over every position."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def make_optimizer(model: TargetLM, config: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices and embeddings only (not on gains and biases)."""
    params = list(model.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=config.adam_betas,
    )


def evaluate(model: TargetLM, batches: list[Tensor]) -> float:
    """Mean next-token CE over the fixed eval batches, averaged over the ranks."""
    model.eval()
    with torch.no_grad():
        ce = float(torch.stack([next_token_ce(model, b) for b in batches]).mean())
    model.train()
    return distributed.average_metrics({"ce": ce})["ce"]


def _any_rank(flag: bool) -> bool:
    """Whether `flag` is set on any rank (every rank must call this at the same step)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class _Loop:
    """The state one pretraining run steps through (built fresh or from a checkpoint)."""

    def __init__(self, prepared: PreparedRun, files: PretrainRunFiles, resume: bool) -> None:
        self.config = config = prepared.config
        self.files = files
        self.rank = distributed.rank_info()
        self.device = distributed.device_for_rank(prepared.device)
        torch.manual_seed(config.seed)
        self.model = TargetLM.build(config.model).to(self.device)
        self.optimizer = make_optimizer(self.model, config)
        world = self.rank.world_size
        shard = (self.rank.rank, world)
        data = config.data
        self.train = TrackedStream(
            token_batches(
                data,
                prepared.tokenizer,
                data.train_split,
                config.batch_size // world,
                config.seed,
                shard,
            )
        )
        evals = token_batches(
            data,
            prepared.tokenizer,
            data.eval_split,
            config.eval_batch_size // world,
            config.seed + EVAL_SEED_OFFSET,
            shard,
        )
        self.eval_batches = [next(evals).to(self.device) for _ in range(config.n_eval_batches)]
        self.step = 0
        self.seconds_before = 0.0
        if resume:
            self._restore(files.load_latest_checkpoint())

    def _restore(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.rank.world_size:
            raise SPDUserError(
                f"the checkpoint in {self.files.checkpoints} was written by {state['world_size']} "
                f"data-parallel ranks; resume it with --dp {state['world_size']}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"])
        self.train.load_state_dict(state["train_stream"])
        self.step = state["step"]
        self.seconds_before = state["seconds"]

    def state(self, seconds: float) -> dict[str, Any]:
        """What a checkpoint holds besides its step."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": capture_rng_state(),
            "train_stream": self.train.state_dict(),
            "world_size": self.rank.world_size,
            "seconds": seconds,
            "config": self.config.model_dump(mode="json"),
        }

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimiser step; returns its learning rate and this rank's loss."""
        c = self.config
        lr = lr_at_step(
            step, c.steps, c.lr, c.lr_schedule, c.lr_warmup_pct, c.lr_exponential_halflife
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = next_token_ce(self.model, next(self.train).to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.model.parameters())
        distributed.average_gradients(params)
        # The gradients are the same on every rank now, so all ranks agree on a non-finite one.
        norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip_norm or math.inf)
        if not bool(torch.isfinite(norm)):
            raise SPDUserError(
                f"non-finite gradient at step {step} of pretraining {c.name}; lower lr or raise "
                "lr_warmup_pct"
            )
        self.optimizer.step()
        return lr, loss.item()

    def report(self, done: int, lr: float, loss: float) -> dict[str, float]:
        """The train loss (mean over ranks) and eval CE due after `done` steps, also written
        to metrics.jsonl; every rank calls this at every step (the means are collective)."""
        c = self.config
        row: dict[str, float] = {}
        if done % c.log_freq == 0 or done == c.steps:
            row |= {"train/loss": distributed.average_metrics({"loss": loss})["loss"], "lr": lr}
        if done % c.eval_freq == 0 or done == c.steps:
            row["eval/ce"] = evaluate(self.model, self.eval_batches)
            if self.rank.is_main:
                print(f"step {done}: eval CE {row['eval/ce']:.4f} nats/token", flush=True)
        if self.rank.is_main and row:
            self.files.append_metrics({"step": done, **row})
        return row


def _write_model(loop: _Loop, prepared: PreparedRun, eval_ce: float | None, seconds: float) -> Path:
    """Write the model, its tokenizer and pretrain_info.json; the directory appears complete."""
    files = loop.files
    partial = files.root / ".model.partial"
    if partial.exists():
        shutil.rmtree(partial)  # left by a run killed while writing it
    loop.model.save_pretrained(partial)
    prepared.tokenizer.save_pretrained(str(partial))
    info = {
        "name": loop.config.name,
        "steps": loop.config.steps,
        "eval_ce": eval_ce,
        "n_parameters": sum(p.numel() for p in loop.model.parameters()),
        "tokens_trained": loop.config.steps * loop.config.batch_size * loop.config.data.max_seq_len,
        "train_seconds": seconds,
        "world_size": loop.rank.world_size,
    }
    atomic_write_text(partial / INFO_FILE, json.dumps(info, indent=2) + "\n")
    if files.model_dir.exists():  # a finished run continued for more steps replaces its model
        shutil.rmtree(files.model_dir)
    partial.rename(files.model_dir)
    return files.model_dir


def pretrain(
    prepared: PreparedRun,
    files: PretrainRunFiles,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
    show_progress: bool = False,
) -> PretrainResult:
    """Train `prepared.config`'s model in the run directory `files` (new, or `resume`d from its
    newest checkpoint) and write its model directory at the end.

    `should_stop` is polled after every step; once it is True on any rank, the state is
    checkpointed and the result says `stopped`.
    """
    loop = _Loop(prepared, files, resume)
    config, main = loop.config, loop.rank.is_main
    _barrier()  # every rank has made its checks before rank 0 writes the directory
    if main:
        files.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(files.config_file, pretrain_config_to_yaml(config))
        if resume:
            files.truncate_metrics(loop.step)
    started = time.perf_counter()
    eval_ce: float | None = None
    bar = progress_bar(
        range(loop.step, config.steps),
        show_progress and main,
        initial=loop.step,
        total=config.steps,
        desc=f"pretrain {config.name}",
    )
    for step in bar:
        lr, loss = loop.train_step(step)
        done = step + 1
        row = loop.report(done, lr, loss)
        if "train/loss" in row:
            bar.set_postfix(loss=f"{row['train/loss']:.3f}", refresh=False)
        eval_ce = row.get("eval/ce", eval_ce)
        stop = done < config.steps and _any_rank(should_stop is not None and should_stop())
        periodic = config.save_freq is not None and done % config.save_freq == 0
        seconds = loop.seconds_before + time.perf_counter() - started
        if stop or periodic or done == config.steps:
            if main:
                files.save_checkpoint(done, loop.state(seconds), config.keep_last_checkpoints)
            _barrier()  # a stopping rank must not exit while rank 0 is still writing
        if stop:
            bar.close()
            return PretrainResult(done, True, eval_ce, None)
    bar.close()
    if eval_ce is None:  # resumed at the last step: nothing was evaluated in this process
        eval_ce = evaluate(loop.model, loop.eval_batches)
    seconds = loop.seconds_before + time.perf_counter() - started
    model_dir = _write_model(loop, prepared, eval_ce, seconds) if main else None
    _barrier()
    return PretrainResult(config.steps, False, eval_ce, model_dir)
