"""Trial runner for MONAI bundles: every trial is ``python -m monai.bundle run`` of the bundle's own train config.

A trial's settings reach the bundle as command-line overrides of its config ids (``--learning_rate``,
``--aug_prob_flip``, ...). The fidelity maps onto the bundle keys every bundle in ``bundles/`` defines:
``proxy_datalist`` (proxy data), ``proxy_width`` / ``proxy_blocks`` / ``proxy_levels`` (the
:class:`~proxy_bundle.networks.scaling.ProxySpec` of ``network_def``) and ``epochs``. Each trial writes its
checkpoints, TensorBoard logs and ``progress.yaml`` under its own trial directory (``ckpt_dir`` / ``log_dir`` /
``progress_file`` overrides), so trials never share files and the bundle folder itself is left untouched.

Per-epoch validation Dice comes from the ``progress.yaml`` that the bundle's own ``scripts/progress.py``
(``ProgressWriter``) rewrites after every validation;
:func:`proxy_bundle.hpo.runners.launch_and_poll` follows it, reports each epoch to the search and kills the
training process group when the trial is pruned.

:func:`run_bundle_search` is what a bundle's ``configs/hpo.json`` calls as its ``run`` step, after
:func:`select_proxy_data` has chosen the proxy cases among the bundle's own training split.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from proxy_bundle.atomic import ensure_dir, write_json, write_yaml
from proxy_bundle.errors import InputError
from proxy_bundle.hpo.runners import (
    PROGRESS_FILE, Fidelity, ReportFn, TrialResult, fire_value, fresh_trial_dir, launch_and_poll,
)

__all__ = ["BundleRunner", "fidelity_overrides", "one_line_errors", "proxy_fidelity", "proxy_mode",
           "run_bundle_search", "select_proxy_data"]

#: Config ids a trial sets for its own paths; a search space or base override may not touch them.
TRIAL_PATH_KEYS = ("ckpt_dir", "log_dir", "output_dir", "progress_file", "resume")


def fidelity_overrides(fidelity: Fidelity) -> dict[str, Any]:
    """The bundle config overrides for ``fidelity`` (proxy data, proxy network, epochs)."""
    out: dict[str, Any] = {
        "proxy_datalist": None if fidelity.datalist is None else str(Path(fidelity.datalist).resolve()),
        "proxy_width": float(fidelity.width),
        "proxy_blocks": float(fidelity.blocks),
        "proxy_levels": None if fidelity.levels is None else int(fidelity.levels),
    }
    if fidelity.epochs is not None:
        out["epochs"] = int(fidelity.epochs)
    return out


def proxy_mode(proxy: Fidelity, full: Fidelity) -> str:
    """``none`` / ``data`` / ``network`` / ``both`` / ``short``: what the phase-1 fidelity shrinks relative to the
    full one (``short``: only the number of epochs)."""
    data = proxy.datalist != full.datalist
    net = (proxy.width, proxy.blocks, proxy.levels) != (full.width, full.blocks, full.levels)
    if not (data or net) and proxy.epochs != full.epochs:
        return "short"
    return {(False, False): "none", (True, False): "data", (False, True): "network", (True, True): "both"}[(data, net)]


def one_line_errors() -> None:
    """End a bundle search stopped by bad input with one line ``error: <where>: <problem>`` and exit code 2.

    MONAI's config evaluation wraps what the components of ``configs/hpo.json`` raise (a bad ``hpo#n_devices``,
    an unknown ``hpo#proxy_mode``, an unreadable proxy datalist) in ``RuntimeError``s with the expression's source,
    and ``python -m monai.bundle run`` prints that traceback. Called from the config's ``initialize``, this
    installs a ``sys.excepthook`` that finds an :class:`InputError` in the uncaught exception's chain and prints it
    alone; anything else keeps its traceback. Written here because neither MONAI's bundle runner nor its config
    parser has such a switch.
    """
    previous = sys.excepthook

    def hook(kind: type, err: BaseException, tb: Any) -> None:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, InputError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            previous(kind, err, tb)
            return
        print("error: " + " ".join(str(cause).split()), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)  # an excepthook cannot choose the exit code otherwise (the interpreter would exit with 1)

    sys.excepthook = hook


def proxy_fidelity(mode: str, *, epochs: int, datalist: str | None = None, width: float = 1.0, blocks: float = 1.0,
                   levels: int | None = None, proxy_epochs: int | None = None) -> Fidelity:
    """A bundle search's phase-1 fidelity from ``configs/hpo.json``'s ``hpo#proxy_mode`` (none, data, network,
    both, short), as ``hpo --proxy`` builds it (:func:`proxy_bundle.hpo.fidelities.build_fidelities`): ``datalist``
    for data/both, ``width``/``blocks``/``levels`` for network/both, ``proxy_epochs`` (default a quarter of
    ``epochs``) for short. Raises :class:`InputError` naming the config key for an unknown mode or a short run
    that is not shorter."""
    from proxy_bundle.hpo.fidelities import build_fidelities

    where = ("configs/hpo.json: hpo#proxy_mode", "configs/hpo.json: hpo#proxy_epochs", "epochs")
    return build_fidelities(str(mode).lower(), datalist, float(width), float(blocks), levels, int(epochs), proxy_epochs,
                            where=where)[0]


class BundleRunner:
    """Train trials with a MONAI bundle's train config (see the module docstring).

    Args:
        bundle_dir: the bundle folder (holding ``configs/``); trials run with it as working directory.
        config_file: the train config(s), relative to ``bundle_dir`` or absolute; several merge in order.
        meta_file: defaults to ``configs/metadata.json`` of the bundle.
        logging_file: defaults to ``configs/logging.conf`` of the bundle when it exists.
        base_overrides: settings every trial gets (dataset, fold, patch size, ...); searched values win over them.
        n_devices: GPUs per trial. With more than one, trials run under ``torch.distributed.run`` with the
            bundle's ``multi_gpu_config`` merged after ``config_file``.
        multi_gpu_config: the bundle's multi-GPU override config, relative to ``bundle_dir``.
        env: environment of the training processes (default: this process's).
        poll_s: how often ``progress.yaml`` is checked.
        timeout_s: wall-clock limit of one trial (``None``: none); a trial over it is killed and fails.
    """

    def __init__(self, bundle_dir: str | os.PathLike, config_file: str | Sequence[str] = "configs/train.json",
                 meta_file: str | None = None, logging_file: str | None = None,
                 base_overrides: Mapping[str, Any] | None = None, n_devices: int = 1,
                 multi_gpu_config: str = "configs/multi_gpu_train.json", env: Mapping[str, str] | None = None,
                 poll_s: float = 0.5, timeout_s: float | None = None) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        if not (self.bundle_dir / "configs").is_dir():
            raise InputError("not a bundle folder (no configs/ inside)", where=str(self.bundle_dir))
        files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
        if not files:
            raise InputError("no train config given", where=str(self.bundle_dir))
        self.config_files = [self._file(f) for f in files]
        self.meta_file = self._file(meta_file or "configs/metadata.json")
        default_logging = self.bundle_dir / "configs" / "logging.conf"
        self.logging_file = self._file(logging_file) if logging_file else (
            str(default_logging) if default_logging.is_file() else None)
        self.base_overrides = dict(base_overrides or {})
        clash = sorted(set(self.base_overrides) & set(TRIAL_PATH_KEYS))
        if clash:
            raise InputError(f"{clash} are set per trial and cannot be overridden", where="base_overrides")
        self.n_devices = int(n_devices)
        if self.n_devices < 1:
            raise InputError(f"must be >= 1, got {n_devices}", where="n_devices")
        self.multi_gpu_config = self._file(multi_gpu_config) if self.n_devices > 1 else None
        self.env = dict(env) if env is not None else None
        self.poll_s = float(poll_s)
        if timeout_s is not None and not float(timeout_s) > 0:
            raise InputError(f"must be a positive number of seconds or None, got {timeout_s!r}", where="timeout_s")
        self.timeout_s = None if timeout_s is None else float(timeout_s)

    def _file(self, path: str | os.PathLike) -> str:
        p = Path(path)
        p = p if p.is_absolute() else self.bundle_dir / p
        if not p.is_file():
            raise InputError("bundle file not found", where=str(p))
        return str(p)

    @property
    def name(self) -> str:
        return self.bundle_dir.name

    def overrides(self, params: Mapping[str, Any], fidelity: Fidelity, trial_dir: str | os.PathLike) -> dict[str, Any]:
        """Everything a trial sets: base settings < fidelity < searched params < the trial's own paths."""
        clash = sorted(set(params) & set(TRIAL_PATH_KEYS))
        if clash:
            raise InputError(f"{clash} are set per trial and cannot be searched", where="search space")
        trial_dir = Path(trial_dir).resolve()
        out = dict(self.base_overrides)
        out.update(fidelity_overrides(fidelity))
        out.update(params)
        out.update({
            "ckpt_dir": str(trial_dir / "models"),
            "log_dir": str(trial_dir / "logs"),
            "output_dir": str(trial_dir / "eval"),
            "progress_file": str(trial_dir / "models" / PROGRESS_FILE),
            # A retried trial starts from scratch (its directory is cleared), never from a stale checkpoint.
            "resume": False,
        })
        return out

    def command(self, overrides: Mapping[str, Any]) -> list[str]:
        """``python -m monai.bundle run ...`` (under ``torch.distributed.run`` for several devices)."""
        configs = [*self.config_files, *([self.multi_gpu_config] if self.multi_gpu_config else [])]
        args = ["-m", "monai.bundle", "run", f"--config_file={fire_value(configs)}",
                f"--meta_file={fire_value(self.meta_file)}"]
        if self.logging_file:
            args.append(f"--logging_file={fire_value(self.logging_file)}")
        args += [f"--{k}={fire_value(v)}" for k, v in overrides.items()]
        if self.n_devices > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                    f"--nproc_per_node={self.n_devices}", *args]
        return [sys.executable, *args]

    def run(self, params: Mapping[str, Any], fidelity: Fidelity, trial_dir: str | os.PathLike,
            report: ReportFn) -> TrialResult:
        trial_dir = fresh_trial_dir(trial_dir)
        overrides = self.overrides(params, fidelity, trial_dir)
        write_yaml(trial_dir / "overrides.yaml", overrides)
        result = launch_and_poll(self.command(overrides), overrides["progress_file"], report,
                                 log_file=trial_dir / "train.log", env=self.env, cwd=self.bundle_dir,
                                 poll_s=self.poll_s, timeout_s=self.timeout_s)
        result.output_dir = str(trial_dir)
        model = Path(overrides["ckpt_dir"]) / "model.pt"
        result.model_path = str(model) if model.is_file() else None
        return result


def run_bundle_search(config: Any, runner: BundleRunner, storage: str | None = None,
                      work_dir: str | os.PathLike = ".", plots: bool = True,
                      baseline: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run (or resume, or join) a two-phase search over a bundle and write its results.

    ``config`` is a :class:`proxy_bundle.hpo.engine.SearchConfig`; ``storage`` an Optuna RDB URL or SQLite file
    (default ``<work_dir>/hpo/study.db``). Results go to ``config.out_dir`` (``results.json``,
    ``best_params.yaml``, plots) with copies of the first two in ``<work_dir>/hpo``. ``best_params.yaml`` holds
    bundle config ids, so it merges straight into the train config::

        python -m monai.bundle run --config_file "['configs/train.json','hpo/best_params.yaml']"

    Prints a short summary and returns the results summary.
    """
    from proxy_bundle.hpo.api import run_search
    from proxy_bundle.hpo.storage import resolve_url

    url = resolve_url(storage, work_dir)
    plots = _flag(plots, where="hpo#plots")
    latest = ensure_dir(Path(work_dir) / "hpo")
    summary = run_search(config, runner, url, proxy_mode=proxy_mode(config.proxy, config.full),
                         baseline=baseline, latest_dir=latest, plots=plots)
    best = summary["best"]
    print(f"search {summary['study']} ({summary['proxy']} proxy): best full-fidelity Dice {best['score']:.4f} "
          f"(trial {best['trial']}, phase {best['phase']})")
    print("best settings: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in best["params"].items()))
    speed = summary.get("speedup") or {}
    if speed.get("speedup"):
        print(f"search speed-up vs full fidelity ({speed.get('kind')}): {speed['speedup']:.2f}x")
    print(f"results: {summary['outputs']['results']}; settings for the final training: "
          f"{summary['outputs'].get('latest_best_params', summary['outputs']['best_params'])}")
    return summary



def _flag(value: Any, where: str) -> bool:
    """A config switch as a bool: python-fire keeps lower-case ``true``/``false`` as strings."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    if value is None or isinstance(value, (bool, int)):
        return bool(value)
    raise InputError(f"expected true or false, got {value!r}", where=where)


def select_proxy_data(split: Mapping[str, Sequence[Mapping[str, Any]]], dataset_dir: str | os.PathLike,
                      out: str | os.PathLike, *, fraction: float | None = None, count: int | None = None,
                      metric: str = "mi", mode: str = "roi", strategy: str = "representative", seed: int = 0) -> str:
    """Select proxy data among a bundle's training cases and write the proxy datalist to ``out``.

    ``split`` is the bundle's own train/validation split (``{"training": [{image, label}], "validation": [...]}``,
    what its ``scripts.data.split_cases`` returns). The candidates are exactly its training cases; its validation
    cases go into the proxy datalist's ``validation`` list unchanged, so a proxy run validates on the same cases
    as a full run. Scoring and choice are :func:`proxy_bundle.selection.subset.run_selection` (``fraction`` or
    ``count``, ``metric``, ``mode``, ``strategy``). An existing ``out`` made from the same candidates with the
    same settings is reused, so a resumed search does not select again. Returns the path of the proxy datalist.

    Raises:
        InputError: an empty split, or what the selection raises for its settings.
    """
    from proxy_bundle.selection.subset import default_scores_path, run_selection, write_selection

    out = Path(out)
    keep = ("image", "label")
    candidates = {section: [{k: e[k] for k in keep if k in e} for e in split.get(section, [])]
                  for section in ("training", "validation")}
    if not candidates["training"]:
        raise InputError("no training cases to select proxy data from", where=str(dataset_dir))
    cand_path = write_json(out.with_name(f"{out.stem}_candidates.json"), candidates)
    settings = {"metric": metric, "mode": mode, "strategy": strategy, "fraction": fraction, "count": count,
                "seed": seed, "datalist_sha256": hashlib.sha256(cand_path.read_bytes()).hexdigest()}
    scores_path = default_scores_path(out)
    if out.is_file() and scores_path.is_file():
        try:
            provenance = json.loads(scores_path.read_text()).get("provenance", {})
        except (OSError, ValueError):
            provenance = {}
        if all(provenance.get(k) == v for k, v in settings.items()):
            print(f"proxy data: reusing {out} (same candidates and settings)")
            return str(out)
    selection = run_selection(cand_path, dataset_dir, fraction=fraction, count=count, metric=metric, mode=mode,
                              strategy=strategy, seed=seed, fold=None, progress=False)
    write_selection(selection, out)
    summary = selection.scores["summary"]
    print(f"proxy data: {summary['n_selected']} of {summary['n_candidates']} training cases "
          f"({strategy}, {metric}, {mode}) -> {out}")
    return str(out)
