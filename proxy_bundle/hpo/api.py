"""Run a search and write its outputs: the one call the CLI, the tests and users' scripts make."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from proxy_bundle.atomic import write_json, write_yaml
from proxy_bundle.hpo.engine import SearchConfig, TwoPhaseSearch
from proxy_bundle.hpo.link import link_final_result
from proxy_bundle.hpo.results import find_baseline, load_baseline, summarize, write_outputs
from proxy_bundle.hpo.runners import TrialRunner
from proxy_bundle.hpo.storage import mask_url

__all__ = ["run_search"]


def run_search(config: SearchConfig, runner: TrialRunner, storage_url: str, *, proxy_mode: str,
               baseline: str | os.PathLike | None = None, latest_dir: str | os.PathLike | None = None,
               plots: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume, or join) the search, then write ``results.json``, ``best_params.yaml`` and plots into
    ``config.out_dir`` (and copies of the first two into ``latest_dir``, e.g. ``W/hpo``). Returns the summary
    with an ``outputs`` entry naming the files written."""
    search = TwoPhaseSearch(config, runner, storage_url)
    outcome = search.run()
    if outcome is None:
        raise RuntimeError("run_search needs a worker that takes part in phase 2 (config.phase2)")
    base, base_path = None, None
    if proxy_mode != "none":
        if baseline is not None:
            base, base_path = load_baseline(baseline), str(baseline)
        else:
            found = find_baseline(Path(config.out_dir).parent, exclude=config.study_name)
            if found:
                base, base_path = found
    summary = summarize(study_name=config.study_name, proxy_mode=proxy_mode, storage=mask_url(storage_url),
                        config=config.settings(), phase1=outcome.phase1, phase2=outcome.phase2,
                        best=outcome.best_trial, elapsed_s=outcome.elapsed_s, baseline=base,
                        baseline_path=base_path)
    summary.update(extra or {})
    if outcome.stopped_by:
        summary["stopped_by"] = outcome.stopped_by
    views: dict[str, Any] = {}
    if plots:
        from proxy_bundle.hpo.optuna_plots import plot_optuna_views

        views = plot_optuna_views(storage_url, {"phase1": config.study_name}, Path(config.out_dir) / "plots")
        summary["plots_skipped"] = views.pop("skipped")
    paths = write_outputs(config.out_dir, summary, plots=plots)
    link_final_result(search.storage, config.study_name, summary, two_phase=config.two_phase)
    paths.update(views)
    if latest_dir is not None:
        paths["latest_results"] = str(write_json(Path(latest_dir) / "results.json", summary))
        paths["latest_best_params"] = str(write_yaml(Path(latest_dir) / "best_params.yaml",
                                                     dict(summary["best"]["params"])))
    summary["outputs"] = paths
    return summary
