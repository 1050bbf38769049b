"""Subcomponents grouped by how often they fire together, from the analysis's co-firing counts.

Two subcomponents are linked when their Jaccard index n_ab / (n_a + n_b − n_ab) (n: firing
counts, n_ab: positions where both fire) reaches `min_jaccard`; a cluster is a connected group of
at least two. The analysis keeps each subcomponent's strongest partners only (a bounded number
per subcomponent), which is what the links are drawn from.
"""

from dataclasses import dataclass

import numpy as np

from spd.analysis.store import Analysis

MIN_JACCARD = 0.5
N_CONTEXTS = 10


@dataclass(frozen=True)
class Cluster:
    """Members as (layer number, subcomponent), most firings first."""

    members: list[tuple[int, int]]
    fires: int


def _find(parent: dict[tuple[int, int], tuple[int, int]], node: tuple[int, int]) -> tuple[int, int]:
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


def find_clusters(analysis: Analysis, min_jaccard: float = MIN_JACCARD) -> list[Cluster]:
    """The clusters of the analysis, largest first."""
    counts = [layer["fire_count"] for layer in analysis.layers]
    parent: dict[tuple[int, int], tuple[int, int]] = {}
    for a_layer, data in enumerate(analysis.layers):
        n_ab = data["cofire_count"]
        b_layer, b_index = data["cofire_layer"], data["cofire_index"]
        for c, j in zip(*(n_ab > 0).nonzero(), strict=True):
            b = (int(b_layer[c, j]), int(b_index[c, j]))
            both = int(n_ab[c, j])
            union = int(counts[a_layer][c]) + int(counts[b[0]][b[1]]) - both
            if union > 0 and both / union >= min_jaccard:
                a = (a_layer, int(c))
                parent.setdefault(a, a)
                parent.setdefault(b, b)
                ra, rb = _find(parent, a), _find(parent, b)
                if ra != rb:
                    parent[rb] = ra
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for node in parent:
        groups.setdefault(_find(parent, node), []).append(node)
    clusters = []
    for members in groups.values():
        members.sort(key=lambda m: -int(counts[m[0]][m[1]]))
        clusters.append(Cluster(members, sum(int(counts[li][c]) for li, c in members)))
    clusters.sort(key=lambda cl: (-len(cl.members), -cl.fires))
    return clusters


def cluster_contexts(
    analysis: Analysis, cluster: Cluster, n: int = N_CONTEXTS
) -> list[tuple[int, int, int]]:
    """The cluster's top contexts: (layer, subcomponent, slot) of the members' highest-CI kept
    positions, best first."""
    scored = []
    for li, c in cluster.members:
        data = analysis.layers[li]
        for j in np.flatnonzero(data["top_valid"][c]):
            scored.append((float(data["top_ci"][c, j]), li, c, int(j)))
    scored.sort(key=lambda item: -item[0])
    return [(li, c, j) for _, li, c, j in scored[:n]]
