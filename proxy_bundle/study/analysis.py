"""From the table of finished runs to every number of the report (pure).

A run record (see :mod:`proxy_bundle.study.runner`) carries ``val_dice`` (best validation Dice of the
run: what a search observes), ``ext_dice`` (Dice of that checkpoint on the external set) and ``cost_s``
(wall-clock seconds of the trial, process start-up included). Agreement is computed per evaluation set:
a variant's Dice on a set against the reference's Dice on the same set. Searches are replayed with the
variant's validation Dice as the phase-1 signal and the reference's validation Dice as the truth (what
phase 2 selects by); the external Dice of the configuration a search returns is reported next to it.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Mapping, Sequence

from proxy_bundle.study.agreement import agreement
from proxy_bundle.study.plan import Variant
from proxy_bundle.study.search import (
    full_search_cost,
    random_search_curve,
    speedup_at_equal_regret,
    two_phase,
    two_phase_curve,
)

SETS = ("val", "ext")


def table(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{variant: {config_id: record}}`` of successful runs."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        if r.get("status") == "ok":
            out.setdefault(r["variant"], {})[r["config_id"]] = dict(r)
    return out


def scores(runs: Mapping[str, Mapping[str, Any]], key: str) -> dict[str, float]:
    return {cid: float(r[key]) for cid, r in runs.items() if _finite(r.get(key))}


def analyse(
    records: Iterable[Mapping[str, Any]],
    variants: Sequence[Variant],
    k: int = 3,
    tolerance: float = 0.01,
) -> dict[str, Any]:
    """Per-variant agreement, cost and replayed searches, plus the summary the README table needs."""
    tab = table(records)
    ref_runs = tab.get("reference", {})
    ref = {s: scores(ref_runs, f"{s}_dice") for s in SETS}
    ref_cost = scores(ref_runs, "cost_s")
    ref_total = sum(ref_cost.values())

    per_variant: dict[str, Any] = {}
    for v in variants:
        runs = tab.get(v.name, {})
        cost = scores(runs, "cost_s")
        entry: dict[str, Any] = {
            "family": v.family,
            "variant": v.as_dict(),
            "n_runs": len(runs),
            "cost_s": sum(cost.values()),
            "mean_cost_s": statistics.fmean(cost.values()) if cost else math.nan,
            "cost_ratio": (sum(cost.values()) / ref_total) if ref_total else math.nan,
            "scores": {s: scores(runs, f"{s}_dice") for s in SETS},
            "costs": cost,
            "agreement": {s: agreement(scores(runs, f"{s}_dice"), ref[s], k) for s in SETS},
        }
        if v.family != "reference" and len(ref["val"]) >= 1 and entry["scores"]["val"]:
            entry["search"] = _searches(entry["scores"]["val"], cost, ref, ref_cost, tolerance)
        per_variant[v.name] = entry

    return {
        "k": k,
        "tolerance": tolerance,
        "reference": {
            "scores": ref,
            "costs": ref_cost,
            "full_search_cost_s": full_search_cost(ref_cost, sorted(ref_cost)),
            "random_search": random_search_curve(ref["val"], ref_cost) if ref["val"] else [],
        },
        "variants": per_variant,
        "summary": summarise(per_variant),
    }


def _searches(
    proxy: Mapping[str, float],
    proxy_cost: Mapping[str, float],
    ref: Mapping[str, Mapping[str, float]],
    ref_cost: Mapping[str, float],
    tolerance: float,
) -> dict[str, Any]:
    proxy = {c: s for c, s in proxy.items() if c in ref_cost and c in proxy_cost}
    truth = {c: s for c, s in ref["val"].items() if c in ref_cost}
    if not proxy or not truth:
        return {}
    best_ext = max(ref["ext"].values()) if ref["ext"] else math.nan

    def with_ext(o) -> dict[str, Any]:
        d = o.as_dict()
        d["ext_regret"] = best_ext - ref["ext"].get(o.chosen, math.nan)
        return d

    return {
        "k1": with_ext(two_phase(proxy, proxy_cost, truth, ref_cost, 1)),
        "equal_regret": with_ext(speedup_at_equal_regret(proxy, proxy_cost, truth, ref_cost, tolerance)),
        "exact_best": with_ext(speedup_at_equal_regret(proxy, proxy_cost, truth, ref_cost, 0.0)),
        "curve": [with_ext(o) for o in two_phase_curve(proxy, proxy_cost, truth, ref_cost)],
    }


def summarise(per_variant: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Headline numbers: best proxy-data strategy vs the random spread, the proxy network, the searches."""
    out: dict[str, Any] = {}
    for s in SETS:
        tau = {n: e["agreement"][s]["kendall"] for n, e in per_variant.items()}
        data = {n: t for n, t in tau.items() if per_variant[n]["family"] == "data" and _finite(t)}
        rand = [t for n, t in tau.items() if per_variant[n]["family"] == "random" and _finite(t)]
        best = max(data, key=data.get) if data else None
        out[s] = {
            "tau": tau,
            "best_data_variant": best,
            "best_data_tau": data[best] if best else math.nan,
            "random_tau_mean": statistics.fmean(rand) if rand else math.nan,
            "random_tau_sd": statistics.stdev(rand) if len(rand) > 1 else math.nan,
            "random_tau_min": min(rand) if rand else math.nan,
            "random_tau_max": max(rand) if rand else math.nan,
            "n_random": len(rand),
            "data_beats_random_max": bool(best and rand and data[best] > max(rand)),
            "data_variants_above_random_mean": sorted(
                n for n, t in data.items() if rand and t > statistics.fmean(rand)
            ),
        }
    out["search"] = {
        n: {
            "k1_speedup": e["search"]["k1"]["speedup"],
            "k1_regret": e["search"]["k1"]["regret"],
            "k1_ext_regret": e["search"]["k1"]["ext_regret"],
            "equal_regret_speedup": e["search"]["equal_regret"]["speedup"],
            "equal_regret_top_k": e["search"]["equal_regret"]["top_k"],
            "exact_best_speedup": e["search"]["exact_best"]["speedup"],
            "exact_best_top_k": e["search"]["exact_best"]["top_k"],
        }
        for n, e in per_variant.items()
        if e.get("search")
    }
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))
