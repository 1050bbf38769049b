"""Persistent PGD: adversarial sources that persist across training steps and learn alongside the
decomposition by gradient ascent (docs/method.md, 'Persistent PGD'; spd-method-2026.md, 6).

Each training step computes the term at the current sources s, with the masks
m = g + (1 − g) ⊙ s[..., :C] and, with the delta component, m_Δ = s[..., C]; that value, with its
coefficient, is the training term. The same backward pass that gives the model its gradient gives
the sources theirs (they are leaf tensors; nothing flows from them into the model), and once the
step's micro-batches are done, `PersistentSources.update` moves them one step up that gradient
with their own optimiser (signed steps or Adam, its learning rate on its own schedule) and clamps
them to [0, 1]. `n_warmup_steps` adds that many ascent steps, each a forward and a backward pass
of the term alone, before each step's loss.

The sources are a `TermState` (`spd.losses.inputs`): built per run by the term's state factory,
saved in every checkpoint with their optimiser's state, and restored bit-exactly on resume.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal, Self

import torch
from jaxtyping import Float
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator
from torch import Tensor

from spd.config.schema import Fraction, LRSchedule, StrictModel
from spd.errors import SPDUserError
from spd.losses.adversarial_sources import SourceInit, source_masks
from spd.losses.inputs import LossInputs
from spd.losses.term import StateContext
from spd.models.module_mask import ModuleMask

ScopeType = Literal["single", "broadcast_across_batch", "repeat_across_batch", "per_position"]
# A term's value at the given source masks (the subset term draws its routes inside).
SourceLoss = Callable[[LossInputs, Mapping[str, ModuleMask]], Tensor]


class PersistentScope(StrictModel):
    """Which positions share a source."""

    type: ScopeType = Field(
        default="single",
        description=(
            "single: one source per module for every position; broadcast_across_batch: one per "
            "position index of a sequence (one for a toy model); repeat_across_batch: n_sources "
            "of those, example i of a micro-batch using source i mod n_sources; per_position: "
            "one per example and position of a rank's micro-batch (not averaged over ranks)"
        ),
    )
    n_sources: PositiveInt | None = Field(
        default=None,
        description="repeat_across_batch only: N, which must divide each rank's micro-batch",
    )

    @model_validator(mode="after")
    def _check_n_sources(self) -> Self:
        if self.type == "repeat_across_batch" and self.n_sources is None:
            raise ValueError("scope repeat_across_batch needs n_sources (N)")
        if self.type != "repeat_across_batch" and self.n_sources is not None:
            raise ValueError(f"scope {self.type} takes no n_sources (only repeat_across_batch)")
        return self

    @property
    def shared(self) -> bool:
        """Whether every rank holds the same sources (initial values from rank 0, gradients
        averaged over ranks): every scope but per_position."""
        return self.type != "per_position"


class _Scheduled(StrictModel):
    """The learning-rate schedule of the sources' optimiser, as `spd.train.schedules` has it."""

    lr_schedule: LRSchedule = Field(
        default="constant", description="constant, linear, cosine or exponential, over the run"
    )
    lr_warmup_pct: Fraction = Field(
        default=0.0, description="Fraction of the run's steps with a linear warm-up from 0"
    )
    lr_exponential_halflife: PositiveFloat | None = Field(
        default=None, description="Half-life in steps of the exponential schedule"
    )

    @model_validator(mode="after")
    def _check_halflife(self) -> Self:
        if self.lr_schedule == "exponential" and self.lr_exponential_halflife is None:
            raise ValueError("lr_schedule exponential needs lr_exponential_halflife (in steps)")
        return self


class SignOptimizer(_Scheduled):
    """Signed ascent: s ← clamp(s + step_size · sign(∂D/∂s), 0, 1)."""

    type: Literal["sign"] = Field(description="sign: signed gradient-ascent steps")
    step_size: PositiveFloat = Field(default=0.1, description="Size of each step (its base lr)")

    @property
    def base_lr(self) -> float:
        """The step size before the schedule."""
        return self.step_size


class AdamOptimizer(_Scheduled):
    """Adam ascent (maximising), then clamping to [0, 1]."""

    type: Literal["adam"] = Field(default="adam", description="adam: Adam on −D")
    lr: PositiveFloat = Field(default=0.1, description="Adam's learning rate (published: 0.1)")
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0, description="Adam's β1 (published: 0.9)")
    beta2: float = Field(default=0.99, ge=0.0, lt=1.0, description="Adam's β2 (published: 0.99)")
    eps: PositiveFloat = Field(default=1e-8, description="Adam's ε")

    @property
    def base_lr(self) -> float:
        """The learning rate before the schedule."""
        return self.lr


SourceOptimizer = Annotated[SignOptimizer | AdamOptimizer, Field(discriminator="type")]


class PersistentPGDParams(StrictModel):
    """Parameters of `persistent_pgd_recon`."""

    optimizer: SourceOptimizer = Field(
        default_factory=AdamOptimizer,
        description=(
            "The sources' optimiser: {type: sign, step_size} or {type: adam, lr, beta1, beta2, "
            "eps}, each with lr_schedule, lr_warmup_pct, lr_exponential_halflife"
        ),
    )
    scope: PersistentScope = Field(
        default_factory=PersistentScope,
        description="{type: single | broadcast_across_batch | repeat_across_batch | per_position, "
        "n_sources: (repeat_across_batch only)}",
    )
    init: SourceInit = Field(
        default="random", description="Initial sources: random (U(0, 1)), ones, or zeroes"
    )
    n_warmup_steps: NonNegativeInt = Field(
        default=0, description="Extra ascent steps (a forward and backward pass each) per step"
    )


def _rows_of(inputs: LossInputs) -> Tensor:
    """Each computed row's index in the micro-batch (the CPU row selection keeps some rows)."""
    if inputs.rows is not None:
        return inputs.rows.index
    return torch.arange(inputs.batch.shape[0], device=inputs.batch.device)


class PersistentSources:
    """A persistent-PGD term's sources (one leaf tensor per module) and their optimiser: a
    `TermState`. The tensors are made on the first `prepare`, from the CI's shapes."""

    def __init__(
        self,
        params: PersistentPGDParams,
        context: StateContext,
        loss: SourceLoss,
    ) -> None:
        scope = params.scope
        rows = context.rank_microbatch_size
        if scope.n_sources is not None and rows % scope.n_sources != 0:
            raise SPDUserError(
                f"loss term '{context.name}': scope repeat_across_batch n_sources "
                f"{scope.n_sources} does not divide the {rows} rows of each rank's micro-batch "
                "(batch_size / gradient_accumulation_steps / ranks); choose a divisor of it"
            )
        if context.coeff == 0:
            raise SPDUserError(
                f"loss term '{context.name}': coeff 0 gives its sources no gradient; give it a "
                "non-zero coeff or leave it out"
            )
        self.params, self.context, self.loss = params, context, loss
        self.sources: dict[str, Tensor] | None = None
        self.adam: torch.optim.Adam | None = None
        # The training step whose update comes next (the schedule's step); saved with the state.
        self.step = 0
        self.warmed = False  # whether this step's warm-up ascent ran

    # --- the sources at a batch ---

    def masks(self, inputs: LossInputs) -> dict[str, ModuleMask]:
        """Each module's masks from the CI and the sources of the computed rows (example i of a
        micro-batch takes source i mod N under repeat_across_batch, source i under per_position)."""
        assert self.sources is not None, "prepare() makes the sources before the first loss"
        kind = self.params.scope.type
        rows = _rows_of(inputs) if kind in ("repeat_across_batch", "per_position") else None
        at_rows: dict[str, Tensor] = {}
        for name, s in self.sources.items():
            if rows is None:
                at_rows[name] = s  # broadcast over the rows (and, single, the positions)
            elif kind == "repeat_across_batch":
                at_rows[name] = s[rows % s.shape[0]]
            else:
                at_rows[name] = s[rows]
        return source_masks(inputs.ci, at_rows)

    def _lead_shape(self, g: Float[Tensor, "rows ... C"]) -> tuple[int, ...]:
        positions = tuple(g.shape[1:-1])
        scope = self.params.scope
        if scope.type == "single":
            return ()
        if scope.type == "broadcast_across_batch":
            return positions
        if scope.type == "repeat_across_batch":
            assert scope.n_sources is not None
            return (scope.n_sources, *positions)
        return (self.context.rank_microbatch_size, *positions)

    def create(self, inputs: LossInputs) -> dict[str, Tensor]:
        """Make the sources, shaped from `inputs`' CI, as `init` says (shared scopes: rank 0's
        values on every rank), and their optimiser."""
        sources: dict[str, Tensor] = {}
        for name, g in inputs.ci.items():
            width = g.shape[-1] + (1 if inputs.use_delta_component else 0)
            shape = (*self._lead_shape(g), width)
            kw: dict[str, Any] = {"dtype": g.dtype, "device": g.device}
            init = self.params.init
            s = (
                torch.rand(shape, **kw)
                if init == "random"
                else torch.full(shape, 1.0 if init == "ones" else 0.0, **kw)
            )
            sources[name] = s.requires_grad_(True)
        if self.params.scope.shared:
            with torch.no_grad():
                self.context.broadcast(list(sources.values()))
        self.sources = sources
        self._make_adam()
        return sources

    def _make_adam(self) -> None:
        opt = self.params.optimizer
        if isinstance(opt, AdamOptimizer) and self.sources is not None:
            self.adam = torch.optim.Adam(
                list(self.sources.values()),
                lr=opt.lr,
                betas=(opt.beta1, opt.beta2),
                eps=opt.eps,
                maximize=True,
                foreach=False,
            )

    # --- the ascent ---

    def _lr(self, step: int) -> float:
        opt = self.params.optimizer
        return self.context.lr_at_step(
            step,
            self.context.steps,
            opt.base_lr,
            opt.lr_schedule,
            opt.lr_warmup_pct,
            opt.lr_exponential_halflife,
        )

    def _ascend(self, grads: list[Tensor], step: int) -> None:
        """One optimiser step up `grads` (averaged over ranks for shared scopes), then clamp."""
        assert self.sources is not None
        if self.params.scope.shared:
            self.context.average(grads)
        lr = self._lr(step)
        sources = list(self.sources.values())
        with torch.no_grad():
            if self.adam is None:
                for s, grad in zip(sources, grads, strict=True):
                    s.add_(grad.sign(), alpha=lr)
            else:
                for s, grad in zip(sources, grads, strict=True):
                    s.grad = grad
                for group in self.adam.param_groups:
                    group["lr"] = lr
                self.adam.step()
            for s in sources:
                s.clamp_(0.0, 1.0)
                s.grad = None

    def _warm_up(self, inputs: LossInputs) -> None:
        """`n_warmup_steps` extra ascent steps on this micro-batch, the CI detached (no graph into
        the model; the model's parameters get no gradient)."""
        assert self.sources is not None
        detached = replace(inputs, ci={name: g.detach() for name, g in inputs.ci.items()})
        share = 1.0 if inputs.rows is None else inputs.rows.share
        sources = list(self.sources.values())
        for _ in range(self.params.n_warmup_steps):
            with torch.enable_grad():
                value = share * self.loss(detached, self.masks(detached))
                grads = torch.autograd.grad(value, sources, allow_unused=True)
            self._ascend(
                [
                    torch.zeros_like(s) if g is None else g
                    for s, g in zip(sources, grads, strict=True)
                ],
                self.step,
            )

    # --- TermState ---

    def prepare(self, inputs: LossInputs) -> None:
        """Make the sources on the first call; on the first micro-batch of a step, run the
        warm-up ascent steps."""
        sources = self.create(inputs) if self.sources is None else self.sources
        device = next(iter(inputs.ci.values())).device
        if next(iter(sources.values())).device != device:
            self._to(device)  # restored from a checkpoint read onto the CPU
        if not self.warmed and self.params.n_warmup_steps > 0:
            self._warm_up(inputs)
        self.warmed = True

    def update(self, step: int) -> None:
        """One ascent step with the gradient the step's backward passes left on the sources
        (coeff · the term's gradient, summed over micro-batches of 1/n each: divided by coeff)."""
        self.warmed = False
        self.step = step + 1
        if self.sources is None:
            return
        grads = [
            torch.zeros_like(s) if s.grad is None else s.grad / self.context.coeff
            for s in self.sources.values()
        ]
        self._ascend(grads, step)

    def state_dict(self) -> dict[str, Any]:
        """Copies of the sources, the Adam state (None for sign steps) and the next step."""
        sources = (
            None
            if self.sources is None
            else {name: s.detach().clone() for name, s in self.sources.items()}
        )
        adam = None if self.adam is None else self.adam.state_dict()
        return {"sources": sources, "adam": adam, "step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict` (the sources on the device they were saved from)."""
        self.step = int(state["step"])
        saved = state["sources"]
        if saved is None:
            self.sources, self.adam = None, None
            return
        self.sources = {name: s.detach().clone().requires_grad_(True) for name, s in saved.items()}
        self._make_adam()
        if self.adam is not None:
            self.adam.load_state_dict(state["adam"])

    def _to(self, device: torch.device) -> None:
        """Move the sources (and Adam's state, which follows them) to `device`."""
        state = self.state_dict()
        state["sources"] = {name: s.to(device) for name, s in state["sources"].items()}
        self.load_state_dict(state)


def persistent_sources(inputs: LossInputs, name: str) -> PersistentSources:
    """Term `name`'s sources from `inputs.states`."""
    state = inputs.states.get(name)
    assert isinstance(state, PersistentSources), f"{name}: no persistent sources in inputs.states"
    return state


def source_floats(
    params: PersistentPGDParams, widths: Sequence[int], positions: int, rows: int
) -> int:
    """Floats a persistent term's sources hold (for the memory estimate): per module of `widths`
    (its C, plus 1 with the delta component), one source per scope slot (`positions` per
    sequence, `rows` per micro-batch), each as value and gradient, and Adam's two moments."""
    scope = params.scope
    slots = {
        "single": 1,
        "broadcast_across_batch": positions,
        "repeat_across_batch": (scope.n_sources or 1) * positions,
        "per_position": rows * positions,
    }[scope.type]
    copies = 4 if isinstance(params.optimizer, AdamOptimizer) else 2
    return copies * slots * sum(widths)
