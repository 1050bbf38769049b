"""`compile: auto | on | off`: the training step's weighted loss through `torch.compile`.

One function is compiled, from outside the loss code: `spd.losses.total.total_loss` (the masks,
every reconstruction pass and every loss term of a micro-batch; AOTAutograd compiles its backward
with it). `MicroStep` runs the same two calls as `spd.losses.batch.batch_loss`, with `total_loss`
compiled: `loss_inputs` (the target pass, the CPU row selection and the causal importances)
stays eager. The target pass and the row selection run without gradients, and the selection's
data-dependent row count and its one-time `independent_rows_checked` check belong outside a
graph; the causal importances' kernel (`spd.models.scalar_mlp`) is already fused by hand, and its
search for all-zero rows (`nonzero`, a data-dependent size) would split the compiled region into
a dozen graphs (measured: 16 graphs and minutes of compilation for tms_5-2, against 2 this way).
On CUDA the compiled step is also replayed as a CUDA graph (`triton.cudagraphs`).

Random masks are drawn by torch's own generator (`fallback_random`), so a compiled run draws the
same masks as an eager one and the two agree to rounding.

Recompiles stay bounded: the CPU row selection keeps a different number of rows every step, so
on the CPU the row dimension of every input is marked dynamic before the first call and one graph
serves every row count. (Left to dynamo's automatic dynamic shapes, the first call would be
compiled for its row count and the second compiled again with the dimension dynamic.) The
configured terms are built once (`MicroStep.terms`), so the graph's guards on them hold from step
to step. CUDA has no row selection, so its sizes are fixed.

Whether a run compiles is `spd.train.compile_choice.compile_wanted`: `on`, `off`, or under
`auto` only where a measured case repays its compile time within the run's steps.

`on` falls back to eager, with one line saying why, when compilation fails at the first call
(no C++ compiler, an unsupported platform, a dynamo or inductor error).
"""

import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch._dynamo.exc import TorchDynamoException
from torch._inductor.exc import CppCompileError

from spd.config.schema import Config
from spd.losses.batch import BatchLoss, prepare_states
from spd.losses.inputs import LossInputs, TermState, loss_inputs
from spd.losses.precision import check_autocast, forward_autocast
from spd.losses.total import ConfiguredTerm, configured_terms, total_loss
from spd.models.component_model import ComponentModel
from spd.models.low_rank_stream import shared_products
from spd.train import distributed
from spd.train.compile_choice import compile_wanted

# What a failed compilation raises at the first call: dynamo wraps backend errors in a
# TorchDynamoException; a C++ build of the backward graph may raise its own error.
COMPILE_ERRORS = (TorchDynamoException, CppCompileError)

TotalLoss = Callable[[LossInputs, Sequence[ConfiguredTerm]], tuple[Tensor, dict[str, Tensor]]]


def _announce(message: str) -> None:
    if distributed.rank_info().is_main:
        print(f"spd: compile: {message}", flush=True)


def _rng_states(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_states(states: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)


def _rows_dynamic(total: TotalLoss) -> TotalLoss:
    """`total`, told that the row dimension of its inputs varies (the CPU row selection keeps a
    different number of rows every step): compiled once for any row count, not first for one."""

    def marked(
        inputs: LossInputs, terms: Sequence[ConfiguredTerm]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        rows = [inputs.batch, inputs.target_out, *inputs.pre_acts.values()]
        for t in [*rows, *inputs.ci.values(), *inputs.ci_upper.values()]:
            torch._dynamo.maybe_mark_dynamic(t, 0)
        if inputs.rows is not None:
            torch._dynamo.maybe_mark_dynamic(inputs.rows.index, 0)
            torch._dynamo.maybe_mark_dynamic(inputs.rows.weights, 0)
        return total(inputs, terms)

    return marked


class MicroStep:
    """Loss and backward of one micro-batch: `spd.losses.batch.batch_loss`, with `total_loss`
    compiled or eager.

    The first compiled call compiles (forward and backward); its time is printed once. If that
    compilation fails, the line says why, the random state is put back and the micro-batch is run
    eagerly, so the run goes on exactly as an eager one would.
    """

    def __init__(self, config: Config, device: torch.device) -> None:
        self.device = device
        if config.autocast_bf16:
            check_autocast(device)
        # Built once: the compiled graph guards on these objects, so the same ones every step.
        self.terms = configured_terms(config)
        self.compiled: TotalLoss | None = None
        self._first = True
        stateful = [c.term.name for c in self.terms if c.term.state is not None]
        if compile_wanted(config, device.type) and stateful:
            # Their tensors are replaced and updated between steps, outside any graph.
            _announce(
                f"the term(s) {', '.join(stateful)} keep state between steps; training eagerly"
            )
        elif compile_wanted(config, device.type):
            cuda = device.type == "cuda"
            compiled = torch.compile(
                total_loss, options={"fallback_random": True, "triton.cudagraphs": cuda}
            )
            # Only the CPU selects rows; CUDA's sizes are fixed.
            self.compiled = compiled if cuda else _rows_dynamic(compiled)

    def __call__(
        self,
        model: ComponentModel,
        batch: Tensor,
        config: Config,
        pnorm: float,
        n_micro: int,
        term_states: Mapping[str, TermState] | None = None,
    ) -> BatchLoss:
        """`batch_loss` of `batch` with the stateful terms' `term_states`, its total / `n_micro`
        backpropagated."""
        kept = term_states or {}
        if self.compiled is None:
            return self._run(model, batch, config, pnorm, n_micro, total_loss, kept)
        if not self._first:
            return self._run(model, batch, config, pnorm, n_micro, self.compiled, kept)
        self._first = False
        states = _rng_states(self.device)
        t0 = time.perf_counter()
        try:
            result = self._run(model, batch, config, pnorm, n_micro, self.compiled, kept)
        except COMPILE_ERRORS as err:
            # Nothing was accumulated: the first call is the first micro-batch after zero_grad.
            model.zero_grad(set_to_none=True)
            _set_rng_states(states, self.device)
            self.compiled = None
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            _announce(
                f"compilation is not available here ({type(err).__name__}: {reason[:200]}); "
                "training eagerly. Set `compile: off` in the config to skip the attempt"
            )
            return self._run(model, batch, config, pnorm, n_micro, total_loss, kept)
        _announce(f"compiled the training step in {time.perf_counter() - t0:.1f} s")
        return result

    def _run(
        self,
        model: ComponentModel,
        batch: Tensor,
        config: Config,
        pnorm: float,
        n_micro: int,
        total: TotalLoss,
        term_states: Mapping[str, TermState],
    ) -> BatchLoss:
        compiled_cuda = total is not total_loss and self.device.type == "cuda"
        if compiled_cuda:
            # A CUDA-graph replay reuses its output buffers: mark each micro-batch as a new step
            # and keep copies of the (scalar) terms, which the step sums across micro-batches.
            torch.compiler.cudagraph_mark_step_begin()
        # `spd.losses.batch.batch_loss`, with `total` for `total_loss`.
        with shared_products(), forward_autocast(config.autocast_bf16, self.device):
            inputs = loss_inputs(model, batch, config, pnorm, term_states)
            prepare_states(inputs)
            value, terms = total(inputs, self.terms)
        (value / n_micro).backward()
        if compiled_cuda:
            terms = {name: t.clone() for name, t in terms.items()}
        return BatchLoss(total=value, terms=terms, ci=dict(inputs.ci), rows=inputs.rows)
