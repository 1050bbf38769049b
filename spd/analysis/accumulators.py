"""Running statistics of causal importances over a token stream, in memory that does not grow with it.

Per decomposed layer of C subcomponents, over every token position seen:
- how often each subcomponent fires (CI > threshold), its summed CI and a fixed-bin CI histogram;
- its k positions of highest CI and k firing positions drawn uniformly at random, each kept with a
  window of tokens around it and the subcomponent's CI at every token of the window;
- how often it fires on each vocabulary token (with the token's own count, this gives precision);
and, across all layers, how often each subcomponent fires on the same token as each of its
`n_partners` most frequent partners (`PartnerCounts`).

Every size depends on C, the vocabulary, k and the window, never on the number of tokens, and the
co-firing counts grow linearly in the number of subcomponents (not with its square). The
random sample is a reservoir by random keys: each firing position gets a uniform key and the k
smallest keys seen are kept, which is a uniform sample without replacement of all firing positions.
"""

from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

PAD_TOKEN = -1  # a window position outside the sequence


@dataclass(frozen=True)
class AccumulatorSettings:
    """What is counted; a saved state continues only under the same settings."""

    threshold: float
    top_k: int
    n_random: int
    context_before: int
    context_after: int
    n_bins: int
    n_partners: int = 32

    @property
    def window(self) -> int:
        return self.context_before + 1 + self.context_after


class ContextSlots:
    """k kept positions per subcomponent, each with a score (higher is kept), its CI and a window."""

    def __init__(self, C: int, k: int, window: int, device: torch.device) -> None:
        self.score = torch.full((C, k), -torch.inf, device=device)
        self.ci = torch.zeros(C, k, device=device)
        self.tokens = torch.full((C, k, window), PAD_TOKEN, dtype=torch.int64, device=device)
        self.window_ci = torch.zeros(C, k, window, device=device)

    def offer(
        self,
        score: Float[Tensor, "pos C"],
        ci: Float[Tensor, "batch seq C"],
        tokens: Int[Tensor, "batch seq"],
        before: int,
        after: int,
    ) -> None:
        """Keep, per subcomponent, the k best-scored among the kept ones and this batch's positions."""
        k = self.score.shape[1]
        batch, seq, C = ci.shape
        n_new = min(k, score.shape[0])
        new_score, flat = score.topk(n_new, dim=0)  # (n_new, C)
        b, p = flat // seq, flat % seq
        offsets = torch.arange(-before, after + 1, device=ci.device)
        where = p[..., None] + offsets + before  # index into the padded sequence axis
        ci_pad = torch.nn.functional.pad(ci, (0, 0, before, after))
        tok_pad = torch.nn.functional.pad(tokens, (before, after), value=PAD_TOKEN)
        columns = torch.arange(C, device=ci.device)[None, :, None]
        new_window_ci = ci_pad[b[..., None], where, columns]  # (n_new, C, window)
        new_tokens = tok_pad[b[..., None], where]
        new_ci = ci.reshape(batch * seq, C).gather(0, flat)
        all_score = torch.cat([self.score, new_score.T], dim=1)
        keep = all_score.topk(k, dim=1).indices  # (C, k)
        self.score = all_score.gather(1, keep)
        self.ci = torch.cat([self.ci, new_ci.T], dim=1).gather(1, keep)
        self.tokens = _gather_rows(torch.cat([self.tokens, new_tokens.transpose(0, 1)], 1), keep)
        self.window_ci = _gather_rows(
            torch.cat([self.window_ci, new_window_ci.transpose(0, 1)], 1), keep
        )

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "score": self.score.cpu(),
            "ci": self.ci.cpu(),
            "tokens": self.tokens.cpu(),
            "window_ci": self.window_ci.cpu(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        device = self.score.device
        self.score = state["score"].to(device)
        self.ci = state["ci"].to(device)
        self.tokens = state["tokens"].to(device)
        self.window_ci = state["window_ci"].to(device)


def _gather_rows(values: Tensor, keep: Int[Tensor, "C k"]) -> Tensor:
    """values (C, n, window) → (C, k, window), rows `keep` of each subcomponent."""
    return values.gather(1, keep[..., None].expand(-1, -1, values.shape[-1]))


class LayerAccumulator:
    """The per-subcomponent statistics of one decomposed layer."""

    def __init__(
        self, C: int, vocab_size: int, settings: AccumulatorSettings, device: torch.device
    ) -> None:
        self.settings = settings
        self.fire_count = torch.zeros(C, dtype=torch.int64, device=device)
        self.ci_sum = torch.zeros(C, dtype=torch.float64, device=device)
        self.histogram = torch.zeros(C, settings.n_bins, dtype=torch.int64, device=device)
        self.token_fires = torch.zeros(C, vocab_size, dtype=torch.int64, device=device)
        self.top = ContextSlots(C, settings.top_k, settings.window, device)
        self.random = ContextSlots(C, settings.n_random, settings.window, device)

    def update(
        self,
        tokens: Int[Tensor, "batch seq"],
        ci: Float[Tensor, "batch seq C"],
        generator: torch.Generator,
    ) -> Tensor:
        """Count one batch; returns the (positions, C) firing mask for the co-firing counts."""
        s = self.settings
        C = ci.shape[-1]
        flat_ci = ci.reshape(-1, C)
        fires = flat_ci > s.threshold
        self.fire_count += fires.sum(0)
        self.ci_sum += flat_ci.sum(0, dtype=torch.float64)
        bins = (flat_ci.clamp(0.0, 1.0) * s.n_bins).long().clamp(max=s.n_bins - 1)
        offsets = torch.arange(C, device=ci.device) * s.n_bins
        self.histogram.view(-1).index_add_(
            0, (bins + offsets).flatten(), torch.ones_like(bins).flatten()
        )
        self.token_fires.index_add_(1, tokens.flatten(), fires.T.long())
        self.top.offer(flat_ci, ci, tokens, s.context_before, s.context_after)
        keys = torch.rand(flat_ci.shape, generator=generator, device=generator.device)
        keys = keys.to(ci.device)
        self.random.offer(
            torch.where(fires, -keys, -torch.inf), ci, tokens, s.context_before, s.context_after
        )
        return fires

    def state_dict(self) -> dict[str, Any]:
        return {
            "fire_count": self.fire_count.cpu(),
            "ci_sum": self.ci_sum.cpu(),
            "histogram": self.histogram.cpu(),
            "token_fires": self.token_fires.cpu(),
            "top": self.top.state_dict(),
            "random": self.random.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.fire_count.device
        self.fire_count = state["fire_count"].to(device)
        self.ci_sum = state["ci_sum"].to(device)
        self.histogram = state["histogram"].to(device)
        self.token_fires = state["token_fires"].to(device)
        self.top.load_state_dict(state["top"])
        self.random.load_state_dict(state["random"])


class PartnerCounts:
    """Per subcomponent (of all layers, numbered in layer order), `m` partner slots: the partner's
    number and how often both fired on the same position.

    A batch's co-firing counts are formed only among the subcomponents that fired in it, a block
    of rows at a time, and merged into the slots: a partner already kept adds its count, the others
    compete with the kept ones and the `m` largest stay. The counts are exact for every
    subcomponent with at most `m` distinct partners; otherwise a partner that was dropped and
    comes back restarts from zero (a lower bound), which keeps the frequent partners.
    """

    def __init__(self, total: int, m: int, device: torch.device, row_block: int = 256) -> None:
        # Rows of a batch's co-firing block formed at once: bounds its memory.
        self.row_block = row_block
        self.index = torch.full((total, m), -1, dtype=torch.int64, device=device)
        self.count = torch.zeros(total, m, dtype=torch.int64, device=device)

    def update(self, fires: Tensor) -> None:
        """Count one batch's (positions, total) firing mask."""
        active = fires.any(0).nonzero().squeeze(1)
        n_active = active.numel()
        if n_active == 0:
            return
        # Exact in float32: a batch has far fewer than 2^24 positions.
        on = fires[:, active].float()
        local_of = torch.full((self.index.shape[0] + 1,), n_active, device=fires.device)
        local_of[active] = torch.arange(n_active, device=fires.device)
        for start in range(0, n_active, self.row_block):
            rows = active[start : start + self.row_block]
            block = (on[:, start : start + self.row_block].T @ on).long()  # (rows, n_active)
            block[torch.arange(rows.numel()), torch.arange(start, start + rows.numel())] = 0
            block = torch.nn.functional.pad(block, (0, 1))  # a column for "not active"
            kept, counts = self.index[rows], self.count[rows]
            local = local_of[kept]  # a kept partner's column in the block (empty slots: -1 → last)
            counts = counts + block.gather(1, local)
            block.scatter_(1, local, 0)  # counted once: as the kept slot
            all_index = torch.cat([kept, active.expand(rows.numel(), -1)], dim=1)
            all_count = torch.cat([counts, block[:, :n_active]], dim=1)
            best = all_count.topk(self.index.shape[1], dim=1)
            self.count[rows] = best.values
            self.index[rows] = torch.where(best.values > 0, all_index.gather(1, best.indices), -1)

    def state_dict(self) -> dict[str, Tensor]:
        return {"index": self.index.cpu(), "count": self.count.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        device = self.index.device
        self.index = state["index"].to(device)
        self.count = state["count"].to(device)


class AnalysisAccumulator:
    """Every layer's statistics, the token counts and the co-firing counts of a whole pass."""

    def __init__(
        self,
        layer_sizes: dict[str, int],
        vocab_size: int,
        settings: AccumulatorSettings,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        self.settings = settings
        self.vocab_size = vocab_size
        self.layers = {
            name: LayerAccumulator(C, vocab_size, settings, device)
            for name, C in layer_sizes.items()
        }
        total = sum(layer_sizes.values())
        self.token_count = torch.zeros(vocab_size, dtype=torch.int64, device=device)
        self.cofire = PartnerCounts(total, settings.n_partners, device)
        self.n_tokens = 0
        self.n_batches = 0
        # The reservoir keys come from a CPU generator so a pass continues identically on either device.
        self.generator = torch.Generator().manual_seed(seed)

    def update(
        self, tokens: Int[Tensor, "batch seq"], ci: dict[str, Float[Tensor, "batch seq C"]]
    ) -> None:
        """Count one batch of tokens and the CI of every layer on them."""
        fires = [
            layer.update(tokens, ci[name], self.generator) for name, layer in self.layers.items()
        ]
        self.cofire.update(torch.cat(fires, dim=1))
        self.token_count += torch.bincount(tokens.flatten(), minlength=self.vocab_size)
        self.n_tokens += tokens.numel()
        self.n_batches += 1

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the pass (tensors on the CPU)."""
        return {
            "settings": asdict(self.settings),
            "vocab_size": self.vocab_size,
            "layers": {name: layer.state_dict() for name, layer in self.layers.items()},
            "token_count": self.token_count.cpu(),
            "cofire": self.cofire.state_dict(),
            "n_tokens": self.n_tokens,
            "n_batches": self.n_batches,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.token_count.device
        for name, layer in self.layers.items():
            layer.load_state_dict(state["layers"][name])
        self.token_count = state["token_count"].to(device)
        self.cofire.load_state_dict(state["cofire"])
        self.n_tokens = state["n_tokens"]
        self.n_batches = state["n_batches"]
        self.generator.set_state(state["generator"])

    def nbytes(self) -> int:
        """Bytes held by the statistics: constant over the pass."""
        tensors = [self.token_count, self.cofire.index, self.cofire.count]
        for layer in self.layers.values():
            tensors += [layer.fire_count, layer.ci_sum, layer.histogram, layer.token_fires]
            for slots in (layer.top, layer.random):
                tensors += [slots.score, slots.ci, slots.tokens, slots.window_ci]
        return sum(t.numel() * t.element_size() for t in tensors)
