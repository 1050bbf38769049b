"""The loss terms of SPD (spec §4) and their weighted sum.

Every term is a function of the component model, the batch, the target's output and the causal
importances of this step; a term whose coefficient is null is never computed.
"""

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from spd.configs import Config, OutputLossType
from spd.models.component_model import ComponentModel
from spd.models.components import EmbeddingComponents

IMPORTANCE_EPS = 1e-12
# Leave inert rows out only when they are a sizeable share of the batch; otherwise the gathers
# cost more than they save.
LIVE_ROW_SHARE_MAX = 0.75


def live_rows(model: ComponentModel, pre_acts: Mapping[str, Tensor]) -> Tensor | None:
    """Indices of the batch rows that can make a masked output differ from the target's, or None
    (keep every row).

    For a target that declares `independent_rows = True` (it processes each batch row on its
    own, like the toy models), a row whose input to every decomposed layer is exactly zero gives
    the target's output under any masks: components fed zero output the layer's bias, as the
    original layer does, so each later layer sees its target-pass input. Such rows add exactly
    zero to every reconstruction loss and to its gradient, so those passes can skip them; most
    rows of a sparse toy batch are such rows. CPU only: on CUDA the work per row is not the
    bottleneck and finding the rows would cost a synchronisation.
    """
    acts = list(pre_acts.values())
    if not getattr(model.target, "independent_rows", False) or acts[0].device.type != "cpu":
        return None
    n = acts[0].shape[0]
    if any(a.dim() != 2 or a.shape[0] != n or not a.is_floating_point() for a in acts):
        return None
    # Σ|a| over a row is zero exactly when the row is; summing is the cheapest such reduction.
    rows = torch.stack([a.abs().sum(-1) for a in acts]).sum(0).nonzero().squeeze(-1)
    if rows.numel() > LIVE_ROW_SHARE_MAX * n:
        return None
    # With no live row at all, one inert row keeps the passes well defined (its loss is 0).
    return rows if rows.numel() > 0 else rows.new_zeros(1)


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


def importance_minimality_loss(
    ci_upper: Mapping[str, Float[Tensor, "... C"]], pnorm: float
) -> Tensor:
    """Mean over examples (and positions) of Σ_l Σ_c (g_upper + ε)^p."""
    # p = 1 (the toy models' setting) needs no power: one pass less each way.
    per_layer = [
        ((g + IMPORTANCE_EPS) if pnorm == 1 else (g + IMPORTANCE_EPS) ** pnorm).sum(-1).mean()
        for g in ci_upper.values()
    ]
    return torch.stack(per_layer).sum()


def schatten_loss(model: ComponentModel, ci_upper: Mapping[str, Tensor], pnorm: float) -> Tensor:
    """Σ_l mean over examples of Σ_c g_upper^p (‖V_c‖² + ‖U_c‖²)."""
    terms = []
    for name, g in ci_upper.items():
        comp = model.components[name]
        sizes = comp.V.pow(2).sum(0) + comp.U.pow(2).sum(1)
        terms.append(((g + IMPORTANCE_EPS) ** pnorm * sizes).sum(-1).mean())
    return torch.stack(terms).sum()


def embedding_recon_loss(
    model: ComponentModel,
    pre_acts: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    unembed: bool,
) -> Tensor:
    """Masked embedding output against the original embedding.

    MSE by default; with `unembed` both are passed through the model's `lm_head` and compared
    with KL. Uses the same stochastic masks as the full stochastic recon of the step.
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
            losses.append(F.mse_loss(masked, original))
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
) -> tuple[Tensor, dict[str, Tensor]]:
    """Σ coeff_i · loss_i over the configured terms; also returns each term (detached).

    The reconstruction terms run on the rows that can change them (`live_rows`) and are scaled
    by their share of the batch: the same means over the whole batch, for less work.
    """
    coeffs = config.loss_coeffs
    loss_type = config.output_loss_type
    rows = live_rows(model, pre_acts)
    share = 1.0
    if rows is not None:
        share = rows.numel() / batch.shape[0]
        batch, target_out = batch.index_select(0, rows), target_out.index_select(0, rows)
        ci = {name: g.index_select(0, rows) for name, g in ci.items()}
    terms: dict[str, Tensor] = {}
    if "faithfulness" in coeffs:
        terms["faithfulness"] = faithfulness_loss(model)
    if "recon" in coeffs:
        terms["recon"] = share * recon_loss(model, batch, target_out, ci, loss_type)
    if "recon_layerwise" in coeffs:
        terms["recon_layerwise"] = share * layerwise_recon_loss(
            model, batch, target_out, ci, loss_type
        )
    needs_stochastic = {"stochastic_recon", "embedding_recon"} & coeffs.keys()
    if needs_stochastic or "stochastic_recon_layerwise" in coeffs:
        full, layerwise, embedding = [], [], []
        for _ in range(config.n_mask_samples):
            if needs_stochastic:
                masks = stochastic_masks(ci)
                if "stochastic_recon" in coeffs:
                    full.append(recon_loss(model, batch, target_out, masks, loss_type))
                if "embedding_recon" in coeffs:
                    embedding.append(
                        embedding_recon_loss(model, pre_acts, masks, config.is_embed_unembed_recon)
                    )
            if "stochastic_recon_layerwise" in coeffs:
                # Independent draws from those of the full stochastic term.
                layerwise.append(
                    layerwise_recon_loss(model, batch, target_out, stochastic_masks(ci), loss_type)
                )
        for name, samples, scale in (
            ("stochastic_recon", full, share),
            ("stochastic_recon_layerwise", layerwise, share),
            ("embedding_recon", embedding, 1.0),  # never row-filtered: tokens are not vectors
        ):
            if samples:
                terms[name] = scale * torch.stack(samples).mean()
    if "importance_minimality" in coeffs:
        terms["importance_minimality"] = importance_minimality_loss(ci_upper, pnorm)
    if "schatten" in coeffs:
        terms["schatten"] = schatten_loss(model, ci_upper, pnorm)
    if "out_recon" in coeffs:
        unmasked: dict[str, Tensor | None] = dict.fromkeys(model.module_names)
        terms["out_recon"] = share * recon_loss(model, batch, target_out, unmasked, loss_type)
    total = torch.stack([coeffs[name] * value for name, value in terms.items()]).sum()
    return total, {name: value.detach() for name, value in terms.items()}
