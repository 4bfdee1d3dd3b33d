"""Rank agreement between a proxy's scores and the reference scores of the same configurations.

All functions are pure. Scores are mappings ``config_id -> score`` (higher is better); only the
configurations present in both mappings with finite scores are compared, so a failed run simply drops
out of the comparison instead of poisoning it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from scipy import stats

Scores = Mapping[str, float]


def paired(proxy: Scores, reference: Scores) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Configuration ids present (with finite scores) in both mappings, sorted, and the aligned arrays."""
    ids = sorted(k for k in proxy.keys() & reference.keys() if _finite(proxy[k]) and _finite(reference[k]))
    return ids, np.array([proxy[k] for k in ids], float), np.array([reference[k] for k in ids], float)


def spearman(proxy: Scores, reference: Scores) -> float:
    """Spearman's rho; NaN with fewer than 3 pairs or when either side is constant (no ranking to compare)."""
    _, p, r = paired(proxy, reference)
    if len(p) < 3 or np.ptp(p) == 0 or np.ptp(r) == 0:
        return math.nan
    return float(stats.spearmanr(p, r).statistic)


def kendall(proxy: Scores, reference: Scores) -> float:
    """Kendall's tau-b (ties handled as scipy does); NaN with fewer than 3 pairs or a constant side."""
    _, p, r = paired(proxy, reference)
    if len(p) < 3 or np.ptp(p) == 0 or np.ptp(r) == 0:
        return math.nan
    return float(stats.kendalltau(p, r).statistic)


def top_k(scores: Scores, k: int) -> list[str]:
    """The ``k`` best ids; ties broken by id so the result is deterministic."""
    return [cid for cid, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def top_k_overlap(proxy: Scores, reference: Scores, k: int) -> float:
    """Fraction of the reference's top-``k`` configurations that are also in the proxy's top-``k``."""
    ids, p, r = paired(proxy, reference)
    if not ids:
        return math.nan
    k = max(1, min(k, len(ids)))
    ps = dict(zip(ids, p))
    rs = dict(zip(ids, r))
    return len(set(top_k(ps, k)) & set(top_k(rs, k))) / k


def regret(proxy: Scores, reference: Scores) -> float:
    """Reference score of the reference-best configuration minus that of the proxy-best configuration.

    When several configurations tie for the proxy's best score, a search would pick any of them, so the
    expected regret over that tie is returned (the mean reference score of the tied configurations).
    """
    ids, p, r = paired(proxy, reference)
    if not ids:
        return math.nan
    tied = p == p.max()
    return float(r.max() - r[tied].mean())


def agreement(proxy: Scores, reference: Scores, k: int = 3) -> dict[str, float]:
    """Every agreement number of one proxy against the reference, as plain floats."""
    ids, _, _ = paired(proxy, reference)
    return {
        "n": len(ids),
        "spearman": spearman(proxy, reference),
        "kendall": kendall(proxy, reference),
        f"top{k}_overlap": top_k_overlap(proxy, reference, k),
        "regret": regret(proxy, reference),
    }


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(float(x))


def agreement_ci(proxy: Scores, reference: Scores, k: int = 3, n_boot: int = 1000,
                 rng: np.random.Generator | None = None, level: float = 0.95) -> dict[str, Any]:
    """Kendall tau-b and Spearman rho with p-values and percentile bootstrap intervals, plus top-k and regret.

    p-values are scipy's (``kendalltau``: exact for small n without ties, else the normal approximation;
    ``spearmanr``: t distribution), two-sided, null of no association. Intervals resample the paired
    configurations with replacement ``n_boot`` times (Efron & Tibshirani, 1993); a resample with a constant
    side has no rank correlation and is left out. Returns ``{"n", "kendall", "kendall_p", "kendall_ci",
    "spearman", "spearman_p", "spearman_ci", "top<k>_overlap", "regret"}``; NaN where undefined.
    """
    ids, p, r = paired(proxy, reference)
    out: dict[str, Any] = dict(agreement(proxy, reference, k))
    out["kendall_p"] = out["spearman_p"] = math.nan
    out["kendall_ci"] = out["spearman_ci"] = [math.nan, math.nan]
    if len(ids) < 3 or np.ptp(p) == 0 or np.ptp(r) == 0:
        return out
    out["kendall_p"] = float(stats.kendalltau(p, r).pvalue)
    out["spearman_p"] = float(stats.spearmanr(p, r).pvalue)
    if n_boot < 1:
        return out
    rng = rng if rng is not None else np.random.default_rng(0)
    j = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    taus, rhos = _tau_b_rho(p[j], r[j])
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    if np.isfinite(taus).any():
        out["kendall_ci"] = [float(x) for x in np.nanpercentile(taus, q)]
        out["spearman_ci"] = [float(x) for x in np.nanpercentile(rhos, q)]
    return out


def _tau_b_rho(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kendall tau-b and Spearman rho of every row pair of ``x``, ``y`` (shape B x n), NaN for a constant row.

    Vectorised over the bootstrap resamples (scipy's functions take one sample at a time, which made the
    intervals the slowest part of a report); equal to ``scipy.stats.kendalltau`` / ``spearmanr`` (tested).
    """
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = (sx * sy).sum((1, 2)) / np.sqrt((sx * sx).sum((1, 2)) * (sy * sy).sum((1, 2)))
        rx = stats.rankdata(x, axis=1)
        ry = stats.rankdata(y, axis=1)
        rx -= rx.mean(1, keepdims=True)
        ry -= ry.mean(1, keepdims=True)
        rho = (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    return tau, rho
