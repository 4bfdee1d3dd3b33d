"""Search accounting: every trial, per-phase wall clock, the result, and the speedup over a full-fidelity search.

:func:`summarize` is pure (trials in, JSON-ready dict out); :func:`write_outputs` writes ``results.json``,
``best_params.yaml`` and the plots atomically.

Speedup is computed on *compute* time (the sum of trial wall-clock seconds), which is what a search costs
whatever the number of workers and however often it was resumed. The full-fidelity reference is either
*measured* (a ``proxy=none`` search with the same number of trials, found in the work dir or given) or
*estimated* as ``n_trials x`` the mean wall time of this search's phase-2 trials, which are exactly
full-fidelity trainings of the same template (an unpruned full search would train ``n_trials`` of them).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from optuna.trial import FrozenTrial, TrialState

from proxy_bundle.atomic import write_json, write_yaml
from proxy_bundle.hpo.sampling import retry_of, slot_of

__all__ = ["find_baseline", "spearman", "summarize", "trial_record", "write_outputs"]


def _iso(dt: Any) -> str | None:
    return dt.isoformat() if dt is not None else None


def trial_record(t: FrozenTrial, phase: int, slot: int | None = None) -> dict[str, Any]:
    """One trial as plain data (``state`` is Optuna's: COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    a = t.user_attrs
    rec: dict[str, Any] = {
        "number": t.number,
        "phase": phase,
        "slot": slot if phase == 1 else None,
        "rank": a.get("rank") if phase == 2 else None,
        "state": t.state.name,
        "params": dict(t.params),
        "fidelity": a.get("fidelity"),
        "scores": [{"epoch": int(e), "dice": float(s)} for e, s in a.get("scores", [])],
        "score": float(t.value) if t.value is not None and t.state == TrialState.COMPLETE else None,
        "wall_s": a.get("wall_s"),
        "started": _iso(t.datetime_start),
        "completed": _iso(t.datetime_complete),
        "trial_dir": a.get("trial_dir"),
        "model_path": a.get("model_path"),
    }
    if retry_of(t) is not None:
        rec["retry_of"] = retry_of(t)
    for key in ("train_s", "val_s", "resumed_from_epoch"):
        if a.get(key) is not None:
            rec[key] = a[key]
    if a.get("interrupted") or (t.state == TrialState.FAIL and not a.get("error") and not a.get("surplus")):
        rec["interrupted"] = True  # failed without an error: its worker died (Optuna's stale-heartbeat check)
    if a.get("error"):
        rec["error"] = a["error"]
    if phase == 2:
        rec["source_trial"] = a.get("source_trial")
        rec["proxy_score"] = a.get("proxy_score")
    return rec


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); ``None`` below 3 pairs or for a constant side."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import spearmanr  # imported late: scipy.stats alone takes seconds to import

    rho = spearmanr(x, y).statistic
    return None if rho is None or math.isnan(rho) else float(rho)


def _phase_stats(records: Sequence[dict]) -> dict[str, Any]:
    ran = [r for r in records if r["wall_s"] is not None]
    starts = [r["started"] for r in records if r["started"]]
    ends = [r["completed"] for r in records if r["completed"]]
    span = None
    if starts and ends:
        from datetime import datetime

        span = (datetime.fromisoformat(max(ends)) - datetime.fromisoformat(min(starts))).total_seconds()
    states: dict[str, int] = {}
    for r in records:
        states[r["state"]] = states.get(r["state"], 0) + 1
    return {"trials": len(records), "states": states, "compute_s": float(sum(r["wall_s"] for r in ran)),
            "span_s": span}


def summarize(*, study_name: str, proxy_mode: str, storage: str, config: Mapping[str, Any],
              phase1: Sequence[FrozenTrial], phase2: Sequence[FrozenTrial], best: FrozenTrial,
              elapsed_s: Mapping[str, float], baseline: Mapping[str, Any] | None = None,
              baseline_path: str | None = None) -> dict[str, Any]:
    """The content of ``results.json`` (see module docstring). ``storage`` must already be masked."""
    p1 = [trial_record(t, 1, slot_of(phase1, t.number)) for t in phase1 if not t.user_attrs.get("surplus")]
    p2 = [trial_record(t, 2) for t in phase2 if not t.user_attrs.get("surplus")]
    surplus = sum(1 for t in [*phase1, *phase2] if t.user_attrs.get("surplus"))
    two_phase = bool(phase2)
    best_rec = trial_record(best, 2 if two_phase else 1, None if two_phase else slot_of(phase1, best.number))
    phases = {"phase1": _phase_stats(p1)}
    if two_phase:
        phases["phase2"] = _phase_stats(p2)
    for name, secs in elapsed_s.items():
        phases.setdefault(name, {})["elapsed_this_run_s"] = float(secs)
    compute = sum(ph["compute_s"] for ph in phases.values())
    n_trials = int(config.get("n_trials", len({r["slot"] for r in p1})))
    speed: dict[str, Any] = {"search_compute_s": compute}
    if not two_phase:
        speed.update(kind="reference", speedup=1.0, full_fidelity_search_s=compute,
                     how="this search ran at full fidelity (proxy=none): it is the reference")
    elif baseline is not None:
        base_compute = float(baseline["phases"]["phase1"]["compute_s"])
        base_n = int(baseline["config"]["n_trials"])
        scaled = base_compute * n_trials / base_n
        speed.update(kind="measured", full_fidelity_search_s=scaled, speedup=scaled / compute if compute else None,
                     how=f"compute time of the proxy=none search in {baseline_path}"
                         + ("" if base_n == n_trials else f", scaled from {base_n} to {n_trials} trials"))
    else:
        full_walls = [r["wall_s"] for r in p2 if r["state"] == "COMPLETE" and r["wall_s"]]
        if full_walls:
            mean_full = sum(full_walls) / len(full_walls)
            est = mean_full * n_trials
            speed.update(kind="estimated", full_fidelity_search_s=est, speedup=est / compute if compute else None,
                         how=f"n_trials ({n_trials}) x mean wall time of the {len(full_walls)} full-fidelity phase-2 "
                             f"trial(s) ({mean_full:.1f} s), no pruning; run the same search with --proxy none "
                             "to measure it")
        else:
            speed.update(kind="unavailable", speedup=None, how="no full-fidelity trial completed")
    pairs = [(r["proxy_score"], r["score"]) for r in p2 if r["state"] == "COMPLETE" and r["proxy_score"] is not None]
    out: dict[str, Any] = {
        "study": study_name,
        "proxy": proxy_mode,
        "storage": storage,
        "config": dict(config),
        "best": {"params": best_rec["params"], "score": best_rec["score"], "trial": best.number,
                 "phase": best_rec["phase"], "model_path": best_rec["model_path"],
                 "bundle_dir": best.user_attrs.get("output_dir"), "trial_dir": best_rec["trial_dir"],
                 "proxy_score": best_rec.get("proxy_score")},
        "phases": phases,
        "speedup": speed,
        "proxy_vs_full": {
            "pairs": [{"rank": r["rank"], "source_trial": r["source_trial"], "proxy_score": r["proxy_score"],
                       "full_score": r["score"]} for r in p2],
            "spearman": spearman([a for a, _ in pairs], [b for _, b in pairs]),
        } if two_phase else None,
        "surplus_trials": surplus,
        "trials": [*p1, *p2],
    }
    if baseline_path:
        out["baseline"] = baseline_path
    return out


def find_baseline(hpo_dir: str | os.PathLike, exclude: str | None = None) -> tuple[dict, str] | None:
    """A finished ``proxy=none`` search's results under ``hpo_dir/*/results.json`` (newest first)."""
    found = []
    for path in Path(hpo_dir).glob("*/results.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("proxy") == "none" and data.get("study") != exclude and data.get("phases", {}).get("phase1"):
            found.append((path.stat().st_mtime, data, str(path)))
    if not found:
        return None
    _, data, path = max(found, key=lambda f: f[0])
    return data, path


def load_baseline(path: str | os.PathLike) -> dict:
    """Read a baseline ``results.json`` (of a ``proxy=none`` search)."""
    from proxy_bundle.errors import InputError

    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read baseline results ({err.__class__.__name__})", where=str(p)) from None
    if data.get("proxy") != "none":
        raise InputError(f"not a full-fidelity (proxy=none) search but proxy={data.get('proxy')!r}", where=str(p))
    return data


def write_outputs(out_dir: str | os.PathLike, summary: Mapping[str, Any], plots: bool = True) -> dict[str, str]:
    """Write ``results.json``, ``best_params.yaml`` (the winning overrides) and PNG plots into ``out_dir``."""
    out = Path(out_dir)
    paths = {"results": str(write_json(out / "results.json", summary)),
             "best_params": str(write_yaml(out / "best_params.yaml", dict(summary["best"]["params"])))}
    if plots:
        from proxy_bundle.hpo.plots import plot_all

        paths.update(plot_all(summary, out / "plots"))
    return paths
