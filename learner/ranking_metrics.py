"""Offline metrics of a generated page: relevance, ranking consistency, diversity.

Relevance (the paper's protocol, section 5.1.1): binary relevance against a user's test items.
Ranking consistency compares a generated list with the user's golden list; the paper names WAS,
PWKT, WMRD and DPA without formulas, so each is a standard construction chosen here and written
down in its docstring, with positions 1-based and the discount 1/log2(1 + position) throughout.
Diversity uses the items' categories (no embeddings needed): ILD is the share of unlike pairs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence


def discount(position: int) -> float:
    """d(p) = 1 / log2(1 + p) for a 1-based position p."""
    return 1.0 / math.log2(1 + position)


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Recall@K = |top-K(ranked) ∩ relevant| / |relevant| (0 when nothing is relevant)."""
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & relevant) / len(relevant)


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """NDCG@K = sum_{p<=K, item_p relevant} d(p) / sum_{p <= min(|relevant|, K)} d(p)."""
    if not relevant:
        return 0.0
    dcg = sum(discount(p) for p, item in enumerate(ranked[:k], 1) if item in relevant)
    ideal = sum(discount(p) for p in range(1, min(len(relevant), k) + 1))
    return dcg / ideal


def discounted_positional_accuracy(generated: Sequence[str], golden: Sequence[str]) -> float:
    """DPA = sum_p d(p) [generated_p = golden_p] / sum_p d(p), over the golden list's positions."""
    if not golden:
        return 0.0
    hits = sum(
        discount(p)
        for p, item in enumerate(golden, 1)
        if p <= len(generated) and generated[p - 1] == item
    )
    return hits / sum(discount(p) for p in range(1, len(golden) + 1))


def weighted_agreement_score(
    generated: Sequence[str], golden: Sequence[str], persistence: float = 0.9
) -> float:
    """WAS = sum_d q^(d-1) A_d / sum_d q^(d-1), A_d = |top-d(gen) ∩ top-d(gold)| / d, d <= K.

    Truncated rank-biased overlap (Webber et al. 2010) with persistence q: agreement of every
    prefix, the top ones weighing most; 1 for the same order, 0 for disjoint lists.
    """
    depth = len(golden)
    if depth == 0:
        return 0.0
    weighted = norm = 0.0
    for d in range(1, depth + 1):
        agreement = len(set(generated[:d]) & set(golden[:d])) / d
        weighted += persistence ** (d - 1) * agreement
        norm += persistence ** (d - 1)
    return weighted / norm


def position_weighted_kendall_tau(generated: Sequence[str], golden: Sequence[str]) -> float:
    """PWKT = sum_{i<j} w_ij s_ij / sum_{i<j} w_ij over items in both lists (0 if fewer than 2).

    s_ij = +1 if the pair keeps its golden order in the generated list, -1 if not; the weight
    w_ij = d(min(golden position of i, of j)) makes swaps near the top count most.
    """
    position = {item: p for p, item in enumerate(generated, 1)}
    common = [(p, position[item]) for p, item in enumerate(golden, 1) if item in position]
    weighted = norm = 0.0
    for a in range(len(common)):
        for b in range(a + 1, len(common)):
            (gold_a, gen_a), (_, gen_b) = common[a], common[b]
            weight = discount(gold_a)  # golden positions increase with the index
            weighted += weight * (1.0 if gen_a < gen_b else -1.0)
            norm += weight
    return weighted / norm if norm else 0.0


def weighted_mean_rank_difference(generated: Sequence[str], golden: Sequence[str]) -> float:
    """WMRD = sum_i d(g_i) |r_i - g_i| / sum_i d(g_i) over golden items i (lower is better).

    g_i is i's golden position, r_i its generated position, K + 1 when the list lacks it
    (K = the golden list's length).
    """
    if not golden:
        return 0.0
    position = {item: p for p, item in enumerate(generated, 1)}
    missing = len(golden) + 1
    weighted = norm = 0.0
    for g, item in enumerate(golden, 1):
        weighted += discount(g) * abs(position.get(item, missing) - g)
        norm += discount(g)
    return weighted / norm


def intra_list_diversity(items: Sequence[str], category: Mapping[str, str]) -> float:
    """ILD = share of item pairs of different categories: sum_{i<j} [c_i != c_j] / C(n, 2)."""
    cats = [category.get(item, "") for item in items]
    pairs = len(cats) * (len(cats) - 1) // 2
    if pairs == 0:
        return 0.0
    same = sum(n * (n - 1) // 2 for n in Counter(cats).values())
    return (pairs - same) / pairs


def category_entropy(items: Sequence[str], category: Mapping[str, str]) -> float:
    """H = -sum_c p_c log2 p_c over the list's categories, p_c = share of items in c (bits)."""
    counts = Counter(category.get(item, "") for item in items)
    total = sum(counts.values())
    return -sum(n / total * math.log2(n / total) for n in counts.values()) if total else 0.0
