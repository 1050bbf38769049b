"""The optimisation core: `optimize()` trains a decomposition of a target model (spec §5).

It is a plain library call: it knows nothing of W&B, SLURM or processes. Everything it reports
goes to the `sinks` it is given (a `RunDirectory`, a W&B logger, …).
"""

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from tqdm import tqdm

from spd.config.schema import Config
from spd.data.stream_state import TrackedStream
from spd.eval.evaluate import evaluate
from spd.losses.terms import batch_loss
from spd.models.component_model import ComponentModel, build_component_model
from spd.persistence.checkpoints import read_checkpoint, save_checkpoint
from spd.persistence.run_dir import RunDirectory
from spd.train import distributed
from spd.train.alive_tracker import AliveTracker
from spd.train.schedules import lr_at_step, pnorm_at_step
from spd.train.training_state import capture_training_state, restore_training_state


class Sink(Protocol):
    """Somewhere metrics and figures go (the run directory, W&B)."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def save_figure(self, step: int, name: str, figure: Figure) -> object: ...


@dataclass
class OptimizeResult:
    model: ComponentModel
    final_metrics: dict[str, float]
    # The step a run asked to stop (`should_stop`) was checkpointed at; None if it finished.
    stopped_at: int | None = None


def trainable_parameters(model: ComponentModel) -> list[nn.Parameter]:
    """U, V (untied ones) and the CI-function parameters."""
    params = [p for comp in model.components.values() for p in comp.parameters() if p.requires_grad]
    return params + list(model.gates.parameters())


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
    eval inputs (`n_eval_steps` are drawn per evaluation). Steps 0…steps-1 take optimiser steps;
    step `steps` is only logged and evaluated. Returns the trained model and the last metrics.

    Under `torchrun` (see `spd.train.distributed`) every rank passes its own data streams; gradients,
    losses and metrics are averaged over ranks and only rank 0 writes to `run_dir` and `sinks`.

    `resume_from` (a checkpoint written by a run of a compatible config) continues that run at
    the checkpoint's step, exactly as if it had never stopped; its metrics rows from that step on
    are dropped from `run_dir` first. `should_stop` is polled after every step: once it returns
    True, the next step's state is checkpointed and the run returns with `stopped_at` set.
    """
    torch.manual_seed(config.seed)
    model = build_component_model(target_model, config)
    model.init_components_from_target(config.seed)
    model.to(device)
    # --- data parallelism: same initial parameters on every rank (seeded above), then each rank
    # draws its own masks; only rank 0 reports and writes files.
    distributed.setup(device)
    rank = distributed.rank_info()
    if not rank.is_main:
        torch.manual_seed(distributed.rank_seed(config.seed))
        run_dir, sinks, show_progress = None, (), False
    # --- end data parallelism
    params = trainable_parameters(model)
    # The fused kernel (CPU and CUDA) replaces a dozen small ops per parameter per step.
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0, fused=True)
    alive = AliveTracker(
        model.module_names,
        config.C,
        config.ci_alive_threshold,
        config.n_examples_until_dead,
        device,
    )
    streams = {"train": TrackedStream(train_batches), "eval": TrackedStream(eval_batches)}
    start_step = 0
    if resume_from is not None:
        data = read_checkpoint(resume_from)
        start_step = restore_training_state(
            data, resume_from, config, model, optimizer, alive, streams
        )
        if run_dir is not None:
            run_dir.discard_metrics_from(start_step)
    all_sinks: list[Sink] = [*([run_dir] if run_dir is not None else []), *sinks]
    final_metrics: dict[str, float] = {}

    def checkpoint(at: int) -> None:
        if run_dir is not None:
            state = capture_training_state(optimizer, alive, streams)
            save_checkpoint(run_dir, at, model, config, state)

    progress = tqdm(
        range(start_step, config.steps + 1),
        initial=start_step,
        total=config.steps + 1,
        disable=not show_progress,
        ncols=100,
        desc="spd",
    )
    for step in progress:
        # Saved before anything of this step is drawn, so the checkpoint continues at `step`.
        if step > start_step and (
            step == config.steps or (config.save_freq is not None and step % config.save_freq == 0)
        ):
            checkpoint(step)
        lr = lr_at_step(
            step,
            config.steps,
            config.lr,
            config.lr_schedule,
            config.lr_warmup_pct,
            config.lr_exponential_halflife,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        pnorm = pnorm_at_step(
            step,
            config.steps,
            config.pnorm,
            config.p_anneal_final_p,
            config.p_anneal_start_frac,
            config.p_anneal_end_frac,
        )
        optimizer.zero_grad(set_to_none=True)
        is_last = step == config.steps
        log_due = step % config.train_log_freq == 0 or is_last
        n_micro = config.gradient_accumulation_steps
        loss_sum = 0.0
        terms: dict[str, Tensor] = {}
        term_sums: dict[str, Tensor] = {}
        ci_l0_sums: dict[str, Tensor] = {}
        for _ in range(n_micro):
            batch = next(streams["train"]).to(device)
            step_loss = batch_loss(model, batch, config, pnorm)
            (step_loss.total / n_micro).backward()
            terms, rows = step_loss.terms, step_loss.rows
            alive.update(step_loss.ci, None if rows is None else rows.n_rows)
            loss_sum += step_loss.total.item()
            if log_due:
                for name, value in terms.items():
                    term_sums[name] = term_sums[name] + value if name in term_sums else value
                for name, g in step_loss.ci.items():
                    fired = (g.detach() > config.ci_alive_threshold).float().sum(-1)
                    l0 = fired.mean() if rows is None else rows.mean(fired)
                    ci_l0_sums[name] = ci_l0_sums[name] + l0 if name in ci_l0_sums else l0
        # --- data parallelism: mean gradients and loss over ranks (no-ops on one process)
        distributed.average_gradients(params)
        loss_sum = distributed.average_metrics({"loss": loss_sum})["loss"]
        # --- end data parallelism
        if not math.isfinite(loss_sum):
            bad = [name for name, value in terms.items() if not torch.isfinite(value)]
            raise FloatingPointError(
                f"non-finite loss at step {step} in term(s): {', '.join(bad) or 'total'}"
            )

        if log_due:
            grad_norm = torch.norm(
                torch.stack([p.grad.norm() for p in params if p.grad is not None])
            )
            log = {
                "train/loss/total": loss_sum / n_micro,
                **{f"train/loss/{k}": float(v) / n_micro for k, v in term_sums.items()},
                **{f"train/ci_l0/{k}": float(v) / n_micro for k, v in ci_l0_sums.items()},
                **{f"train/n_alive/{k}": float(v) for k, v in alive.n_alive().items()},
                "train/lr": lr,
                "train/pnorm": pnorm,
                "train/grad_norm": float(grad_norm),
            }
            log = distributed.average_metrics(log)
            for sink in all_sinks:
                sink.log_metrics(step, log)
            final_metrics.update(log)
            progress.set_postfix(loss=f"{loss_sum / n_micro:.3g}", refresh=False)

        slow_due = step % config.slow_eval_freq == 0 and (
            step > 0 or config.slow_eval_on_first_step
        )
        if step % config.eval_freq == 0 or is_last or slow_due:
            inputs = [next(streams["eval"]).to(device) for _ in range(config.n_eval_steps)]
            metrics, figures = evaluate(
                model, config, inputs, step, include_slow=slow_due or is_last
            )
            metrics = distributed.average_metrics(metrics)
            for sink in all_sinks:
                sink.log_metrics(step, metrics)
                for name, figure in figures.items():
                    sink.save_figure(step, name, figure)
            for figure in figures.values():
                plt.close(figure)
            final_metrics.update(metrics)

        if not is_last:
            optimizer.step()
        if on_step_end is not None:
            on_step_end(step)
        if not is_last and should_stop is not None and should_stop():
            checkpoint(step + 1)
            progress.close()
            return OptimizeResult(model=model, final_metrics=final_metrics, stopped_at=step + 1)
    progress.close()
    return OptimizeResult(model=model, final_metrics=final_metrics)
