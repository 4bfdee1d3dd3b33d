"""One study to open: the final (full-fidelity) result recorded on the search's main Optuna study.

A two-phase search keeps its phases in two studies (``<name>`` and ``<name>-phase2``) because they train at
different fidelities: one study would mix proxy and full scores in one ranking and one pruner's statistics.
Users open the main study (``optuna best-trial --study-name <name>`` or optuna-dashboard's study page), so the
outcome is written there as study user attributes, and the phase-2 study points back to its main study.
"""

from __future__ import annotations

from typing import Any, Mapping

import optuna

__all__ = ["FINAL", "PHASE1_STUDY", "PHASE2_STUDY", "link_final_result"]

FINAL, PHASE2_STUDY, PHASE1_STUDY = "final_result", "phase2_study", "phase1_study"


def final_record(summary: Mapping[str, Any], phase2_study: str | None) -> dict[str, Any]:
    """The JSON-safe record stored under :data:`FINAL` (pure): the searched winner at full fidelity."""
    best = summary["best"]
    return {
        "value": best.get("score"),
        "params": dict(best.get("params") or {}),
        "study": phase2_study or summary.get("study"),
        "trial": best.get("trial"),
        "phase": best.get("phase"),
        "proxy_score": best.get("proxy_score"),
        "model_path": best.get("model_path"),
        "fidelity": "full",
    }


def link_final_result(storage: Any, study_name: str, summary: Mapping[str, Any], two_phase: bool) -> dict[str, Any]:
    """Record the final result on study ``study_name`` (and the link back on its phase-2 study).

    ``storage``: an Optuna storage or URL. Returns the record written. The record is rewritten on every run,
    so a resumed or extended search always shows its latest winner.
    """
    from proxy_bundle.hpo.engine import phase2_name

    phase2 = phase2_name(study_name) if two_phase else None
    record = final_record(summary, phase2)
    main = optuna.load_study(study_name=study_name, storage=storage)
    main.set_user_attr(FINAL, record)
    if phase2 is not None:
        main.set_user_attr(PHASE2_STUDY, phase2)
        optuna.load_study(study_name=phase2, storage=storage).set_user_attr(PHASE1_STUDY, study_name)
    return record
