"""From the benchmark table to every number of the report (pure).

A run record (see :mod:`proxy_bundle.study.runner`) carries ``val_dice`` (best validation Dice of the run:
what a search observes), ``ext_dice`` (Dice of that checkpoint on the external set), ``train_cost_s`` and
``startup_cost_s`` (load-independent seconds) and ``curve`` (per epoch: Dice and cumulative cost).

Only *complete* configurations enter the analysis: those with a successful run at every variant of the plan,
so that every method is replayed on the same configurations. Costs are training + validation seconds; the
process start-up of a trial is left out by default because the search engine's long-lived workers do not pay
it per trial (``include_startup`` adds it to every job).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from proxy_bundle.study.agreement import agreement_ci
from proxy_bundle.study.plan import Variant
from proxy_bundle.study.replay import Fidelity, Method, Table, bootstrap_regret

SETS = ("val", "ext")
BUDGETS: tuple[float, ...] = (0.125, 0.25, 0.5)  # cost fractions of the headline table
BASELINES: tuple[str, ...] = ("random", "asha", "hyperband")
PHASE2_TOP_K: tuple[int, ...] = (1, 2, 3, 4)
ASHA_PROXY_TOP_K: tuple[int, ...] = (1, 2)


def table_rows(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{variant: {config_id: record}}`` of successful runs."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        if r.get("status") == "ok":
            out.setdefault(r["variant"], {})[r["config_id"]] = dict(r)
    return out


def complete_configs(rows: Mapping[str, Mapping[str, Any]], variants: Sequence[Variant]) -> list[str]:
    """Configuration ids with a successful run at every variant, sorted."""
    ids = set(rows.get("reference", {}))
    for v in variants:
        ids &= set(rows.get(v.name, {}))
    return sorted(ids)


def _run_cost(r: Mapping[str, Any], include_startup: bool) -> float:
    train = r.get("train_cost_s")
    if train is None:  # a record from before load-independent costs: its wall-clock
        train = float(r.get("cost_s", math.nan))
    return float(train) + (float(r.get("startup_cost_s") or 0.0) if include_startup else 0.0)


def fidelity_of(runs: Sequence[Mapping[str, Any]], epochs: int, include_startup: bool = False) -> Fidelity:
    """Aligned arrays of one variant's runs (one per configuration, in order) for the replay.

    The curve's score is the best validation Dice up to each epoch (the checkpoint a stopped run keeps);
    an epoch without validation carries the previous best forward (NaN before the first validation). The
    curve's cost is the stored cumulative cost at each validated epoch, and ``epochs / total`` of the run's
    cost where the curve has no entry. ``include_startup`` adds the start-up once to every epoch's cost
    (a resumed job starts a process again).
    """
    k = len(runs)
    score = np.array([float(r.get("val_dice", math.nan)) for r in runs])
    cost = np.array([_run_cost(r, include_startup) for r in runs])
    cs = np.full((k, epochs), np.nan)
    cc = np.zeros((k, epochs))
    for i, r in enumerate(runs):
        startup = float(r.get("startup_cost_s") or 0.0) if include_startup else 0.0
        train = _run_cost(r, False)
        entries = {int(e[0]): e for e in (r.get("curve") or r.get("history") or [])}
        best = -math.inf
        for e in range(1, epochs + 1):
            ent = entries.get(e)
            if ent is not None and math.isfinite(float(ent[1])):
                best = max(best, float(ent[1]))
            cs[i, e - 1] = best if best > -math.inf else np.nan
            cc[i, e - 1] = (float(ent[2]) if ent is not None and len(ent) > 2 else train * e / epochs) + startup
        # the last epoch's score is the run's own best, whatever the curve held
        if math.isfinite(score[i]):
            cs[i, -1] = score[i]
    return Fidelity(score=score, cost=cost, curve_score=cs, curve_cost=cc)


def methods(variants: Sequence[Variant], eta: int = 2) -> list[Method]:
    """Every replayed method: the baselines, two-phase per proxy and top-k, ASHA at proxy fidelity + top-k."""
    out = [Method(kind, eta=eta) for kind in BASELINES]
    full_epochs = next(v.epochs for v in variants if v.family == "reference")
    for v in variants:
        if v.family in ("reference", "repeat"):
            continue
        out += [Method("two_phase", v.name, k, eta) for k in PHASE2_TOP_K]
    for v in variants:
        if v.family in ("network", "data", "both") and v.epochs == full_epochs and full_epochs >= eta:
            out += [Method("proxy_asha", v.name, k, eta) for k in ASHA_PROXY_TOP_K]
    return out


def fractions_grid() -> np.ndarray:
    """Cost fractions of the regret curves: 40 log-spaced points in [0.02, 1.5] plus the headline budgets and 1."""
    return np.unique(np.concatenate([np.geomspace(0.02, 1.5, 40), BUDGETS, [1.0]]))


def analyse(
    records: Iterable[Mapping[str, Any]],
    variants: Sequence[Variant],
    k: int = 3,
    replay_seeds: int = 200,
    bootstrap: int = 200,
    eta: int = 2,
    seed: int = 0,
    include_startup: bool = False,
    sets: Sequence[str] = SETS,
) -> dict[str, Any]:
    """Agreement with intervals, the noise ceiling, and every method's regret-vs-cost curve with bands.

    Returns a JSON-ready dict: ``n_configs`` (complete configurations), ``configs``, ``agreement`` per
    variant and set, ``noise_ceiling``, ``replay`` per method name, ``budget_table`` (regret at
    :data:`BUDGETS`), ``winner`` (lowest expected regret at 1/8 of the full cost) and per-variant costs.
    Fewer than 3 complete configurations leave ``replay`` empty. ``sets``: the case lists agreement is measured
    on (``("val",)`` when the data has no external set; ``sets`` in the result says which).
    """
    rows = table_rows(records)
    ids = complete_configs(rows, variants)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"n_configs": len(ids), "configs": ids, "k": k, "eta": eta,
                           "include_startup": include_startup, "replay_seeds": replay_seeds,
                           "bootstrap": bootstrap, "agreement": {}, "costs": {}, "replay": {},
                           "budget_table": [], "winner": None, "noise_ceiling": None, "sets": list(sets)}
    if len(ids) < 3:
        return out
    fids = {v.name: fidelity_of([rows[v.name][c] for c in ids], v.epochs, include_startup) for v in variants}
    ref_total = float(np.sum(fids["reference"].cost))
    for v in variants:
        runs = [rows[v.name][c] for c in ids]
        out["costs"][v.name] = {
            "family": v.family, "epochs": v.epochs, "width": v.width, "subset": v.subset,
            "cost_s": float(np.sum(fids[v.name].cost)),
            "cost_fraction": float(np.sum(fids[v.name].cost)) / ref_total if ref_total else math.nan,
            "startup_s": float(sum(float(r.get("startup_cost_s") or 0.0) for r in runs)),
            "wall_s": float(sum(float(r.get("wall_s") or 0.0) for r in runs)),
            "mean_val_dice": float(np.nanmean(fids[v.name].score)),
        }
        if v.family == "reference":
            continue
        out["agreement"][v.name] = {
            s: agreement_ci(
                {c: float(rows[v.name][c].get(f"{s}_dice", math.nan)) for c in ids},
                {c: float(rows["reference"][c].get(f"{s}_dice", math.nan)) for c in ids},
                k=k, n_boot=max(bootstrap, 2000) if bootstrap else 0, rng=rng)
            for s in sets
        }
    if "repeat" in out["agreement"]:
        out["noise_ceiling"] = out["agreement"]["repeat"]

    table = Table(fids)
    grid = fractions_grid()
    for m in methods(variants, eta):
        band = bootstrap_regret(m, table, grid, seeds=replay_seeds, bootstrap=bootstrap,
                                inner_seeds=2, rng=rng)
        out["replay"][m.name] = {
            "kind": m.kind, "proxy": m.proxy, "top_k": m.top_k,
            "fractions": [float(f) for f in grid],
            "mean": [float(x) for x in band["mean"]],
            "lower": [float(x) for x in band["lower"]],
            "upper": [float(x) for x in band["upper"]],
        }
    out["budget_table"] = budget_table(out["replay"])
    out["winner"] = winner(out["budget_table"])
    return out


def budget_table(replay: Mapping[str, Mapping[str, Any]], budgets: Sequence[float] = BUDGETS) -> list[dict]:
    """One row per method: mean regret and 95% band at each budget (fraction of the full search's cost)."""
    rows = []
    for name, r in replay.items():
        fr = np.asarray(r["fractions"])
        row: dict[str, Any] = {"method": name, "kind": r["kind"], "proxy": r["proxy"], "top_k": r["top_k"]}
        for b in budgets:
            j = int(np.argmin(np.abs(fr - b)))
            row[f"{b:g}"] = {"mean": r["mean"][j], "lower": r["lower"][j], "upper": r["upper"][j]}
        rows.append(row)
    return rows


def winner(rows: Sequence[Mapping[str, Any]], budget: float = BUDGETS[0]) -> dict[str, Any] | None:
    """The method with the lowest expected regret at ``budget`` (ties: the lower upper band, then the name),
    the best baseline and the best proxy method, and whether a baseline beats every proxy method."""
    key = f"{budget:g}"
    if not rows:
        return None

    def rank(r):
        return (r[key]["mean"], r[key]["upper"], r["method"])

    best = min(rows, key=rank)
    base = [r for r in rows if r["kind"] in BASELINES]
    prox = [r for r in rows if r["kind"] not in BASELINES]
    b = min(base, key=rank) if base else None
    p = min(prox, key=rank) if prox else None
    return {
        "budget": budget,
        "method": best["method"], "kind": best["kind"], "proxy": best["proxy"], "top_k": best["top_k"],
        "regret": best[key],
        "best_baseline": b and {"method": b["method"], "regret": b[key]},
        "best_proxy": p and {"method": p["method"], "regret": p[key]},
        "baseline_beats_every_proxy": bool(b and p and b[key]["mean"] < p[key]["mean"]),
    }
