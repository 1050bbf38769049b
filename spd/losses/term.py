"""`LossTerm`: what a loss-term module declares, and `register_loss_term`, which lists it.

A term module (`spd/losses/terms/<name>.py`) defines its parameter block and its compute
function and registers one `LossTerm`; `spd.config.loss_registry.LOSS_TERMS` names the module
(the term's place in that tuple is its place in the sum). The seam the later terms use (routers,
adversarial mask sources, per-term state) is described in CLAUDE.md, 'Adding a loss term'.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import Field, PositiveInt
from torch import Tensor

from spd.config.loss_registry import LOSS_TERMS
from spd.config.schema import LRSchedule, StrictModel
from spd.losses.inputs import LossInputs, TermState
from spd.losses.masks import delta_masks, stochastic_masks
from spd.models.module_mask import ModuleMask


class NoParams(StrictModel):
    """The parameter block of a term without parameters (`params:` must be empty)."""


class SampledParams(StrictModel):
    """The parameters every term with a mask source has: how many masks it draws per step."""

    n_mask_samples: PositiveInt = Field(
        default=1, description="Mask draws per step; the term is the mean over them"
    )


ParamsT = TypeVar("ParamsT", bound=StrictModel)
Masks = Mapping[str, ModuleMask]
# A term's masks for one sample: the module names it masks -> their `ModuleMask` (component
# mask, delta component's mask, route), passed on to `ComponentModel.forward_with_components`.
MaskSource = Callable[[LossInputs, ParamsT], dict[str, ModuleMask]]


def draw_stochastic_masks(inputs: LossInputs, params: StrictModel) -> dict[str, ModuleMask]:
    """The method's stochastic masks of every decomposed module, from this step's CI, drawn as
    the run's `sampling` says; with `use_delta_component`, then the delta component's masks."""
    component = stochastic_masks(inputs.ci, inputs.sampling)
    if not inputs.use_delta_component:
        return {name: ModuleMask(component=m) for name, m in component.items()}
    delta = delta_masks(inputs.ci, inputs.sampling)
    return {name: ModuleMask(component=m, delta=delta[name]) for name, m in component.items()}


def _one_process(tensors: Sequence[Tensor]) -> None:
    """A collective over a single process: nothing to do."""


# `spd.train.schedules.lr_at_step`: (step, steps, base lr, schedule, warm-up fraction, half-life).
LRAtStep = Callable[[int, int, float, LRSchedule, float, float | None], float]


def _base_lr(
    step: int, steps: int, base: float, schedule: LRSchedule, warmup: float, halflife: float | None
) -> float:
    """The base rate at every step: what a one-off loss outside training (which never takes an
    optimiser step) uses."""
    return base


@dataclass(frozen=True)
class StateContext:
    """What a term's state factory learns about the run besides the term's parameters."""

    name: str  # the term's name (its error lines say it)
    coeff: float  # the term's coefficient (its sources' gradient arrives multiplied by it)
    steps: int  # the run's optimiser steps (a state's own schedules run over them)
    # Rows of one training micro-batch on this rank (batch_size / gradient_accumulation_steps /
    # world size): the batch the state's tensors are used with.
    rank_microbatch_size: int
    # Collectives over the data-parallel ranks, in place (no-ops in one process): the mean over
    # ranks of each tensor, and rank 0's values copied into each.
    average: Callable[[Sequence[Tensor]], None] = _one_process
    broadcast: Callable[[Sequence[Tensor]], None] = _one_process
    # A state's own learning-rate schedules (`spd.train.schedules.lr_at_step` in training).
    lr_at_step: LRAtStep = _base_lr


# A term's state factory: its validated parameters and the run -> a fresh `TermState`. It checks
# the parameters against the run (one `SPDUserError` line) before anything is written.
StateFactory = Callable[[ParamsT, StateContext], TermState]


@dataclass(frozen=True)
class LossTerm(Generic[ParamsT]):
    """One term of the loss: its name (the `losses:` entry and the `train/loss/<name>` metric),
    its parameter block, how it is computed, and how it treats masks and a row selection.

    `compute(inputs, params, masks)` returns the term's scalar. A term with a `masks` source is
    computed once per sample (its params' `n_mask_samples`, a `SampledParams`) with masks of its
    own, drawn in the order of `LOSS_TERMS`, and averaged; the others get empty masks.
    `row_mean` terms are means over batch rows: with a row selection they are scaled by the
    kept share (the rows left out add zero). A term with a `state` factory keeps a `TermState`
    between steps (built by `spd.train.setup`, read as `inputs.states[name]`, updated by
    `spd.train.step` after the backward pass, checkpointed by `spd.train.training_state`).
    """

    name: str
    params: type[ParamsT]
    compute: Callable[[LossInputs, ParamsT, Masks], Tensor]
    masks: MaskSource[ParamsT] | None = None
    row_mean: bool = False
    state: StateFactory[ParamsT] | None = None

    @property
    def module(self) -> str:
        """The module that defines the term (where its compute function lives)."""
        return self.compute.__module__

    def n_samples(self, params: ParamsT) -> int:
        """How many times the term is computed in a step: its mask draws, or once."""
        if self.masks is None:
            return 1
        assert isinstance(params, SampledParams), f"{self.name}: a mask source needs SampledParams"
        return params.n_mask_samples


def register_loss_term(term: LossTerm[ParamsT]) -> LossTerm[ParamsT]:
    """Add `term` to `LOSS_TERMS` (a built-in's module must also be in its tuple)."""
    LOSS_TERMS.register(term.name, term)
    return term
