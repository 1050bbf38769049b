"""The loss terms of SPD (docs/method.md, 'Losses') and their weighted sum.

Every term is a function of the component model, the batch, the target's output and the causal
importances of this step; a term whose coefficient is null is never computed.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from spd.config.schema import Config, OutputLossType
from spd.losses.row_selection import RowSelection, check_independent_rows, select_rows
from spd.models.component_model import ComponentModel
from spd.models.components import EmbeddingComponents

IMPORTANCE_EPS = 1e-12


def output_divergence(pred: Tensor, target: Tensor, loss_type: OutputLossType) -> Tensor:
    """`mse`: mean over all elements. `kl`: KL(target ‖ pred) over the last axis, mean over the rest."""
    if loss_type == "mse":
        return F.mse_loss(pred, target)
    log_p_target = F.log_softmax(target, dim=-1)
    log_p_pred = F.log_softmax(pred, dim=-1)
    kl = (log_p_target.exp() * (log_p_target - log_p_pred)).sum(-1)
    return kl.mean()


def stochastic_masks(ci: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """m = g + (1 − g) ⊙ r with r ~ U(0, 1), drawn per example (and position) and subcomponent."""
    return {name: torch.addcmul(g, 1 - g, torch.rand_like(g)) for name, g in ci.items()}


def faithfulness_loss(model: ComponentModel) -> Tensor:
    """Σ_l ‖W^l − U^l V^l‖²_F divided by the number of entries of all decomposed matrices."""
    squared_errors = []
    n_entries = 0
    for name, comp in model.components.items():
        diff = model.target_weight(name) - comp.weight
        squared_errors.append(diff.pow(2).sum())
        n_entries += diff.numel()
    return torch.stack(squared_errors).sum() / n_entries


def recon_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    masks: Mapping[str, Tensor | None],
    loss_type: OutputLossType,
) -> Tensor:
    """Divergence of the model with every layer in `masks` replaced, from the target output."""
    return output_divergence(model.forward_with_components(batch, masks), target_out, loss_type)


def layerwise_recon_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    masks: Mapping[str, Tensor],
    loss_type: OutputLossType,
) -> Tensor:
    """Mean over layers l of the divergence with only layer l replaced."""
    losses = [
        recon_loss(model, batch, target_out, {name: mask}, loss_type)
        for name, mask in masks.items()
    ]
    return torch.stack(losses).mean()


def _example_mean(per_example: Tensor, rows: RowSelection | None) -> Tensor:
    return per_example.mean() if rows is None else rows.mean(per_example)


def importance_minimality_loss(
    ci_upper: Mapping[str, Float[Tensor, "... C"]],
    pnorm: float,
    rows: RowSelection | None = None,
) -> Tensor:
    """Mean over examples (and positions) of Σ_l Σ_c (g_upper + ε)^p.

    With `rows`, `ci_upper` holds only the selected rows and the mean is the full batch's.
    """
    # p = 1 (the toy models' setting) needs no power: one pass less each way.
    per_layer = [
        _example_mean(
            ((g + IMPORTANCE_EPS) if pnorm == 1 else (g + IMPORTANCE_EPS) ** pnorm).sum(-1), rows
        )
        for g in ci_upper.values()
    ]
    return torch.stack(per_layer).sum()


def schatten_loss(
    model: ComponentModel,
    ci_upper: Mapping[str, Tensor],
    pnorm: float,
    rows: RowSelection | None = None,
) -> Tensor:
    """Σ_l mean over examples of Σ_c g_upper^p (‖V_c‖² + ‖U_c‖²)."""
    terms = []
    for name, g in ci_upper.items():
        comp = model.components[name]
        sizes = comp.V.pow(2).sum(0) + comp.U.pow(2).sum(1)
        terms.append(_example_mean(((g + IMPORTANCE_EPS) ** pnorm * sizes).sum(-1), rows))
    return torch.stack(terms).sum()


def embedding_recon_loss(
    model: ComponentModel,
    pre_acts: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    unembed: bool,
) -> Tensor:
    """Masked embedding output against the original embedding, averaged over decomposed embeddings.

    By default the squared error summed over the embedding dimension, then averaged over tokens
    (as the original implementation: d_emb times a per-entry mean); with `unembed` both are
    passed through the model's `lm_head` and compared with KL. `masks` are the term's own draws.
    """
    losses = []
    for name, comp in model.components.items():
        if not isinstance(comp, EmbeddingComponents):
            continue
        tokens = pre_acts[name]
        original = model.decomposed[name].original(tokens)
        masked = comp(tokens, masks[name])
        if unembed:
            lm_head = model.target.get_submodule("lm_head")
            losses.append(output_divergence(lm_head(masked), lm_head(original), "kl"))
        else:
            losses.append((masked - original).pow(2).sum(-1).mean())
    if not losses:
        raise ValueError("embedding_recon_coeff is set but no Embedding is decomposed")
    return torch.stack(losses).mean()


def total_loss(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    pre_acts: Mapping[str, Tensor],
    ci: Mapping[str, Tensor],
    ci_upper: Mapping[str, Tensor],
    config: Config,
    pnorm: float,
    rows: RowSelection | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Σ coeff_i · loss_i over the configured terms; also returns each term (detached).

    With `rows` (`spd.losses.row_selection`), every tensor holds only the selected rows of the batch,
    and each term is still the full batch's: the reconstruction means are scaled by the kept
    share (the rows left out add zero), the importance means weight the representative row.
    """
    coeffs = config.loss_coeffs
    loss_type = config.output_loss_type
    share = 1.0 if rows is None else rows.share
    terms: dict[str, Tensor] = {}
    if "faithfulness" in coeffs:
        terms["faithfulness"] = faithfulness_loss(model)
    if "recon" in coeffs:
        terms["recon"] = share * recon_loss(model, batch, target_out, ci, loss_type)
    if "recon_layerwise" in coeffs:
        terms["recon_layerwise"] = share * layerwise_recon_loss(
            model, batch, target_out, ci, loss_type
        )
    if {"stochastic_recon", "stochastic_recon_layerwise", "embedding_recon"} & coeffs.keys():
        # Each term draws masks of its own, independent of the others' in the same step.
        full, layerwise, embedding = [], [], []
        for _ in range(config.n_mask_samples):
            if "stochastic_recon" in coeffs:
                full.append(recon_loss(model, batch, target_out, stochastic_masks(ci), loss_type))
            if "stochastic_recon_layerwise" in coeffs:
                layerwise.append(
                    layerwise_recon_loss(model, batch, target_out, stochastic_masks(ci), loss_type)
                )
            if "embedding_recon" in coeffs:
                embedding.append(
                    embedding_recon_loss(
                        model, pre_acts, stochastic_masks(ci), config.is_embed_unembed_recon
                    )
                )
        for name, samples, scale in (
            ("stochastic_recon", full, share),
            ("stochastic_recon_layerwise", layerwise, share),
            ("embedding_recon", embedding, 1.0),  # never row-filtered: tokens are not vectors
        ):
            if samples:
                terms[name] = scale * torch.stack(samples).mean()
    if "importance_minimality" in coeffs:
        terms["importance_minimality"] = importance_minimality_loss(ci_upper, pnorm, rows)
    if "schatten" in coeffs:
        terms["schatten"] = schatten_loss(model, ci_upper, pnorm, rows)
    if "out_recon" in coeffs:
        unmasked: dict[str, Tensor | None] = dict.fromkeys(model.module_names)
        terms["out_recon"] = share * recon_loss(model, batch, target_out, unmasked, loss_type)
    total = torch.stack([coeffs[name] * value for name, value in terms.items()]).sum()
    return total, {name: value.detach() for name, value in terms.items()}


@dataclass
class BatchLoss:
    """One (micro-)batch's training loss and what the step's bookkeeping needs from it."""

    total: Tensor
    terms: dict[str, Tensor]  # each configured term, detached
    ci: dict[str, Tensor]  # mask-side CI of the rows the losses were computed on
    rows: RowSelection | None  # those rows, or None for the whole batch


def batch_loss(model: ComponentModel, batch: Tensor, config: Config, pnorm: float) -> BatchLoss:
    """Target pass, row selection (`spd.losses.row_selection`), causal importances, `total_loss`."""
    with torch.no_grad():
        target_out, pre_acts = model.forward_with_pre_acts(batch)
    rows = select_rows(model, pre_acts)
    if rows is not None:
        check_independent_rows(model, batch, target_out, pre_acts, rows)
        batch, target_out = rows.take(batch), rows.take(target_out)
        pre_acts = {name: rows.take(a) for name, a in pre_acts.items()}
    ci, ci_upper = model.causal_importances(pre_acts, config.sigmoid_type)
    total, terms = total_loss(model, batch, target_out, pre_acts, ci, ci_upper, config, pnorm, rows)
    return BatchLoss(total=total, terms=terms, ci=ci, rows=rows)
