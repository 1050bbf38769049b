"""`compile: auto | on | off`: the training step's loss computation through `torch.compile`.

What is compiled (AOTAutograd compiles the backward with it):
- on CUDA, `spd.losses.terms.loss_on_rows`: the causal importances, the masks, every
  reconstruction pass and every loss term of a micro-batch, as one graph. The step there is bound
  by kernel launches, so the compiled step is also replayed as a CUDA graph (`triton.cudagraphs`,
  what `mode="reduce-overhead"` turns on);
- on the CPU, `spd.losses.terms.total_loss`: the masks, the reconstruction passes and the loss
  terms. The causal importances stay eager: their kernel (`spd.models.scalar_mlp`) is already
  fused by hand, and its search for all-zero rows (`nonzero`, a data-dependent size) would split
  the compiled region into a dozen graphs, each compiled again for dynamic sizes (measured:
  16 graphs and minutes of compilation for tms_5-2, against 2 graphs this way).
The target pass and the CPU row selection (`spd.losses.row_selection`) stay eager everywhere:
they run without gradients, and the selection's data-dependent row count and its one-time
`independent_rows_checked` check belong outside a graph.

Random masks are drawn by torch's own generator (`fallback_random`), so a compiled run draws the
same masks as an eager one and the two agree to rounding.

Recompiles stay bounded: the CPU row selection keeps a different number of rows every step, so
on the CPU the row dimension of every input is marked dynamic before the first call and one graph
serves every row count. (Left to dynamo's automatic dynamic shapes, the first call would be
compiled for its row count and the second compiled again with the dimension dynamic.) CUDA has no
row selection, so its sizes are fixed. Measured (`TORCH_LOGS=recompiles`, tms_5-2 at batch 64,
200 steps): one graph, no recompile.

`auto` compiles nowhere yet. On the project's 2-core CPU compiled and eager steps were equal
within the machine's noise (docs/benchmarks.md, "Compilation": tms_5-2 61–74 against 68 steps/s
eager, resid_mlp1 11.8 against 11.6, tms_40-10 equal; a loaded machine, 1 thread), after
20–90 s of compilation and with more memory: the CPU step's kernels are already few and large,
the row selection leaves inductor with dynamic-shape kernels, and what compilation removes
(Python and dispatcher overhead) is a small part of a CPU step. On CUDA, where the step is bound
by kernel launches and compilation should pay most, the compiled path (with CUDA graphs) has not
yet run on a GPU, so a default run does not depend on it: `compile: on` opts in.

`on` falls back to eager, with one line saying why, when compilation fails at the first call
(no C++ compiler, an unsupported platform, a dynamo or inductor error).
"""

import functools
import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch._dynamo.exc import TorchDynamoException
from torch._inductor.exc import CppCompileError

from spd.config.schema import CompileMode, Config
from spd.losses.row_selection import RowSelection
from spd.losses.terms import BatchLoss, LossInputs, batch_loss, loss_on_rows, total_loss
from spd.models.component_model import ComponentModel
from spd.models.low_rank_stream import LowRankStream
from spd.train import distributed

# What a failed compilation raises at the first call: dynamo wraps backend errors in a
# TorchDynamoException; a C++ build of the backward graph may raise its own error.
COMPILE_ERRORS = (TorchDynamoException, CppCompileError)

OnRows = Callable[
    [
        ComponentModel,
        Tensor,
        Tensor,
        Mapping[str, Tensor],
        Mapping[str, LowRankStream],
        RowSelection | None,
        Config,
        float,
        Mapping[str, float],
    ],
    BatchLoss,
]


def compile_wanted(mode: CompileMode) -> bool:
    """Whether `mode` compiles: only `on`, for now (`auto` is eager on every device until
    compilation is measured to pay on one; see the module doc)."""
    return mode == "on"


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


TotalLoss = Callable[[LossInputs, Mapping[str, float]], tuple[Tensor, dict[str, Tensor]]]


def _rows_dynamic(total: TotalLoss) -> TotalLoss:
    """`total`, told that the row dimension of its inputs varies (the CPU row selection keeps a
    different number of rows every step): compiled once for any row count, not first for one."""

    def marked(inputs: LossInputs, coeffs: Mapping[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
        rows = [inputs.batch, inputs.target_out, *inputs.pre_acts.values()]
        for t in [*rows, *inputs.ci.values(), *inputs.ci_upper.values()]:
            torch._dynamo.maybe_mark_dynamic(t, 0)
        if inputs.rows is not None:
            torch._dynamo.maybe_mark_dynamic(inputs.rows.index, 0)
            torch._dynamo.maybe_mark_dynamic(inputs.rows.weights, 0)
        return total(inputs, coeffs)

    return marked


class MicroStep:
    """Loss and backward of one micro-batch: `batch_loss` with `loss_on_rows` compiled or eager.

    The first compiled call compiles (forward and backward); its time is printed once. If that
    compilation fails, the line says why, the random state is put back and the micro-batch is run
    eagerly, so the run goes on exactly as an eager one would.
    """

    def __init__(self, mode: CompileMode, device: torch.device) -> None:
        self.device = device
        self.compiled: OnRows | None = None
        self._first = True
        if compile_wanted(mode):
            if device.type == "cuda":
                self.compiled = torch.compile(
                    loss_on_rows, options={"fallback_random": True, "triton.cudagraphs": True}
                )
            else:
                total = torch.compile(total_loss, options={"fallback_random": True})
                self.compiled = functools.partial(loss_on_rows, total=_rows_dynamic(total))

    def __call__(
        self, model: ComponentModel, batch: Tensor, config: Config, pnorm: float, n_micro: int
    ) -> BatchLoss:
        """`batch_loss` of `batch`, with its total / `n_micro` backpropagated."""
        if self.compiled is None:
            return self._run(model, batch, config, pnorm, n_micro, loss_on_rows)
        if not self._first:
            return self._run(model, batch, config, pnorm, n_micro, self.compiled)
        self._first = False
        states = _rng_states(self.device)
        t0 = time.perf_counter()
        try:
            result = self._run(model, batch, config, pnorm, n_micro, self.compiled)
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
            return self._run(model, batch, config, pnorm, n_micro, loss_on_rows)
        _announce(f"compiled the training step in {time.perf_counter() - t0:.1f} s")
        return result

    def _run(
        self,
        model: ComponentModel,
        batch: Tensor,
        config: Config,
        pnorm: float,
        n_micro: int,
        on_rows: OnRows,
    ) -> BatchLoss:
        if on_rows is not loss_on_rows and self.device.type == "cuda":
            # A CUDA-graph replay reuses its output buffers: mark each micro-batch as a new step
            # and keep copies of the (scalar) terms, which the step sums across micro-batches.
            torch.compiler.cudagraph_mark_step_begin()
        result = batch_loss(model, batch, config, pnorm, on_rows=on_rows)
        (result.total / n_micro).backward()
        if on_rows is not loss_on_rows and self.device.type == "cuda":
            result.terms = {name: value.clone() for name, value in result.terms.items()}
        return result
