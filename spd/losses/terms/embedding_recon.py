"""`embedding_recon`: each decomposed embedding, stochastically masked, against the original."""

from collections.abc import Mapping

import torch
from pydantic import Field
from torch import Tensor

from spd.losses.divergence import output_divergence
from spd.losses.inputs import LossInputs
from spd.losses.term import (
    LossTerm,
    Masks,
    SampledParams,
    draw_stochastic_masks,
    register_loss_term,
)
from spd.models.component_model import ComponentModel
from spd.models.components import EmbeddingComponents
from spd.models.module_mask import MaskLike, as_module_mask


class EmbeddingReconParams(SampledParams):
    """Parameters of `embedding_recon`."""

    unembed: bool = Field(
        default=False,
        description=(
            "Compare both embeddings after lm_head, with KL, instead of by squared error "
            "(the flat key is_embed_unembed_recon)"
        ),
    )


def embedding_recon_loss(
    model: ComponentModel,
    pre_acts: Mapping[str, Tensor],
    masks: Mapping[str, MaskLike],
    unembed: bool,
) -> Tensor:
    """Masked embedding output against the original embedding, averaged over decomposed embeddings.

    By default the squared error summed over the embedding dimension, then averaged over tokens
    (as the original implementation: d_emb times a per-entry mean); with `unembed` both are
    passed through the model's `lm_head` and compared with KL. `masks` are the term's own draws
    (with the delta component's masks when the run uses it).
    """
    losses = []
    for name, comp in model.components.items():
        if not isinstance(comp, EmbeddingComponents):
            continue
        tokens = pre_acts[name]
        original = model.decomposed[name].original(tokens)
        masked = model.decomposed[name].masked_forward(tokens, as_module_mask(masks[name]))
        if unembed:
            lm_head = model.target.get_submodule("lm_head")
            losses.append(output_divergence(lm_head(masked), lm_head(original), "kl"))
        else:
            losses.append((masked - original).pow(2).sum(-1).mean())
    if not losses:
        raise ValueError("loss term embedding_recon is configured but no Embedding is decomposed")
    return torch.stack(losses).mean()


def _compute(inputs: LossInputs, params: EmbeddingReconParams, masks: Masks) -> Tensor:
    return embedding_recon_loss(inputs.model, inputs.pre_acts, masks, params.unembed)


# Not a row mean: token inputs are not selected by rows.
TERM = register_loss_term(
    LossTerm("embedding_recon", EmbeddingReconParams, _compute, masks=draw_stochastic_masks)
)
