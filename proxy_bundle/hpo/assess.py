"""After a search: score the winner and the template's default configuration on the validation fold and the
held-out set, explain the speedup figure in plain words, and warn about results that mean little.

:func:`assess` runs the side effects (default trial, scoring, timing files) and returns the ``assessment`` section
of ``results.json``; :func:`speedup_note` and :func:`warnings_for` are pure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from proxy_bundle.hpo import heldout

__all__ = ["assess", "format_assessment", "startup_overhead", "speedup_note", "warnings_for"]

# A score within this margin of the best constant prediction is reported as near-trivial.
TRIVIAL_MARGIN = 0.1


def startup_overhead(trial_dirs: Sequence[str | os.PathLike]) -> tuple[float, float] | None:
    """Mean (start-up s, whole trial s) over trials whose template wrote ``model/timing.yaml``.

    Start-up is process start to the first training step (interpreter, imports, config, network, data loaders).
    """
    ups, totals = [], []
    for d in trial_dirs:
        path = Path(d) / "model" / "timing.yaml"
        try:
            t = yaml.safe_load(path.read_text()) or {}
            start, first, end = float(t["process_start"]), float(t["first_step"]), float(t["end"])
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
            continue
        ups.append(first - start)
        totals.append(end - start)
    if not ups:
        return None
    return sum(ups) / len(ups), sum(totals) / len(totals)


def speedup_note(summary: Mapping[str, Any], overhead: tuple[float, float] | None) -> str | None:
    """What the speedup figure means, in plain words, for a two-phase search (``None`` otherwise)."""
    sp = summary.get("speedup") or {}
    if summary.get("proxy") == "none" or not sp.get("speedup"):
        return None
    n = int((summary.get("config") or {}).get("n_trials", 0))
    p1 = summary["phases"]["phase1"]["compute_s"]
    p2 = (summary["phases"].get("phase2") or {}).get("compute_s", 0.0)
    k = int((summary.get("config") or {}).get("top_k", 1) or 1)
    best = "the best" if k == 1 else f"the top {k}"
    text = (f"the proxy search trained {n} configurations in {p1:.0f} s of compute (phase 1) and retrained {best} "
            f"at full fidelity in {p2:.0f} s; training all {n} at full fidelity would take about "
            f"{sp['full_fidelity_search_s']:.0f} s ({sp['kind']}), hence {sp['speedup']:.2f}x.")
    if overhead is not None:
        up, total = overhead
        share = up / total if total > 0 else 0.0
        text += (f" Each trial spends {up:.1f} s of its {total:.1f} s starting up (process, imports, data "
                 f"loaders), which no proxy shrinks")
        if share >= 0.3:
            text += (", so at this scale the figure is small; with real volumes and hundreds of epochs training "
                     "dominates and the saving approaches the ratio of full to proxy training work.")
        else:
            text += "."
    return text


def warnings_for(summary: Mapping[str, Any], trivial: float | None,
                 scores: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Warnings about results that mean little: near the trivial score, a proxy search slower than a full one, a
    proxy that ranked nothing (every phase-1 score equal) or ranked the retrained configurations backwards."""
    out = []
    best = summary["best"]["score"]
    if trivial is not None and best is not None and best < trivial + TRIVIAL_MARGIN:
        out.append(f"the best validation Dice {best:.3f} is at or near the trivial score {trivial:.3f} (one class "
                   "on every "
                   "voxel): the trials did not learn; train longer (--epochs) or check the learning rate range")
    for name, by_set in scores.items():
        ext = by_set.get("external")
        if trivial is not None and ext is not None and ext == ext and ext < trivial + TRIVIAL_MARGIN and name == "best":
            out.append(f"the winner's external-set Dice {ext:.3f} is at or near the trivial score: it does not "
                       "generalise")
    best_val = (scores.get("best") or {}).get("validation")
    default_val = (scores.get("default") or {}).get("validation")
    if best_val is not None and default_val is not None and default_val > best_val:
        out.append(f"the template's default configuration scores higher than the search winner on the validation "
                   f"fold ({default_val:.4f} vs {best_val:.4f}): this search found nothing better than the defaults")
    sp = summary.get("speedup") or {}
    if summary.get("proxy") != "none" and sp.get("speedup") is not None and sp["speedup"] < 1.0:
        out.append(f"the proxy search cost more than a full-fidelity search would ({sp['speedup']:.2f}x): at this "
                   "scale the proxy saves less than phase 2 costs; use fewer --top_k or a smaller proxy")
    proxy_scores = [t["score"] for t in summary.get("trials", [])
                    if t.get("phase") == 1 and t.get("score") is not None]
    if summary.get("proxy") != "none" and len(proxy_scores) >= 2 and max(proxy_scores) == min(proxy_scores):
        out.append(f"every phase-1 trial scored the same ({proxy_scores[0]:.4f}): the proxy ranked nothing and phase 2 "
                   "retrained an arbitrary top-k; give the proxy more training (--proxy_epochs, --width, "
                   "--data_fraction)")
    pv = summary.get("proxy_vs_full") or {}
    if pv.get("spearman") is not None and pv["spearman"] < 0:
        out.append(f"proxy and full scores rank the retrained configurations in opposite order (Spearman "
                   f"{pv['spearman']:.2f}): the proxy is not predictive here")
    return out


def assess(summary: Mapping[str, Any], cfg: Mapping[str, Any], fold: int, *, runner: Any = None,
           full_fidelity: Any = None, searched: Sequence[str] = (), out_dir: str | os.PathLike,
           external: tuple[list[dict], str] | None = None, default_trial: bool = True) -> dict[str, Any]:
    """The ``assessment`` section of ``results.json`` (see module docstring).

    ``cfg``: the data source config; ``runner``/``full_fidelity``: used to train the default configuration when
    ``default_trial``; ``external``: :func:`heldout.external_cases` of the data (checked before the search).
    """
    val_cases = heldout.validation_cases(cfg, fold)
    trivial = heldout.trivial_dice(val_cases)
    default = None
    if default_trial and runner is not None and full_fidelity is not None:
        print("hpo: training the template's default configuration at full fidelity (the baseline the winner is "
              "scored against; --default_trial false skips it)", flush=True)
        default = heldout.run_default_trial(runner, full_fidelity, out_dir, searched)
    best = summary["best"]
    models = {"best": (best.get("bundle_dir"), best.get("model_path"))}
    if default is not None:
        models["default"] = (default.get("bundle_dir"), default.get("model_path"))
    sets: dict[str, list] = {"validation": val_cases} if val_cases else {}
    if external is not None:
        sets["external"] = external[0]
    scores = heldout.score_models(models, sets) if sets else {}
    unscored = sorted(k for k, (bundle, _) in models.items() if bundle and not heldout.scorable(bundle))
    trial_dirs = [t["trial_dir"] for t in summary.get("trials", []) if t.get("trial_dir")]
    overhead = startup_overhead(trial_dirs)
    return {
        "fold": int(fold),
        "validation_cases": len(val_cases),
        "trivial_dice": trivial,
        "external": {"source": external[1], "cases": len(external[0])} if external is not None else None,
        "scores": scores,
        "unscored": unscored,
        "default_trial": default,
        "startup_s": overhead[0] if overhead else None,
        "trial_s": overhead[1] if overhead else None,
        "speedup_note": speedup_note(summary, overhead),
        "warnings": warnings_for(summary, trivial, scores),
    }


def format_assessment(a: Mapping[str, Any]) -> list[str]:
    """Console lines for an assessment (one per fact)."""
    lines = []
    scores = a.get("scores") or {}
    default = a.get("default_trial")

    def row(set_name: str) -> str:
        parts = []
        for name, label in (("best", "search winner"), ("default", "template default")):
            v = (scores.get(name) or {}).get(set_name)
            if v is not None:
                parts.append(f"{label} {v:.4f}")
        return ", ".join(parts) or "not scored"

    lines.append(f"validation fold {a['fold']} ({a['validation_cases']} cases): {row('validation')}"
                 f" (trivial score {a['trivial_dice']:.4f})")
    if a.get("external"):
        ext = a["external"]
        lines.append(f"external set ({ext['cases']} cases, {ext['source']}): {row('external')}")
    else:
        lines.append("external set: none in the input (add external.json or a labelled 'testing' list)")
    if default is not None and default.get("params"):
        lines.append("template default: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in default["params"].items()))
    if a.get("unscored"):
        lines.append(f"not scored here: {', '.join(a['unscored'])} (held-out scoring rebuilds the proxyseg "
                     "template's inference pipeline; use the template's own infer.py or `export` + AutoRunner)")
    if a.get("speedup_note"):
        lines.append("speedup: " + a["speedup_note"])
    lines.extend(f"warning: {w}" for w in a.get("warnings") or [])
    return lines
