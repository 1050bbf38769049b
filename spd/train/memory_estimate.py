"""An estimate of a run's peak memory, checked against the machine before a run directory exists.

The estimate has two parts:

- the *baseline*: what the process holds already when the check runs (interpreter, torch, the
  target and the data pipeline), measured, not modelled: the resident set size on the CPU, the
  memory torch has allocated on a GPU;
- the *step*: what one training step adds, modelled from the config and the target's shapes.
  Trainable parameters count four times (value, gradient, AdamW's two moments); persistent PGD
  sources twice (value, gradient), four times under Adam, and each such term adds one pass. Activations are
  counted per row of a micro-batch (per token for a language model): what the CI functions keep
  (as their type declares, `spd.models.ci_fns`), and, for every forward pass that builds a graph
  (each stochastic mask sample, each layer-wise pass, each fresh PGD term's final pass and the
  one ascent step whose graph is alive at a time: `pgd_passes`), the outputs of every linear layer of the
  target, its attention probabilities, and the output the loss compares (twice more for a KL
  loss: the log-softmaxes). With `use_delta_component`, each such pass also forms, per decomposed
  matrix, Δ = W − V U (d_in × d_out, kept for the backward pass, and its gradient: not per row, so
  outside the overhead factor; an embedding forms only its tokens' rows) and, per row, Δ x and the
  delta mask m_Δ (d_out + 1 elements).
  `ACTIVATION_OVERHEAD` covers what autograd keeps besides those (masks, norms, element-wise
  intermediates); it was fitted on tms_5-2, resid_mlp1 and the offline LM example (docs/memory.md,
  measured with scripts/measure_memory.py). On the CPU a fixed `CPU_RUNTIME_BYTES` is added.

On the CPU, a target with `independent_rows` trains on its live rows only
(`spd/losses/row_selection.py`); the estimate counts the rows such a batch is expected to keep.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.losses.adversarial_sources import PGDParams
from spd.losses.persistent_pgd import PersistentPGDParams, source_floats
from spd.losses.row_selection import LIVE_ROW_SHARE_MAX
from spd.losses.term import SampledParams
from spd.models.ci_fns.base import LayerShape, ci_function_type
from spd.models.component_model import config_module_C

FLOAT_BYTES = 4
# Optimiser-side copies of each trainable parameter: value, gradient, AdamW's exp_avg, exp_avg_sq.
PARAMETER_COPIES = 4
# What autograd stores per modelled activation element, beyond the element itself (fitted).
ACTIVATION_OVERHEAD = 2.2
# What the first backward pass and optimiser step add to a CPU process whatever the run (autograd
# engine, kernel libraries loaded on first use): about 100 MiB, measured with a 1-step tms_5-2 run.
CPU_RUNTIME_BYTES = 100 * 2**20
# Share of the available memory a run may plan to use; the rest is the allocator's and the OS's.
USABLE_SHARE = 0.9
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """A run's expected peak memory in bytes on `device_type` ('cpu' or 'cuda')."""

    device_type: str
    baseline_bytes: int
    step_bytes: int

    @property
    def peak_bytes(self) -> int:
        return self.baseline_bytes + self.step_bytes

    def describe(self) -> str:
        return (
            f"estimated peak memory {self.peak_bytes / GIB:.2f} GiB on {self.device_type} "
            f"({self.baseline_bytes / GIB:.2f} GiB already in use + {self.step_bytes / GIB:.2f} "
            "GiB for a training step)"
        )


def _shape(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a decomposable module: nn.Linear, nn.Embedding or GPT-2's Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    weight = getattr(module, "weight", None)
    assert isinstance(weight, torch.Tensor), "match_module_names admits only modules with weights"
    return int(weight.shape[0]), int(weight.shape[1])


def _layer_outputs_per_row(target: nn.Module) -> int:
    """Elements one row produces across the target's linear and embedding layers."""
    total = 0
    for module in target.modules():
        if isinstance(module, nn.Linear | nn.Embedding) or type(module).__name__ == "Conv1D":
            total += _shape(module)[1]
    return total


def _output_width(target: nn.Module) -> int:
    """Width of the target's output (the vocabulary of a language model)."""
    model_config = getattr(target, "config", None)
    vocab = getattr(model_config, "vocab_size", None)
    if isinstance(vocab, int):
        return vocab
    widths = [
        _shape(m)[1]
        for m in target.modules()
        if isinstance(m, nn.Linear | nn.Embedding) or type(m).__name__ == "Conv1D"
    ]
    return widths[-1] if widths else 1


def _attention_per_token(target: nn.Module, seq_len: int) -> int:
    """Attention probabilities one token keeps per forward pass (layers x heads x positions)."""
    model_config = getattr(target, "config", None)
    layers = getattr(model_config, "num_hidden_layers", None)
    heads = getattr(model_config, "num_attention_heads", None)
    if not isinstance(layers, int) or not isinstance(heads, int):
        return 0
    return layers * heads * seq_len


def _expected_row_share(config: Config, target: nn.Module, device: torch.device) -> float:
    """The share of a batch's rows a training step computes on (see row_selection.py)."""
    task = config.task_config
    if device.type != "cpu" or not getattr(target, "independent_rows", False):
        return 1.0
    probability = getattr(task, "feature_probability", None)
    n_features = _output_width(target)
    if not isinstance(probability, float):
        return 1.0
    live = 1.0 - (1.0 - probability) ** n_features
    return live if live <= LIVE_ROW_SHARE_MAX else 1.0


@dataclass(frozen=True)
class PGDPasses:
    """The masked passes the fresh PGD terms (`pgd_recon*`) add to one micro-batch."""

    final: int  # passes at the final sources, kept for the training backward
    ascent: int  # ascent passes, each a forward and a backward pass (graph freed after each step)
    ascent_at_once: int  # ascent passes whose graphs are alive together (one step's)


def pgd_passes(config: Config, n_layers: int) -> PGDPasses:
    """Per micro-batch and PGD term: n_mask_samples × (n_steps ascent passes + 1 final pass),
    each pass L passes (one per layer) for pgd_recon_layerwise."""
    final = ascent = at_once = 0
    for name in config.loss_coeffs:
        params = config.loss_params(name)
        if not isinstance(params, PGDParams):
            continue
        per_pass = n_layers if name == "pgd_recon_layerwise" else 1
        final += params.n_mask_samples * per_pass
        ascent += params.n_mask_samples * params.n_steps * per_pass
        at_once = max(at_once, per_pass)
    return PGDPasses(final, ascent, at_once)


def microbatch_forward_passes(config: Config, n_layers: int) -> int:
    """Forward passes of one micro-batch (modelled as `_graph_passes` does): the target pass, the
    masked passes of the loss terms, and every PGD ascent pass."""
    pgd = pgd_passes(config, n_layers)
    return 1 + _graph_passes(config, n_layers) - pgd.ascent_at_once + pgd.ascent


def describe_pgd_cost(config: Config, n_layers: int) -> str | None:
    """The start-up line on what the PGD terms cost per micro-batch; None without them."""
    pgd = pgd_passes(config, n_layers)
    if not pgd.ascent:
        return None
    passes = microbatch_forward_passes(config, n_layers)
    return (
        f"adversarial (PGD) terms: each micro-batch takes {passes} forward passes, {pgd.ascent} "
        f"of them PGD ascent steps with a backward pass each "
        f"({config.gradient_accumulation_steps} micro-batch(es) per step)"
    )


def _graph_passes(config: Config, n_layers: int) -> int:
    """Forward passes of a step that build a graph: each mask sample (with a layer-wise pass per
    layer when stochastic_recon_layerwise is on), the CI-masked passes, and the PGD terms' final
    passes plus the ascent passes alive at once (`pgd_passes`)."""
    coeffs = config.loss_coeffs
    samples = max(
        (
            params.n_mask_samples
            for params in map(config.loss_params, coeffs)
            if isinstance(params, SampledParams) and not isinstance(params, PGDParams)
        ),
        default=1,
    )
    layerwise = n_layers if "stochastic_recon_layerwise" in coeffs else 0
    passes = samples * (1 + layerwise)
    passes += 1 if "recon" in coeffs else 0
    pgd = pgd_passes(config, n_layers)
    passes += pgd.final + pgd.ascent_at_once
    # Each persistent PGD term: one masked pass (its warm-up ascent passes end before the loss).
    passes += sum(isinstance(config.loss_params(name), PersistentPGDParams) for name in coeffs)
    return passes + (n_layers if "recon_layerwise" in coeffs else 0)


def _delta_elements(layers: dict[str, LayerShape], use_delta: bool) -> tuple[int, int]:
    """(per graph pass, per row of one pass): what the delta component adds, where it is on."""
    if not use_delta:
        return 0, 0
    matrices = sum(2 * s.d_in * s.d_out for s in layers.values() if not s.token_input)
    return matrices, sum(s.d_out + 1 for s in layers.values())


def _persistent_source_floats(config: Config, layers: dict[str, LayerShape], seq_len: int) -> int:
    """The persistent PGD terms' sources with their gradients and optimiser state."""
    widths = [s.C + (1 if config.use_delta_component else 0) for s in layers.values()]
    return sum(
        source_floats(params, widths, seq_len, config.microbatch_size)
        for params in map(config.loss_params, config.loss_coeffs)
        if isinstance(params, PersistentPGDParams)
    )


def step_bytes(config: Config, target: nn.Module, device: torch.device) -> int:
    """Memory one training step of `config` on `target` adds to the process (see module doc)."""
    module_C = config_module_C(target, config)
    modules = dict(target.named_modules())
    layers = {
        name: LayerShape(*_shape(modules[name]), C, isinstance(modules[name], nn.Embedding))
        for name, C in module_C.items()
    }
    ci_type = ci_function_type(config.ci_fn_type)
    ci_params = ci_type.params_model.model_validate(config.ci_fn_params)
    hidden = config.ci_fn_hidden_dims
    parameters = sum(s.C * (s.d_in + s.d_out) for s in layers.values())
    parameters += ci_type.parameter_count(layers, hidden, ci_params)

    seq_len = config.task_config.sequence_length
    ci_units = ci_type.activation_elements(layers, hidden, ci_params, seq_len=seq_len)
    graph_passes = _graph_passes(config, len(layers))
    output = _output_width(target)
    delta_per_pass, delta_per_row = _delta_elements(layers, config.use_delta_component)
    per_pass = (
        _layer_outputs_per_row(target)
        + sum(s.d_in + s.C + s.d_out for s in layers.values())
        + delta_per_row
        + _attention_per_token(target, seq_len)
        + output * (3 if config.output_loss_type == "kl" else 1)
    )
    per_row = seq_len * (ci_units + graph_passes * per_pass)
    rows = config.microbatch_size * _expected_row_share(config, target, device)
    eval_rows = config.eval_batch_size
    # Evaluation runs without a graph; its largest tensors are a few copies of the output.
    eval_per_row = seq_len * (_layer_outputs_per_row(target) + 4 * output + ci_units)
    train = rows * per_row * ACTIVATION_OVERHEAD + graph_passes * delta_per_pass
    activations = max(train, eval_rows * eval_per_row)
    runtime = CPU_RUNTIME_BYTES if device.type == "cpu" else 0
    sources = _persistent_source_floats(config, layers, seq_len)
    return int(FLOAT_BYTES * (PARAMETER_COPIES * parameters + sources + activations)) + runtime


def _process_rss_bytes() -> int:
    """This process's resident set size, from /proc on Linux; 0 where that does not exist."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return 0
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def available_bytes(device: torch.device) -> int | None:
    """Memory a run may still take on `device`: free GPU memory, or the machine's available RAM
    (MemAvailable, i.e. free plus reclaimable caches). None when it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def estimate_peak_memory(config: Config, target: nn.Module, device: torch.device) -> MemoryEstimate:
    """The run's expected peak: what the process holds now plus one training step."""
    if device.type == "cuda":
        baseline = int(torch.cuda.memory_allocated(device))
    else:
        baseline = _process_rss_bytes()
    return MemoryEstimate(device.type, baseline, step_bytes(config, target, device))


def check_memory(estimate: MemoryEstimate, device: torch.device, announce: bool = True) -> None:
    """Print the estimate and raise `SPDUserError` when the step cannot fit in what is available."""
    if announce:
        print(f"spd: {estimate.describe()}", flush=True)
    available = available_bytes(device)
    if available is None or estimate.step_bytes <= USABLE_SHARE * available:
        return
    raise SPDUserError(
        f"the run does not fit in memory: a training step needs about "
        f"{estimate.step_bytes / GIB:.2f} GiB but {available / GIB:.2f} GiB is available on "
        f"{device.type}; lower batch_size / eval_batch_size, or raise gradient_accumulation_steps "
        "(the step then holds batch_size / gradient_accumulation_steps rows), or lower C"
    )
