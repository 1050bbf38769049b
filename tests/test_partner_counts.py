"""The analysis pass's co-firing counts: memory linear in the number of subcomponents, counts
exact where a subcomponent has no more partners than it keeps slots for."""

import torch

from spd.analysis.accumulators import PartnerCounts


def _dense(batches: list[torch.Tensor]) -> torch.Tensor:
    total = sum(b.T.double() @ b.double() for b in batches)
    assert isinstance(total, torch.Tensor)
    return total.fill_diagonal_(0).long()


def test_counts_match_the_dense_matrix_when_every_partner_fits() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(40, 9, generator=g) < 0.3 for _ in range(5)]
    counts = PartnerCounts(9, m=8, device=torch.device("cpu"), row_block=4)  # several blocks
    for batch in batches:
        counts.update(batch)
    dense = _dense(batches)
    for a in range(9):
        kept = {
            int(j): int(n) for j, n in zip(counts.index[a], counts.count[a], strict=True) if j >= 0
        }
        assert kept == {b: int(dense[a, b]) for b in range(9) if dense[a, b] > 0}
        assert counts.count[a].tolist() == sorted(counts.count[a].tolist(), reverse=True)


def test_few_slots_keep_the_frequent_partners_exactly() -> None:
    # Subcomponent 0 fires with 1 on every position and with one of 2 … 9 now and then; with two
    # slots, its partner 1 keeps its exact count.
    counts = PartnerCounts(10, m=2, device=torch.device("cpu"))
    n = 0
    for step in range(30):
        fires = torch.zeros(4, 10, dtype=torch.bool)
        fires[:, :2] = True
        fires[0, 2 + step % 8] = True
        counts.update(fires)
        n += 4
    assert (int(counts.index[0, 0]), int(counts.count[0, 0])) == (1, n)
    assert counts.index.numel() == 10 * 2  # memory: slots per subcomponent, not a 10 × 10 table
