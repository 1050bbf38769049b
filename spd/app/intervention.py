"""Interventions on a prompt: rerun the component model with chosen nodes ablated (mask 0) or with
only them kept (every other mask 0), and compare the outputs with those under the CI masks.

For a language model each position gets its next-token distribution (top k, with probabilities)
before and after, and the KL from the target model's distribution to each; for a toy model the
output vectors of the target, under the CI masks and after the edit.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from spd.app.attribution import Masks, ci_masks, masked_output
from spd.config.schema import SigmoidType
from spd.errors import SPDUserError
from spd.models.component_model import ComponentModel

Mode = Literal["ablate", "keep"]
NodeKey = tuple[str, int, int]  # (layer name, position, subcomponent)


def edited_masks(masks: Masks, nodes: Sequence[NodeKey], mode: Mode) -> Masks:
    """`masks` with `nodes` set to 0 (`ablate`), or with everything but `nodes` set to 0 (`keep`,
    the kept nodes at their CI). Masks have batch 1; positions index the flattened sequence."""
    if mode not in ("ablate", "keep"):
        raise SPDUserError(f"intervention mode must be 'ablate' or 'keep', got '{mode}'")
    out = {
        name: (m.clone() if mode == "ablate" else torch.zeros_like(m)) for name, m in masks.items()
    }
    for name, position, index in nodes:
        if name not in masks:
            raise SPDUserError(f"no decomposed layer '{name}'; layers: {', '.join(masks)}")
        flat_in, flat_out = (
            masks[name].reshape(-1, masks[name].shape[-1]),
            out[name].view(-1, out[name].shape[-1]),
        )
        if not (0 <= position < flat_in.shape[0] and 0 <= index < flat_in.shape[1]):
            raise SPDUserError(f"node ({name}, {position}, {index}) is outside the prompt or layer")
        flat_out[position, index] = 0.0 if mode == "ablate" else flat_in[position, index]
    return out


@dataclass
class TokenDistributions:
    """Per position: top-k (token id, probability) before and after, and the KL to the target."""

    before: list[list[tuple[int, float]]]
    after: list[list[tuple[int, float]]]
    kl_before: list[float]
    kl_after: list[float]


def _kl(target_logits: Tensor, logits: Tensor) -> Float[Tensor, " seq"]:
    """KL(target ‖ model) per position, in nats."""
    log_p = F.log_softmax(target_logits, dim=-1)
    return (log_p.exp() * (log_p - F.log_softmax(logits, dim=-1))).sum(-1)


def _top(logits: Tensor, k: int) -> list[list[tuple[int, float]]]:
    probs = F.softmax(logits, dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
    return [
        [(int(i), float(p)) for i, p in zip(idx, val, strict=True)]
        for idx, val in zip(probs.indices, probs.values, strict=True)
    ]


def token_intervention(
    model: ComponentModel,
    tokens: Tensor,
    sigmoid_type: SigmoidType,
    nodes: Sequence[NodeKey],
    mode: Mode,
    top_k: int = 5,
) -> TokenDistributions:
    """An LM prompt (1, seq) rerun with `nodes` edited; see the module docstring."""
    masks = ci_masks(model, tokens, sigmoid_type)
    with torch.no_grad():
        target = model(tokens)[0]
    before = masked_output(model, tokens, masks)[0]
    after = masked_output(model, tokens, edited_masks(masks, nodes, mode))[0]
    return TokenDistributions(
        before=_top(before, top_k),
        after=_top(after, top_k),
        kl_before=_kl(target, before).tolist(),
        kl_after=_kl(target, after).tolist(),
    )


@dataclass
class VectorOutputs:
    """A toy model's output vectors: the target's, under the CI masks and after the edit."""

    target: list[float]
    before: list[float]
    after: list[float]


def vector_intervention(
    model: ComponentModel,
    x: Tensor,
    sigmoid_type: SigmoidType,
    nodes: Sequence[NodeKey],
    mode: Mode,
) -> VectorOutputs:
    """A toy input (1, d) rerun with `nodes` edited (position 0)."""
    masks = ci_masks(model, x, sigmoid_type)
    with torch.no_grad():
        target = model(x)[0]
    before = masked_output(model, x, masks)[0]
    after = masked_output(model, x, edited_masks(masks, nodes, mode))[0]
    return VectorOutputs(target.tolist(), before.tolist(), after.tolist())
