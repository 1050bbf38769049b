"""A prompt's attribution graph through the component model under its CI masks.

Nodes are the (layer, position, subcomponent) triples whose CI exceeds a threshold, plus chosen
output logits. The weight of an edge from an earlier node s to a later node t is gradient ×
activation: ∂a_t/∂h_s · h_s, where a_t is t's inner activation (or the logit) and h_s = a_s · m_s
is s's masked inner activation. Because h_s = a_s · m_s and the mask enters nowhere else, this
equals m_s · ∂a_t/∂m_s, which is what is computed: every decomposed layer runs its components
under the CI mask m (held fixed, a leaf of the graph), and one backward pass per target node gives
its edges from every earlier node at once. The targets are the logits and the nodes that
attribute most to them (`max_targets`), so a graph costs a bounded number of backward passes.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor, nn

from spd.config.schema import SigmoidType
from spd.models.component_model import ComponentModel

Masks = dict[str, Float[Tensor, "batch ... C"]]


@dataclass(frozen=True)
class Node:
    """A graph node: a subcomponent at a position (`layer` < number of layers), or an output
    logit (`layer` == number of layers, `index` the vocabulary id or output dimension)."""

    layer: int
    position: int
    index: int
    ci: float
    activation: float


@dataclass
class Graph:
    """Nodes, and edges (source node, target node, attribution) strongest first."""

    layer_names: list[str]
    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[int, int, float]] = field(default_factory=list)


def use_dense_paths(model: ComponentModel) -> None:
    """Make a target that passes its residual stream factored (`LowRankStream`) run it densely,
    so that every decomposed layer goes through its components' `forward`, where the inner
    activations are read (the same sums, only not reassociated)."""
    if hasattr(model.target, "factor_stream"):
        # A plain bool attribute, which nn.Module's __setattr__ stub does not foresee.
        setattr(model.target, "factor_stream", False)  # noqa: B010


def ci_masks(model: ComponentModel, x: Tensor, sigmoid_type: SigmoidType) -> Masks:
    """The mask-side causal importances of every decomposed layer on input `x` (no gradient)."""
    with torch.no_grad():
        _, pre_acts = model.forward_with_pre_acts(x)
        ci, _ = model.causal_importances(pre_acts, sigmoid_type)
    return {name: value.detach() for name, value in ci.items()}


@contextmanager
def recorded_inner_acts(model: ComponentModel) -> Iterator[dict[str, Tensor]]:
    """While active, each decomposed layer's (unmasked) inner activations x @ V of the last
    forward pass, in the autograd graph."""
    recorded: dict[str, Tensor] = {}
    handles = []
    for name, comp in model.components.items():

        def hook(
            module: nn.Module, args: tuple[Tensor, ...], _out: Tensor, name: str = name
        ) -> None:
            recorded[name] = module.inner_acts(args[0])  # pyright: ignore[reportCallIssue]

        handles.append(comp.register_forward_hook(hook))
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def _select_nodes(
    masks: Masks, inner: dict[str, Tensor], names: Sequence[str], threshold: float, max_nodes: int
) -> list[Node]:
    """Nodes above `threshold`, the `max_nodes` of largest |masked activation| if there are more
    (chosen with tensor ops: an untrained CI function can pass millions of positions)."""
    flat_masks = [masks[name].detach().reshape(-1, masks[name].shape[-1]) for name in names]
    flat_acts = [
        inner[name].detach().reshape(m.shape) for name, m in zip(names, flat_masks, strict=True)
    ]
    scores = torch.cat(
        [
            torch.where(m > threshold, (m * a).abs(), -1.0).flatten()
            for m, a in zip(flat_masks, flat_acts, strict=True)
        ]
    )
    best = scores.topk(min(max_nodes, scores.numel()))
    offsets = torch.tensor([0] + [m.numel() for m in flat_masks]).cumsum(0).tolist()
    nodes = []
    for flat_index in best.indices[best.values >= 0].tolist():
        layer = max(i for i in range(len(names)) if offsets[i] <= flat_index)
        position, index = divmod(flat_index - offsets[layer], flat_masks[layer].shape[1])
        nodes.append(
            Node(
                layer,
                position,
                index,
                float(flat_masks[layer][position, index]),
                float(flat_acts[layer][position, index]),
            )
        )
    return sorted(nodes, key=lambda n: (n.layer, n.position))


def _edges_into(
    t: int, scalar: Tensor, nodes: Sequence[Node], names: Sequence[str], masks: Masks
) -> list[tuple[int, int, float]]:
    """The nonzero edges from every earlier node into node `t`, whose value is `scalar`: one
    backward pass."""
    sources = [s for s, node in enumerate(nodes) if node.layer < nodes[t].layer]
    needed = sorted({nodes[s].layer for s in sources})
    if not sources:
        return []
    grads = torch.autograd.grad(
        scalar, [masks[names[layer]] for layer in needed], retain_graph=True, allow_unused=True
    )
    by_layer = dict(zip(needed, grads, strict=True))
    edges = []
    for s in sources:
        source, grad = nodes[s], by_layer[nodes[s].layer]
        if grad is not None:
            weight = (
                float(grad.reshape(-1, grad.shape[-1])[source.position, source.index]) * source.ci
            )
            if weight != 0.0:
                edges.append((s, t, weight))
    return edges


def attribution_graph(
    model: ComponentModel,
    x: Tensor,
    sigmoid_type: SigmoidType,
    logit_targets: Sequence[tuple[int, int]],
    threshold: float = 0.1,
    max_nodes: int = 200,
    max_targets: int = 30,
) -> Graph:
    """The graph of one input `x` (batch 1: token ids (1, seq) for an LM, a vector (1, d) for a
    toy). `logit_targets` are (position, output index) pairs; a toy's position is 0.

    Every node is a source; the edges into the logits are computed first, then the edges into
    the `max_targets` subcomponent nodes of largest total |attribution| to the logits (one
    backward pass each, which is what a graph costs)."""
    names = list(model.module_names)
    masks = {
        name: m.clone().requires_grad_(True) for name, m in ci_masks(model, x, sigmoid_type).items()
    }
    with recorded_inner_acts(model) as inner:
        out = model.forward_with_components(x, masks)
    flat_out = out.reshape(-1, out.shape[-1])
    nodes = _select_nodes(masks, inner, names, threshold, max_nodes)
    first_logit = len(nodes)
    nodes += [
        Node(len(names), pos, idx, 1.0, float(flat_out[pos, idx].detach()))
        for pos, idx in logit_targets
    ]
    graph = Graph(names, nodes)
    for t in range(first_logit, len(nodes)):
        graph.edges += _edges_into(
            t, flat_out[nodes[t].position, nodes[t].index], nodes, names, masks
        )
    to_logits: dict[int, float] = {}
    for s, _, weight in graph.edges:
        to_logits[s] = to_logits.get(s, 0.0) + abs(weight)
    targets = sorted((t for t in to_logits if nodes[t].layer > 0), key=lambda t: -to_logits[t])[
        :max_targets
    ]
    for t in targets:
        name = names[nodes[t].layer]
        flat_inner = inner[name].reshape(-1, model.module_C[name])
        graph.edges += _edges_into(
            t, flat_inner[nodes[t].position, nodes[t].index], nodes, names, masks
        )
    graph.edges.sort(key=lambda e: -abs(e[2]))
    return graph


def masked_output(
    model: ComponentModel, x: Tensor, masks: Masks
) -> Float[Tensor, "batch ... d_out"]:
    """The component model's output with every decomposed layer under `masks` (no gradient)."""
    with torch.no_grad():
        return model.forward_with_components(x, masks)
