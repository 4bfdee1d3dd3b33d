"""Choose ``k`` cases from a similarity matrix (pure functions on numpy arrays).

* ``representative``: the ``k`` cases with the highest mean similarity to the others (typical cases).
* ``diverse``: the ``k`` cases with the lowest mean similarity (atypical cases).
* ``coverage``: ``k`` medoids, so that every candidate has a similar case in the subset (greedy k-medoids
  build followed by alternating refinement on the distance ``d_ij = (s_ii + s_jj) / 2 - s_ij``; for MI this is half
  the variation of information, a metric; for NCC and normalized MI it is ``1 - s_ij``).
* ``random``: a seeded uniform sample (the baseline).

All return candidate indices in selection order (best first; ``random`` and ``coverage`` in ascending index order).
Ties are broken by the lower index, so results are deterministic.
"""

from __future__ import annotations

import math

import numpy as np

from proxy_bundle.errors import InputError

__all__ = ["STRATEGIES", "subset_size", "representative", "diverse", "coverage", "random_subset", "choose"]

STRATEGIES = ("representative", "diverse", "coverage", "random")


def subset_size(n_candidates: int, fraction: float | None = None, count: int | None = None) -> int:
    """Number of cases to select: ``count``, or ``round(fraction * n)`` (at least 1). Exactly one must be given."""
    if n_candidates < 1:
        raise InputError("there are no candidate cases to select from", where="datalist")
    if (fraction is None) == (count is None):
        raise InputError("give exactly one of --data_fraction or --count", where="size")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
            raise InputError(f"data fraction must be a number in (0, 1], got {fraction!r}", where="--data_fraction")
        if not 0 < fraction <= 1:
            raise InputError(f"data fraction must be in (0, 1], got {fraction:g}", where="--data_fraction")
        return max(1, min(n_candidates, int(math.floor(fraction * n_candidates + 0.5))))
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) and not (
        isinstance(count, float) and count.is_integer()
    ):
        raise InputError(f"count must be a positive integer, got {count!r}", where="count")
    k = int(count)  # type: ignore[arg-type]
    if k < 1:
        raise InputError(f"count must be at least 1, got {k}", where="count")
    if k > n_candidates:
        raise InputError(f"count {k} is larger than the candidate pool ({n_candidates} cases)", where="count")
    return k


def _check(sim: np.ndarray, k: int) -> np.ndarray:
    s = np.asarray(sim, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise InputError(f"similarity matrix must be square, got shape {s.shape}", where="similarity")
    if not np.isfinite(s).all():
        raise InputError("similarity matrix contains NaN or infinity", where="similarity")
    if not 1 <= k <= s.shape[0]:
        raise InputError(f"cannot select {k} of {s.shape[0]} cases", where="size")
    return s


def _scores(s: np.ndarray) -> np.ndarray:
    n = s.shape[0]
    if n == 1:
        return np.zeros(1)
    return (s.sum(axis=1) - np.diag(s)) / (n - 1)


def representative(sim: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest mean similarities (highest first)."""
    s = _check(sim, k)
    return np.argsort(-_scores(s), kind="stable")[:k]


def diverse(sim: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` lowest mean similarities (lowest first)."""
    s = _check(sim, k)
    return np.argsort(_scores(s), kind="stable")[:k]


def distance_from_similarity(sim: np.ndarray) -> np.ndarray:
    """``d_ij = (s_ii + s_jj) / 2 - s_ij`` clipped at 0, with a zero diagonal."""
    s = np.asarray(sim, dtype=np.float64)
    diag = np.diag(s)
    d = (diag[:, None] + diag[None, :]) / 2.0 - s
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def coverage(sim: np.ndarray, k: int, max_iter: int = 100) -> np.ndarray:
    """``k`` medoids minimising the summed distance of every case to its closest selected case.

    Greedy build (each step adds the case that lowers the total the most), then alternate: assign every case to
    its closest medoid, move each medoid to the member with the smallest within-cluster distance; stop when
    nothing changes.
    """
    s = _check(sim, k)
    d = distance_from_similarity(s)
    n = d.shape[0]
    chosen: list[int] = []
    nearest = np.full(n, np.inf)
    for _ in range(k):
        # total cost if candidate c were added: sum_i min(nearest_i, d_ic)
        totals = np.minimum(nearest[:, None], d).sum(axis=0)
        totals[chosen] = np.inf
        c = int(np.argmin(totals))
        chosen.append(c)
        nearest = np.minimum(nearest, d[:, c])
    medoids = np.array(sorted(chosen))
    for _ in range(max_iter):
        assign = np.argmin(d[:, medoids], axis=1)
        updated = medoids.copy()
        for m in range(len(medoids)):
            members = np.flatnonzero(assign == m)
            if members.size == 0:
                continue
            within = d[np.ix_(members, members)].sum(axis=0)
            updated[m] = members[int(np.argmin(within))]
        updated = np.array(sorted(set(updated.tolist())))
        if len(updated) < k:  # two medoids collapsed onto one case: refill greedily
            near = d[:, updated].min(axis=1)
            while len(updated) < k:
                totals = np.minimum(near[:, None], d).sum(axis=0)
                totals[updated] = np.inf
                c = int(np.argmin(totals))
                updated = np.array(sorted([*updated.tolist(), c]))
                near = np.minimum(near, d[:, c])
        cost_old = d[:, medoids].min(axis=1).sum()
        cost_new = d[:, updated].min(axis=1).sum()
        if np.array_equal(updated, medoids) or cost_new >= cost_old - 1e-12:
            break
        medoids = updated
    return medoids


def random_subset(n: int, k: int, seed: int = 0) -> np.ndarray:
    """``k`` of ``n`` indices drawn uniformly without replacement (``numpy.random.default_rng(seed)``), sorted."""
    if not 1 <= k <= n:
        raise InputError(f"cannot select {k} of {n} cases", where="size")
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def choose(sim: np.ndarray, strategy: str, k: int, seed: int = 0) -> np.ndarray:
    """Dispatch on ``strategy`` (one of :data:`STRATEGIES`)."""
    if strategy == "representative":
        return representative(sim, k)
    if strategy == "diverse":
        return diverse(sim, k)
    if strategy == "coverage":
        return coverage(sim, k)
    if strategy == "random":
        return random_subset(np.asarray(sim).shape[0], k, seed)
    raise InputError(f"unknown strategy {strategy!r} (use one of {', '.join(STRATEGIES)})", where="strategy")
