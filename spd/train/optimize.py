"""The optimisation core: `optimize()` trains a decomposition of a target model (docs/method.md).

It is a plain library call: it knows nothing of W&B, SLURM or processes. Everything it reports
goes to the `sinks` it is given (a `RunDirectory`, a W&B logger, …). Its parts, one module each:
set-up (`setup`), the step (`step`), when to log, evaluate and checkpoint (`cadence`), the
evaluation (`evaluation`), reporting (`reporting`) and checkpoints (`training_state`).
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from spd.config.schema import Config
from spd.models.component_model import ComponentModel
from spd.persistence.run_dir import RunDirectory
from spd.train import distributed
from spd.train.cadence import Cadence
from spd.train.evaluation import evaluate_step
from spd.train.memory_estimate import describe_pgd_cost, microbatch_forward_passes
from spd.train.progress import progress_bar
from spd.train.reporting import Reporter, Sink
from spd.train.setup import set_up_training
from spd.train.step import apply_schedules, train_metrics, train_step, update_term_states
from spd.train.training_state import Checkpointer


@dataclass
class OptimizeResult:
    model: ComponentModel
    final_metrics: dict[str, float]
    # The step a run asked to stop (`should_stop`) was checkpointed at; None if it finished.
    stopped_at: int | None = None


def _progress_bar(start_step: int, steps: int, show: bool) -> "tqdm[int]":
    return progress_bar(
        range(start_step, steps + 1), show, initial=start_step, total=steps + 1, desc="spd"
    )


def optimize(
    target_model: nn.Module,
    config: Config,
    device: torch.device,
    train_batches: Iterator[Tensor],
    eval_batches: Iterator[Tensor],
    run_dir: RunDirectory | None = None,
    sinks: Sequence[Sink] = (),
    show_progress: bool = True,
    on_step_end: Callable[[int], None] | None = None,
    resume_from: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> OptimizeResult:
    """Decompose `target_model` as `config` says.

    `train_batches` yields micro-batches of `config.microbatch_size` inputs; `eval_batches` yields
    eval inputs (`n_eval_steps` per evaluation). Steps 0…steps-1 take optimiser steps; step
    `steps` is only logged and evaluated. Returns the trained model and the last metrics.
    Under `torchrun` (`spd.train.distributed`) each rank passes its own data streams; gradients,
    losses and metrics are averaged over ranks and only rank 0 writes to `run_dir` and `sinks`.

    `resume_from` (a checkpoint of a compatible config) continues that run at the checkpoint's
    step exactly; its metrics rows from that step on are dropped from `run_dir` first.
    `should_stop` is polled after every step: once True, the next step's state is checkpointed
    and the run returns with `stopped_at` set.
    """
    training = set_up_training(
        target_model, config, device, train_batches, eval_batches, resume_from
    )
    if not distributed.rank_info().is_main:
        run_dir, sinks, show_progress = None, (), False
    if resume_from is not None and run_dir is not None:
        run_dir.discard_metrics_from(training.start_step)
    reporter = Reporter([*([run_dir] if run_dir is not None else []), *sinks])
    checkpointer = Checkpointer(
        run_dir,
        config,
        training.model,
        training.optimizer,
        training.alive,
        training.streams,
        training.term_states,
    )
    cadence = Cadence.from_config(config)
    progress = _progress_bar(training.start_step, config.steps, show_progress)
    # With PGD terms, the start-up line and the progress line say what a step costs.
    n_layers = len(training.model.module_names)
    pgd_cost = describe_pgd_cost(config, n_layers)
    cost = {} if pgd_cost is None else {"fwd/micro": microbatch_forward_passes(config, n_layers)}
    if pgd_cost is not None and distributed.rank_info().is_main:
        print(f"spd: {pgd_cost}", flush=True)
    for step in progress:
        if cadence.checkpoint_due(step, training.start_step):
            checkpointer.save(step)
        lr, pnorm = apply_schedules(training.optimizer, config, step)
        stats = train_step(training, config, device, step, pnorm, detailed=cadence.log_due(step))
        progress.set_postfix({"loss": f"{stats.loss:.3g}", **cost}, refresh=False)
        if cadence.log_due(step):
            reporter.log(step, train_metrics(stats, training, lr, pnorm))
        if cadence.eval_due(step):
            include_slow = cadence.include_slow(step)
            reporter.log_evaluation(
                step, *evaluate_step(training, config, device, step, include_slow)
            )
        last = cadence.is_last(step)
        if not last:
            training.optimizer.step()
            update_term_states(training, step)
        if on_step_end is not None:
            on_step_end(step)
        if not last and should_stop is not None and should_stop():
            checkpointer.save(step + 1)
            progress.close()
            return OptimizeResult(training.model, reporter.final_metrics, stopped_at=step + 1)
    progress.close()
    return OptimizeResult(training.model, reporter.final_metrics)
