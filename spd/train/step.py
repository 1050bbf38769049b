"""One training step of the method: schedules, the loss over the micro-batches, backward.

The optimiser step itself is taken by `optimize` after logging and evaluation, which see the
parameters and gradients of this step.
"""

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from spd.config.schema import Config
from spd.losses.batch import BatchLoss
from spd.losses.terms.importance_minimality import importance_params
from spd.models.component_model import ComponentModel
from spd.train import distributed
from spd.train.schedules import lr_at_step, pnorm_at_step
from spd.train.setup import Training
from spd.train.warmup import component_parameters


def apply_schedules(
    optimizer: torch.optim.Optimizer, config: Config, step: int
) -> tuple[float, float]:
    """Set this step's learning rate on the optimiser; return it with this step's p (the
    importance_minimality term's schedule, which schatten follows unless given its own p)."""
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
    p = importance_params(config)
    pnorm = pnorm_at_step(
        step, config.steps, p.pnorm, p.p_anneal_final_p, p.p_anneal_start_frac, p.p_anneal_end_frac
    )
    return lr, pnorm


@dataclass
class StepStats:
    """What a step's micro-batches add up to; per-term and CI-L0 sums only when it is logged."""

    n_micro: int
    loss_sum: float = 0.0
    last_terms: dict[str, Tensor] = field(default_factory=dict)
    term_sums: dict[str, Tensor] = field(default_factory=dict)
    ci_l0_sums: dict[str, Tensor] = field(default_factory=dict)
    # The global gradient norm of each clipped group before clipping (`clip_gradients`).
    pre_clip_norms: dict[str, Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        """The step's total loss, averaged over micro-batches (and ranks)."""
        return self.loss_sum / self.n_micro

    def add(self, step_loss: BatchLoss, ci_alive_threshold: float, detailed: bool) -> None:
        self.loss_sum += step_loss.total.item()
        self.last_terms = step_loss.terms
        if not detailed:
            return
        for name, value in step_loss.terms.items():
            self.term_sums[name] = self.term_sums[name] + value if name in self.term_sums else value
        rows = step_loss.rows
        for name, g in step_loss.ci.items():
            fired = (g.detach() > ci_alive_threshold).float().sum(-1)
            l0 = fired.mean() if rows is None else rows.mean(fired)
            self.ci_l0_sums[name] = self.ci_l0_sums[name] + l0 if name in self.ci_l0_sums else l0


def train_step(
    training: Training,
    config: Config,
    device: torch.device,
    step: int,
    pnorm: float,
    detailed: bool,
) -> StepStats:
    """Gradients of the configured loss over `gradient_accumulation_steps` micro-batches, averaged
    over ranks, then clipped per group (`clip_gradients`). Raises FloatingPointError, naming the
    terms, when the loss is not finite."""
    training.optimizer.zero_grad(set_to_none=True)
    stats = StepStats(n_micro=config.gradient_accumulation_steps)
    for _ in range(stats.n_micro):
        batch = next(training.streams["train"]).to(device)
        step_loss = training.micro_step(
            training.model, batch, config, pnorm, stats.n_micro, training.term_states
        )
        rows = step_loss.rows
        training.alive.update(step_loss.ci, None if rows is None else rows.n_rows)
        stats.add(step_loss, config.ci_alive_threshold, detailed)
    distributed.average_gradients(training.params)
    stats.loss_sum = distributed.average_metrics({"loss": stats.loss_sum})["loss"]
    if not math.isfinite(stats.loss_sum):
        bad = [name for name, value in stats.last_terms.items() if not torch.isfinite(value)]
        raise FloatingPointError(
            f"non-finite loss at step {step} in term(s): {', '.join(bad) or 'total'}"
        )
    stats.pre_clip_norms = clip_gradients(training.model, config)
    return stats


def update_term_states(training: Training, step: int) -> None:
    """Each stateful term's update with the gradients of the step's backward passes (persistent
    PGD's ascent step); taken with the optimiser step, so a checkpoint at step k holds the state
    after k updates."""
    for state in training.term_states.values():
        state.update(step)


def clip_gradients(model: ComponentModel, config: Config) -> dict[str, Tensor]:
    """Clip the global gradient norm of U and V (`grad_clip_norm_components`) and of the CI
    functions (`grad_clip_norm_ci_fns`), each group to its own bound, after accumulation and the
    averaging over ranks. Returns the norms before clipping of the clipped groups."""
    groups = {
        "components": (component_parameters(model), config.grad_clip_norm_components),
        "ci_fns": (list(model.ci_fns.parameters()), config.grad_clip_norm_ci_fns),
    }
    return {
        name: torch.nn.utils.clip_grad_norm_(params, max_norm)
        for name, (params, max_norm) in groups.items()
        if max_norm is not None
    }


def train_metrics(
    stats: StepStats, training: Training, lr: float, pnorm: float
) -> dict[str, float]:
    """The `train/…` row of a logged step (averaged over ranks)."""
    grads = [p.grad.norm() for p in training.params if p.grad is not None]
    grad_norm = torch.norm(torch.stack(grads))
    n = stats.n_micro
    log = {
        "train/loss/total": stats.loss,
        **{f"train/loss/{k}": float(v) / n for k, v in stats.term_sums.items()},
        **{f"train/ci_l0/{k}": float(v) / n for k, v in stats.ci_l0_sums.items()},
        **{f"train/n_alive/{k}": float(v) for k, v in training.alive.n_alive().items()},
        "train/lr": lr,
        "train/pnorm": pnorm,
        "train/grad_norm": float(grad_norm),
        **{f"train/grad_norm_pre_clip/{k}": float(v) for k, v in stats.pre_clip_norms.items()},
    }
    return distributed.average_metrics(log)
