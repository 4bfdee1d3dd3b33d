"""Optuna's own matplotlib views of a search, the ones Optuna users look for first.

Written next to the project's plots (``plots/optuna_*.png``): optimisation history, intermediate values (the
per-epoch Dice that pruners act on), hyper-parameter importances (fANOVA, Optuna's default evaluator) and
parallel coordinates, for the phase-1 study (the search) and, when there is one, the phase-2 study.
A view that needs more data than the study has (importances need two finished trials with different values) is
left out and named in the return value's ``skipped`` entry.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

from proxy_bundle.atomic import atomic_path, ensure_dir

__all__ = ["plot_optuna_views"]


def _views() -> dict[str, Callable[..., Any]]:
    from optuna.visualization import matplotlib as ovm

    return {
        "history": ovm.plot_optimization_history,
        "intermediate_values": ovm.plot_intermediate_values,
        "param_importances": ovm.plot_param_importances,
        "parallel_coordinate": ovm.plot_parallel_coordinate,
    }


def _save(ax: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 4.5))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return str(path)


def plot_optuna_views(storage: Any, study_names: dict[str, str], out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write Optuna's views of each study; returns ``{"optuna_<phase>_<view>_png": path, ..., "skipped": [...]}``.

    ``storage``: an Optuna storage or URL; ``study_names``: ``{label: study name}`` (e.g. ``{"phase1": "x"}``).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    out = ensure_dir(out_dir)
    paths: dict[str, Any] = {}
    skipped: list[str] = []
    for label, name in study_names.items():
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        for view, fn in _views().items():
            if view == "param_importances" and (len(complete) < 2 or len({t.value for t in complete}) < 2):
                skipped.append(f"{label} {view} (needs two finished trials with different scores)")
                continue
            if view == "intermediate_values" and not any(t.intermediate_values for t in study.trials):
                skipped.append(f"{label} {view} (no per-epoch scores)")
                continue
            try:
                # Optuna's views switch matplotlib to its "ggplot" style globally; rc_context keeps that inside.
                with matplotlib.rc_context(), warnings.catch_warnings():
                    # The matplotlib backend is marked experimental; the views themselves are stable.
                    warnings.simplefilter("ignore")
                    ax = fn(study)
                    if view == "history" and hasattr(ax, "set_ylabel"):
                        ax.set_ylabel("validation Dice")
                    paths[f"optuna_{label}_{view}_png"] = _save(ax, out / f"optuna_{label}_{view}.png")
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                plt.close("all")
                skipped.append(f"{label} {view} ({err.__class__.__name__}: {str(err).splitlines()[0][:80]})")
    paths["skipped"] = skipped
    return paths
