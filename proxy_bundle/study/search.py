"""Simulated searches over a measured table of runs (pure).

Every configuration of the study was trained at every fidelity, so a search can be replayed from the
table instead of being run again:

* **full-fidelity search**: train all ``K`` configurations at full fidelity and keep the best by its
  reference score. Cost = the sum of the reference runs' wall-clock seconds; regret = 0 by construction.
* **random full-fidelity search of n < K configurations**: the cheaper baseline a user could run instead;
  its expected regret over all n-subsets is exact (order statistics), its cost ``n`` times the mean
  reference cost.
* **two-phase search** with proxy ``P`` and ``top_k``: phase 1 trains all ``K`` configurations at the
  proxy fidelity (cost = the sum of ``P``'s wall-clock seconds), phase 2 retrains the proxy's ``top_k`` at
  full fidelity (their reference costs) and keeps the best by reference score.

**Speedup at equal regret** = cost of the full-fidelity search / cost of the two-phase search with the
smallest ``top_k`` whose regret is at most the full search's regret (zero) plus ``tolerance``. Because the
two-phase search with ``top_k = K`` always reaches zero regret, the number always exists; it is below 1
when the proxy ranks so badly that phase 2 must retrain (almost) everything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

from proxy_bundle.study.agreement import paired, top_k

Scores = Mapping[str, float]


@dataclass(frozen=True)
class SearchOutcome:
    """One replayed search."""

    top_k: int
    cost_s: float  # wall-clock seconds of the whole search (both phases)
    phase1_s: float
    phase2_s: float
    chosen: str  # the configuration the search returns
    regret: float  # reference score of the reference-best config minus that of ``chosen``
    speedup: float  # full-fidelity search cost / cost_s

    def as_dict(self) -> dict:
        return asdict(self)


def full_search_cost(ref_costs: Mapping[str, float], ids: list[str]) -> float:
    """Wall-clock seconds of training every configuration at full fidelity."""
    return float(sum(ref_costs[i] for i in ids))


def two_phase(
    proxy: Scores,
    proxy_costs: Mapping[str, float],
    reference: Scores,
    ref_costs: Mapping[str, float],
    k: int,
) -> SearchOutcome:
    """Replay a two-phase search (phase 1 at proxy fidelity on all configurations, phase 2 on the top ``k``)."""
    ids, _, _ = paired(proxy, reference)
    if not ids:
        raise ValueError("no configuration has both a proxy and a reference score")
    k = max(1, min(k, len(ids)))
    shortlist = top_k({i: proxy[i] for i in ids}, k)
    chosen = max(shortlist, key=lambda i: (reference[i], i))
    phase1 = float(sum(proxy_costs[i] for i in ids))
    phase2 = float(sum(ref_costs[i] for i in shortlist))
    full = full_search_cost(ref_costs, ids)
    best = max(reference[i] for i in ids)
    return SearchOutcome(
        top_k=k,
        cost_s=phase1 + phase2,
        phase1_s=phase1,
        phase2_s=phase2,
        chosen=chosen,
        regret=float(best - reference[chosen]),
        speedup=full / (phase1 + phase2) if phase1 + phase2 > 0 else math.nan,
    )


def two_phase_curve(
    proxy: Scores, proxy_costs: Mapping[str, float], reference: Scores, ref_costs: Mapping[str, float]
) -> list[SearchOutcome]:
    """The two-phase search for every ``top_k`` from 1 to K."""
    ids, _, _ = paired(proxy, reference)
    return [two_phase(proxy, proxy_costs, reference, ref_costs, k) for k in range(1, len(ids) + 1)]


def speedup_at_equal_regret(
    proxy: Scores,
    proxy_costs: Mapping[str, float],
    reference: Scores,
    ref_costs: Mapping[str, float],
    tolerance: float = 0.0,
) -> SearchOutcome:
    """The cheapest two-phase search whose regret matches the full-fidelity search (regret <= ``tolerance``)."""
    curve = two_phase_curve(proxy, proxy_costs, reference, ref_costs)
    # regret is not monotone in cost only through phase-2 costs; pick the cheapest that qualifies.
    ok = [o for o in curve if o.regret <= tolerance + 1e-12]
    return min(ok, key=lambda o: (o.cost_s, o.top_k))


def random_search_curve(reference: Scores, ref_costs: Mapping[str, float]) -> list[dict[str, float]]:
    """Expected regret and cost of a full-fidelity random search over ``n`` of the K configurations, n = 1..K.

    With scores sorted ascending, the best of a uniformly drawn n-subset is the i-th smallest with
    probability C(i-1, n-1) / C(K, n).
    """
    ids = sorted(i for i in reference if math.isfinite(reference[i]) and i in ref_costs)
    scores = sorted(reference[i] for i in ids)
    big_k = len(scores)
    mean_cost = sum(ref_costs[i] for i in ids) / big_k if big_k else math.nan
    out = []
    for n in range(1, big_k + 1):
        total = math.comb(big_k, n)
        expected_best = sum(math.comb(i, n - 1) * scores[i] for i in range(n - 1, big_k)) / total
        out.append({"n": n, "cost_s": n * mean_cost, "expected_regret": scores[-1] - expected_best})
    return out
