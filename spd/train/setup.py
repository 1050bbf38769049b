"""Setting up a run: the component model, its optimiser, the alive tracker and the data streams,
either fresh or restored from a checkpoint."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from spd.config.schema import Config
from spd.data.stream_state import TrackedStream
from spd.losses.inputs import TermState
from spd.losses.term import StateContext
from spd.losses.total import ConfiguredTerm, build_term_states, configured_terms
from spd.models.component_model import ComponentModel, build_component_model
from spd.persistence.checkpoints import read_checkpoint
from spd.train import distributed
from spd.train.alive_tracker import AliveTracker
from spd.train.compilation import MicroStep
from spd.train.data_shard import data_shard
from spd.train.schedules import lr_at_step
from spd.train.training_state import restore_training_state
from spd.train.warmup import component_parameters, faithfulness_warmup


@dataclass
class Training:
    """Everything a run updates or draws from, i.e. what a checkpoint must restore."""

    model: ComponentModel
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    alive: AliveTracker
    streams: dict[str, TrackedStream]
    # The first step this process runs: 0, or the step of the checkpoint it resumed from.
    start_step: int
    # Loss and backward of one micro-batch, compiled or eager (`compile` in the config).
    micro_step: MicroStep
    # The stateful loss terms' states (persistent PGD's sources), by term name.
    term_states: dict[str, TermState]


def trainable_parameters(model: ComponentModel) -> list[nn.Parameter]:
    """U, V (untied ones) and the CI-function parameters."""
    return component_parameters(model) + list(model.ci_fns.parameters())


def term_states(config: Config) -> dict[str, TermState]:
    """Fresh states of `config`'s stateful loss terms for this rank (`LossTerm.state`), with the
    run's collectives and learning-rate schedules; a setting that does not fit the run (e.g. N
    sources that do not divide this rank's micro-batch) is an `SPDUserError`."""
    rows = data_shard(config).microbatch_size

    def context(c: ConfiguredTerm) -> StateContext:
        return StateContext(
            c.term.name,
            c.coeff,
            config.steps,
            rows,
            average=distributed.average_tensors,
            broadcast=distributed.broadcast_tensors,
            lr_at_step=lr_at_step,
        )

    return build_term_states(configured_terms(config), context)


def set_up_training(
    target_model: nn.Module,
    config: Config,
    device: torch.device,
    train_batches: Iterator[Tensor],
    eval_batches: Iterator[Tensor],
    resume_from: Path | None,
) -> Training:
    """Build and initialise the component model (seeded), join the process group when launched
    under `torchrun`, create AdamW, the alive tracker and the stateful terms' states, restore
    `resume_from` if given (else run the faithfulness warm-up, `spd.train.warmup`), and set up
    the (compiled or eager) micro-batch step."""
    torch.manual_seed(config.seed)
    model = build_component_model(target_model, config)
    model.init_components_from_target(config.seed)
    model.to(device)
    # Every rank starts from the same parameters (seeded above), then draws its own masks.
    distributed.setup(device)
    if not distributed.rank_info().is_main:
        torch.manual_seed(distributed.rank_seed(config.seed))
    params = trainable_parameters(model)
    # The fused kernel (CPU and CUDA) replaces a dozen small ops per parameter per step.
    optimizer = torch.optim.AdamW(
        model.optimizer_param_groups(params), lr=config.lr, weight_decay=0.0, fused=True
    )
    alive = AliveTracker(
        model.module_C,
        config.ci_alive_threshold,
        config.n_examples_until_dead,
        device,
    )
    streams = {"train": TrackedStream(train_batches), "eval": TrackedStream(eval_batches)}
    states = term_states(config)
    start_step = 0
    if resume_from is not None:
        data = read_checkpoint(resume_from)
        start_step = restore_training_state(
            data, resume_from, config, model, optimizer, alive, streams, states
        )
    else:
        faithfulness_warmup(model, config)
    micro_step = MicroStep(config, device)
    return Training(model, params, optimizer, alive, streams, start_step, micro_step, states)
