"""The loss terms of SPD (docs/method.md, 'Losses') and their weighted sum.

Every term is a function of the component model, the batch, the target's output and the causal
importances of this step; a term whose coefficient is null is never computed.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from spd.config.schema import Config, OutputLossType
from spd.losses.row_selection import RowSelection, check_independent_rows, select_rows
from spd.models.component_model import ComponentModel
from spd.models.components import EmbeddingComponents
from spd.models.low_rank_stream import LowRankStream, shared_products

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
    # `rand`, not `rand_like`: the draws then fill the masks in row-major order whatever the CI's
    # memory layout, so a seed gives the same masks on every code path.
    return {
        name: torch.addcmul(g, 1 - g, torch.rand(g.shape, dtype=g.dtype, device=g.device))
        for name, g in ci.items()
    }


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


@dataclass(frozen=True)
class LossInputs:
    """What every loss term may read: the model, the (row-selected) batch and this step's CI."""

    model: ComponentModel
    batch: Tensor
    target_out: Tensor
    # The inputs of the decomposed layers that the target did not pass as a `LowRankStream`
    # (those are never formed densely in a step; `ci` covers every layer). Embeddings are never
    # streamed, so `embedding_recon_loss` finds its token ids here.
    pre_acts: Mapping[str, Tensor]
    ci: Mapping[str, Tensor]
    ci_upper: Mapping[str, Tensor]
    config: Config
    pnorm: float
    rows: RowSelection | None


@dataclass(frozen=True)
class LossTerm:
    """One term of the method's loss: its name (the `<name>_coeff` config field and the
    `train/loss/<name>` metric), how to compute it and how it treats a row selection.

    A `stochastic` term is computed once per mask sample (`n_mask_samples`) from masks of its
    own, drawn in the order of `LOSS_TERMS`, and averaged. `row_mean` terms are means over batch
    rows: with a row selection they are scaled by the kept share (the rows left out add zero).
    """

    name: str
    compute: Callable[[LossInputs, Mapping[str, Tensor]], Tensor]
    stochastic: bool = False
    row_mean: bool = False

    @property
    def coeff_field(self) -> str:
        return f"{self.name}_coeff"


def _unmasked(s: LossInputs) -> dict[str, Tensor | None]:
    return dict.fromkeys(s.model.module_names)


# The one list of loss terms, in the order they are computed, logged and summed. Adding a term is
# one entry here and one `<name>_coeff` field in `spd.config.schema.Config`.
LOSS_TERMS: tuple[LossTerm, ...] = (
    LossTerm("faithfulness", lambda s, _: faithfulness_loss(s.model)),
    LossTerm(
        "recon",
        lambda s, _: recon_loss(s.model, s.batch, s.target_out, s.ci, s.config.output_loss_type),
        row_mean=True,
    ),
    LossTerm(
        "recon_layerwise",
        lambda s, _: layerwise_recon_loss(
            s.model, s.batch, s.target_out, s.ci, s.config.output_loss_type
        ),
        row_mean=True,
    ),
    LossTerm(
        "stochastic_recon",
        lambda s, masks: recon_loss(
            s.model, s.batch, s.target_out, masks, s.config.output_loss_type
        ),
        stochastic=True,
        row_mean=True,
    ),
    LossTerm(
        "stochastic_recon_layerwise",
        lambda s, masks: layerwise_recon_loss(
            s.model, s.batch, s.target_out, masks, s.config.output_loss_type
        ),
        stochastic=True,
        row_mean=True,
    ),
    # Never row-filtered: token inputs are not selected by rows.
    LossTerm(
        "embedding_recon",
        lambda s, masks: embedding_recon_loss(
            s.model, s.pre_acts, masks, s.config.is_embed_unembed_recon
        ),
        stochastic=True,
    ),
    LossTerm(
        "importance_minimality",
        lambda s, _: importance_minimality_loss(s.ci_upper, s.pnorm, s.rows),
    ),
    LossTerm("schatten", lambda s, _: schatten_loss(s.model, s.ci_upper, s.pnorm, s.rows)),
    LossTerm(
        "out_recon",
        lambda s, _: recon_loss(
            s.model, s.batch, s.target_out, _unmasked(s), s.config.output_loss_type
        ),
        row_mean=True,
    ),
)


def total_loss(
    inputs: LossInputs, coeffs: Mapping[str, float] | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Σ coeff_i · loss_i over the configured terms of `LOSS_TERMS`; also returns each term
    (detached). A term whose coefficient is null is never computed. `coeffs` (default
    `config.loss_coeffs`) is given when compiled: torch.compile cannot trace that property.

    With `inputs.rows` (`spd.losses.row_selection`), every tensor holds only the selected rows of
    the batch, and each term is still the full batch's (see `LossTerm`).
    """
    coeffs = inputs.config.loss_coeffs if coeffs is None else coeffs
    active = [term for term in LOSS_TERMS if term.name in coeffs]
    share = 1.0 if inputs.rows is None else inputs.rows.share
    values = {term.name: term.compute(inputs, {}) for term in active if not term.stochastic}
    draws: dict[str, list[Tensor]] = {term.name: [] for term in active if term.stochastic}
    for _ in range(inputs.config.n_mask_samples):
        for term in active:
            if term.stochastic:
                draws[term.name].append(term.compute(inputs, stochastic_masks(inputs.ci)))
    terms: dict[str, Tensor] = {}
    for term in active:
        value = torch.stack(draws[term.name]).mean() if term.stochastic else values[term.name]
        terms[term.name] = share * value if term.row_mean else value
    total = torch.stack([coeffs[name] * value for name, value in terms.items()]).sum()
    return total, {name: value.detach() for name, value in terms.items()}


@dataclass
class BatchLoss:
    """One (micro-)batch's training loss and what the step's bookkeeping needs from it."""

    total: Tensor
    terms: dict[str, Tensor]  # each configured term, detached
    ci: dict[str, Tensor]  # mask-side CI of the rows the losses were computed on
    rows: RowSelection | None  # those rows, or None for the whole batch


def loss_on_rows(
    model: ComponentModel,
    batch: Tensor,
    target_out: Tensor,
    pre_acts: Mapping[str, Tensor],
    streams: Mapping[str, LowRankStream],
    rows: RowSelection | None,
    config: Config,
    pnorm: float,
    coeffs: Mapping[str, float],
    total: Callable[[LossInputs, Mapping[str, float]], tuple[Tensor, dict[str, Tensor]]] = (
        total_loss
    ),
) -> BatchLoss:
    """Causal importances and `total` (`total_loss`) of the (row-selected) batch: the part of
    `batch_loss` after the target pass, which `spd.train.compilation` compiles (or its `total`)."""
    ci, ci_upper = model.causal_importances(pre_acts, config.sigmoid_type, streams=streams)
    inputs = LossInputs(model, batch, target_out, pre_acts, ci, ci_upper, config, pnorm, rows)
    total_value, terms = total(inputs, coeffs)
    return BatchLoss(total=total_value, terms=terms, ci=ci, rows=rows)


def batch_loss(
    model: ComponentModel,
    batch: Tensor,
    config: Config,
    pnorm: float,
    on_rows: Callable[..., BatchLoss] = loss_on_rows,
) -> BatchLoss:
    """Target pass, row selection (`spd.losses.row_selection`), then `on_rows` (`loss_on_rows`,
    or a compiled version of it): causal importances, `total_loss`.

    Products of fixed and trained factors that several passes share are formed once
    (`spd.models.low_rank_stream.shared_products`).
    """
    with shared_products():
        return _batch_loss(model, batch, config, pnorm, on_rows)


def _batch_loss(
    model: ComponentModel,
    batch: Tensor,
    config: Config,
    pnorm: float,
    on_rows: Callable[..., BatchLoss],
) -> BatchLoss:
    with torch.no_grad():
        target_out, pre_acts, streams = model.forward_with_pre_act_streams(batch)
    rows = select_rows(model, pre_acts, streams)
    if rows is not None:
        check_independent_rows(model, batch, target_out, rows)
        batch, target_out = rows.take(batch), rows.take(target_out)
        pre_acts = {name: rows.take(a) for name, a in pre_acts.items()}
        streams = {name: s.take_rows(rows.index) for name, s in streams.items()}
    return on_rows(
        model, batch, target_out, pre_acts, streams, rows, config, pnorm, config.loss_coeffs
    )
