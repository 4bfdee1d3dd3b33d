"""Search methods replayed from the tabular benchmark (pure functions).

Every configuration of a study was trained at every fidelity with its per-epoch validation curve stored, so a
search method can be replayed from the table instead of being run again, as in tabular HPO benchmarks
(HPOBench: Eggensperger et al., NeurIPS 2021 Datasets and Benchmarks; NAS-Bench-101: Ying et al., ICML 2019).

A replay sees a *pool* of configurations (indices into the table) in a random *order* and returns its anytime
*trajectory*: after every training job, the cumulative cost and the configuration the method would return
now (its incumbent). Regret is measured on the reference: the best reference validation Dice of the pool
minus the reference validation Dice of the incumbent. Cost is expressed as a fraction of the full-fidelity
search (every configuration of the pool trained at full fidelity).

Methods:

* :func:`random_search`: configurations at full fidelity in random order; incumbent = best so far.
* :func:`asha`: Asynchronous Successive Halving (Li et al., "A System for Massively Parallel Hyperparameter
  Tuning", MLSys 2020), replayed with one worker from the stored per-epoch curves; a promoted configuration
  resumes from its checkpoint, so a promotion costs only the extra epochs.
* :func:`hyperband`: Hyperband (Li et al., "Hyperband: A Novel Bandit-Based Approach to Hyperparameter
  Optimization", JMLR 18(185), 2018): successive-halving brackets from the most to the least aggressive.
* :func:`two_phase`: the proxy search of Nath et al. (MICCAI 2021): phase 1 trains every configuration at the
  proxy fidelity, phase 2 retrains the proxy's top-k at full fidelity and keeps the best.
* :func:`proxy_asha`: ASHA at the proxy fidelity as phase 1, then the top-k retrained at full fidelity.

Before a method has any result its incumbent is a configuration picked at random, whose expected regret is
the pool's mean regret (:func:`regret_at`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Fidelity:
    """One fidelity's results for the K configurations of a table (aligned arrays).

    ``score[k]``: best validation Dice of the run (what a search observes; NaN: no run).
    ``cost[k]``: cost of the whole run (seconds).
    ``curve_score[k, e]``: best validation Dice up to epoch ``e + 1`` (shape K x epochs; NaN where not validated).
    ``curve_cost[k, e]``: cumulative cost up to the end of epoch ``e + 1`` (seconds).
    """

    score: np.ndarray
    cost: np.ndarray
    curve_score: np.ndarray | None = None
    curve_cost: np.ndarray | None = None

    @property
    def epochs(self) -> int:
        return 0 if self.curve_score is None else int(self.curve_score.shape[1])


Trajectory = tuple[np.ndarray, np.ndarray]  # (cumulative cost, incumbent table index) after every job


def _trajectory(costs: list[float], chosen: list[int]) -> Trajectory:
    return np.asarray(costs, float), np.asarray(chosen, int)


def random_search(order: Sequence[int], full: Fidelity) -> Trajectory:
    """Full-fidelity random search: ``order`` is the sampled sequence of configurations."""
    costs, chosen, total, best = [], [], 0.0, None
    for i in order:
        total += float(full.cost[i])
        if best is None or full.score[i] > full.score[best]:
            best = int(i)
        costs.append(total)
        chosen.append(best)
    return _trajectory(costs, chosen)


def rung_epochs(max_epochs: int, eta: int, min_epochs: int = 1) -> list[int]:
    """Resources (epochs) of the rungs: ``min_epochs * eta**r`` below ``max_epochs``, then ``max_epochs``."""
    if eta < 2 or min_epochs < 1 or max_epochs < min_epochs:
        raise ValueError(f"need eta >= 2 and 1 <= min_epochs <= max_epochs, got {eta}, {min_epochs}, {max_epochs}")
    out, e = [], min_epochs
    while e < max_epochs:
        out.append(e)
        e *= eta
    return out + [max_epochs]


def _at(fid: Fidelity, i: int, epochs: int) -> tuple[float, float]:
    """(best score up to ``epochs``, cumulative cost) of configuration ``i`` on ``fid``'s curve."""
    s = fid.curve_score[i, epochs - 1]
    return (float(s) if math.isfinite(s) else -math.inf), float(fid.curve_cost[i, epochs - 1])


def asha(order: Sequence[int], fid: Fidelity, eta: int = 2, min_epochs: int = 1) -> Trajectory:
    """ASHA (Li et al., MLSys 2020, Algorithm 2) with one worker over the finite pool ``order``.

    Each job either promotes a configuration in the top ``1/eta`` of a rung (highest rung first) that was not
    promoted yet, or starts the next configuration of ``order`` at the bottom rung; the replay ends when the
    pool is exhausted and nothing is promotable. Incumbent: the best score at the highest rung reached.
    """
    return _asha(order, fid, eta, min_epochs)[0]


def _asha(order: Sequence[int], fid: Fidelity, eta: int, min_epochs: int) -> tuple[Trajectory, dict[int, int]]:
    rungs = rung_epochs(fid.epochs, eta, min_epochs)
    members: list[list[tuple[float, int, int]]] = [[] for _ in rungs]  # (score, position, index)
    promoted: list[set[int]] = [set() for _ in rungs]
    pos = {int(i): p for p, i in enumerate(order)}
    costs, chosen, total, nxt = [], [], 0.0, 0
    best: tuple[int, float, int] | None = None  # (rung, score, -position) of the incumbent
    best_i = -1
    reached: dict[int, int] = {}
    while True:
        job = None
        for r in range(len(rungs) - 2, -1, -1):
            n_top = len(members[r]) // eta
            if n_top == 0:
                continue
            top = sorted(members[r], key=lambda m: (-m[0], m[1]))[:n_top]
            cand = [m[2] for m in top if m[2] not in promoted[r]]
            if cand:
                promoted[r].add(cand[0])
                job = (r + 1, cand[0])
                break
        if job is None:
            if nxt >= len(order):
                break
            job = (0, int(order[nxt]))
            nxt += 1
        r, i = job
        score, cum = _at(fid, i, rungs[r])
        before = _at(fid, i, rungs[r - 1])[1] if r > 0 else 0.0
        total += cum - before
        members[r].append((score, pos[i], i))
        reached[i] = r
        key = (r, score, -pos[i])
        if best is None or key > best:
            best, best_i = key, i
        costs.append(total)
        chosen.append(best_i)
    return _trajectory(costs, chosen), reached


def hyperband(order: Sequence[int], fid: Fidelity, eta: int = 2, min_epochs: int = 1) -> Trajectory:
    """Hyperband (Li et al., JMLR 2018, Algorithm 1) with R = the curves' epochs, over the finite pool ``order``.

    Bracket ``s = s_max .. 0`` draws ``ceil((s_max + 1) / (s + 1) * eta**s)`` new configurations (fewer when
    the pool runs out) at ``R * eta**-s`` epochs and runs successive halving, keeping the top ``1/eta`` at each
    step; promoted configurations resume from their checkpoint. Incumbent: the best score at the highest
    resource evaluated so far.
    """
    big_r = fid.epochs
    s_max = int(math.floor(math.log(big_r / min_epochs) / math.log(eta) + 1e-9))
    pos = {int(i): p for p, i in enumerate(order)}
    costs, chosen, total, nxt = [], [], 0.0, 0
    best: tuple[int, float, int] | None = None
    best_i = -1
    for s in range(s_max, -1, -1):
        n = int(math.ceil((s_max + 1) / (s + 1) * eta ** s))
        bracket = [int(i) for i in order[nxt:nxt + n]]
        nxt += len(bracket)
        if not bracket:
            break
        done: dict[int, int] = {}  # index -> epochs trained so far
        for step in range(s + 1):
            epochs = max(min_epochs, min(big_r, int(round(big_r * eta ** (step - s)))))
            scored = []
            for i in bracket:
                score, cum = _at(fid, i, epochs)
                before = _at(fid, i, done[i])[1] if i in done else 0.0
                total += cum - before
                done[i] = epochs
                scored.append((score, pos[i], i))
                key = (epochs, score, -pos[i])
                if best is None or key > best:
                    best, best_i = key, i
                costs.append(total)
                chosen.append(best_i)
            keep = max(1, len(bracket) // eta)
            bracket = [m[2] for m in sorted(scored, key=lambda m: (-m[0], m[1]))[:keep]]
            if epochs >= big_r:
                break
    return _trajectory(costs, chosen)


def two_phase(order: Sequence[int], proxy: Fidelity, full: Fidelity, top_k: int) -> Trajectory:
    """Two-phase proxy search (Nath et al., MICCAI 2021): phase 1 on every configuration of ``order`` at the
    proxy fidelity (incumbent: the proxy's best so far), phase 2 retrains the proxy's ``top_k`` (ties broken
    by ``order``) at full fidelity, best proxy first (incumbent: the best reference score retrained)."""
    costs, chosen, total = [], [], 0.0
    pos = {int(i): p for p, i in enumerate(order)}
    best = None
    for i in order:
        total += float(proxy.cost[i])
        if best is None or proxy.score[i] > proxy.score[best]:
            best = int(i)
        costs.append(total)
        chosen.append(best)
    shortlist = sorted((int(i) for i in order), key=lambda i: (-_finite_or(proxy.score[i]), pos[i]))
    return _phase2(shortlist[:max(1, top_k)], full, costs, chosen, total)


def proxy_asha(order: Sequence[int], proxy: Fidelity, full: Fidelity, top_k: int, eta: int = 2) -> Trajectory:
    """ASHA at the proxy fidelity as phase 1, then the ``top_k`` by (rung reached, score) retrained at full
    fidelity; the incumbent is ASHA's during phase 1 and the best reference score retrained in phase 2."""
    (c1, ch1), reached = _asha(order, proxy, eta, 1)
    rungs = rung_epochs(proxy.epochs, eta)
    pos = {int(i): p for p, i in enumerate(order)}
    rank = sorted(reached, key=lambda i: (-reached[i], -_finite_or(_at(proxy, i, rungs[reached[i]])[0]), pos[i]))
    total = float(c1[-1]) if len(c1) else 0.0
    return _phase2(rank[:max(1, top_k)], full, list(c1), list(ch1), total)


def _phase2(shortlist: list[int], full: Fidelity, costs: list, chosen: list, total: float) -> Trajectory:
    best = None
    for i in shortlist:
        total += float(full.cost[i])
        if best is None or full.score[i] > full.score[best]:
            best = i
        costs.append(total)
        chosen.append(best)
    return _trajectory(costs, chosen)


def _finite_or(x: float, default: float = -math.inf) -> float:
    return float(x) if math.isfinite(float(x)) else default


def regret_at(traj: Trajectory, truth: np.ndarray, pool: Sequence[int], budgets: np.ndarray) -> np.ndarray:
    """Regret of the incumbent once ``budgets`` (seconds, any shape) have been spent.

    ``truth``: reference score per table index. Before the first job finishes, the incumbent is a random
    configuration of the pool: its expected regret (the pool's mean regret) is returned.
    """
    pool_scores = truth[np.asarray(pool, int)]
    best = float(np.max(pool_scores))
    costs, chosen = traj
    idx = np.searchsorted(costs, np.asarray(budgets, float), side="right") - 1
    regrets = best - truth[chosen] if len(chosen) else np.array([])
    out = np.full(np.shape(budgets), max(0.0, best - float(np.mean(pool_scores))))
    ok = idx >= 0
    out[ok] = regrets[idx[ok]]
    return out


@dataclass(frozen=True)
class Method:
    """A replayable search method: ``kind`` in random, asha, hyperband, two_phase, proxy_asha.

    ``proxy``: the table variant used as the proxy fidelity (two_phase, proxy_asha); ``top_k``: phase-2 size.
    """

    kind: str
    proxy: str | None = None
    top_k: int = 1
    eta: int = 2

    @property
    def name(self) -> str:
        if self.kind in ("random", "asha", "hyperband"):
            return {"random": "random search", "asha": "ASHA", "hyperband": "Hyperband"}[self.kind]
        prefix = "two-phase" if self.kind == "two_phase" else "ASHA-proxy"
        return f"{prefix} {self.proxy} top-{self.top_k}"

    def __call__(self, order: Sequence[int], table: "Table") -> Trajectory:
        full = table.fidelities["reference"]
        if self.kind == "random":
            return random_search(order, full)
        if self.kind == "asha":
            return asha(order, full, self.eta)
        if self.kind == "hyperband":
            return hyperband(order, full, self.eta)
        proxy = table.fidelities[self.proxy]
        if self.kind == "two_phase":
            return two_phase(order, proxy, full, self.top_k)
        if self.kind == "proxy_asha":
            return proxy_asha(order, proxy, full, self.top_k, self.eta)
        raise ValueError(f"unknown method kind {self.kind!r}")


@dataclass(frozen=True)
class Table:
    """The benchmark table: variant name -> :class:`Fidelity` over the same K configurations."""

    fidelities: dict[str, Fidelity]

    @property
    def k(self) -> int:
        return len(self.fidelities["reference"].score)

    def take(self, idx: np.ndarray) -> "Table":
        """The table of configurations ``idx`` (repeats allowed: a bootstrap resample)."""
        def sub(a):
            return None if a is None else a[idx]
        return Table({n: Fidelity(sub(f.score), sub(f.cost), sub(f.curve_score), sub(f.curve_cost))
                      for n, f in self.fidelities.items()})


def expected_regret(method: Method, table: Table, fractions: np.ndarray, seeds: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Mean regret at each cost fraction (of the full-fidelity search over the table) over ``seeds`` random
    orderings of the table's configurations. Shape: ``fractions.shape``."""
    full = table.fidelities["reference"]
    budgets = np.asarray(fractions, float) * float(np.sum(full.cost))
    pool = np.arange(table.k)
    acc = np.zeros(np.shape(budgets))
    for _ in range(seeds):
        acc += regret_at(method(rng.permutation(pool), table), full.score, pool, budgets)
    return acc / seeds


def bootstrap_regret(method: Method, table: Table, fractions: np.ndarray, seeds: int = 200,
                     bootstrap: int = 200, inner_seeds: int = 10, rng: np.random.Generator | None = None,
                     ) -> dict[str, np.ndarray]:
    """Expected regret vs cost with a 95% bootstrap band.

    ``mean``: expected regret over ``seeds`` orderings of the table's configurations. ``lower``/``upper``:
    2.5 / 97.5 percentiles of the expected regret over ``bootstrap`` resamples of the configurations with
    replacement (``inner_seeds`` orderings each): the uncertainty of having measured only K configurations of
    the search space (percentile bootstrap: Efron & Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13).
    A configuration drawn twice is two configurations with identical results.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    fractions = np.asarray(fractions, float)
    mean = expected_regret(method, table, fractions, seeds, rng)
    if bootstrap < 1:
        return {"mean": mean, "lower": mean.copy(), "upper": mean.copy()}
    boots = np.empty((bootstrap, len(fractions)))
    for b in range(bootstrap):
        boots[b] = expected_regret(method, table.take(rng.integers(0, table.k, size=table.k)), fractions,
                                   inner_seeds, rng)
    lower, upper = np.percentile(boots, [2.5, 97.5], axis=0)
    return {"mean": mean, "lower": lower, "upper": upper}
