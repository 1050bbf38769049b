"""Which vocabulary tokens a subcomponent's read and write directions align with.

For the input embedding, subcomponent c reads token t with weight V[t, c] and writes U[c] into the
residual stream; for the unembedding (the output embedding), it reads V[:, c] from the residual
stream and writes U[c, t] to the logit of token t. A direction in the residual stream is turned
into token scores with the model's own matrices: a write direction through the unembedding (the
logits it adds directly), a read direction through the input embedding (how strongly each token's
embedding drives it). Other layers whose input or output has the residual width get the same
direct-path scores, which ignore every layer in between.
"""

import numpy as np
import torch
from torch import Tensor, nn

from spd.models.component_model import ComponentModel
from spd.models.components import EmbeddingComponents


def _embedding_matrix(module: object) -> Tensor | None:
    """The (vocab, d) weight of an input or output embedding, looking through a decomposed wrapper."""
    original = getattr(module, "original", module)
    weight = getattr(original, "weight", None)
    return weight.detach() if isinstance(weight, Tensor) and weight.ndim == 2 else None


def aligned_tokens(model: ComponentModel, name: str, n_tokens: int = 20) -> dict[str, np.ndarray]:
    """`read_token_ids`/`read_token_scores` and `write_token_ids`/`write_token_scores` (C, n) of one
    layer, for whichever of its two sides meets the vocabulary; empty for a model without
    input/output embeddings or a layer that does not touch the residual width."""
    target = model.target
    get_in = getattr(target, "get_input_embeddings", None)
    get_out = getattr(target, "get_output_embeddings", None)
    embed_module = get_in() if callable(get_in) else None
    unembed_module = get_out() if callable(get_out) else None
    w_in = _embedding_matrix(embed_module)
    w_out = _embedding_matrix(unembed_module)
    comp = model.components[name]
    wrapper = model.decomposed[name]
    V, U = comp.V.detach(), comp.U.detach()  # (d_in, C), (C, d_out)
    scores: dict[str, Tensor] = {}
    with torch.no_grad():
        if isinstance(comp, EmbeddingComponents):
            scores["read"] = V.T
        elif w_in is not None and comp.d_in == w_in.shape[1]:
            scores["read"] = (w_in @ V).T
        if wrapper is unembed_module or (
            isinstance(unembed_module, nn.Module)
            and wrapper is getattr(unembed_module, "original", None)
        ):
            scores["write"] = U
        elif w_out is not None and comp.d_out == w_out.shape[1]:
            scores["write"] = U @ w_out.T
    out: dict[str, np.ndarray] = {}
    for side, values in scores.items():
        top = values.float().cpu().topk(min(n_tokens, values.shape[1]), dim=1)
        out[f"{side}_token_ids"] = top.indices.numpy()
        out[f"{side}_token_scores"] = top.values.numpy()
    return out
