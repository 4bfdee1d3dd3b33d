"""Train one (configuration, variant) through the search engine's trial runner and score it.

Every run goes through :class:`proxy_bundle.hpo.runners.AlgoRunner` (export the template with the trial's
overrides, launch ``train.py``, follow ``progress.yaml``), so a run's cost here is what the same trial costs
in a real search. The best checkpoint is then scored on the validation fold and the external set with
:class:`~proxy_bundle.study.evaluate.Evaluator`.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from proxy_bundle.hpo.runners import AlgoRunner, Fidelity, TrialFailed
from proxy_bundle.study.evaluate import Evaluator
from proxy_bundle.study.plan import Config, Variant


def fidelity(variant: Variant, subsets: Mapping[str, str], blocks: float = 1.0,
             levels: int | None = None) -> Fidelity:
    """The trial runner's fidelity for a study variant (``subsets``: subset key -> proxy datalist path;
    the proxy network's width is the variant's, ``blocks``/``levels`` the study's)."""
    datalist = subsets[variant.subset] if variant.subset else None
    if variant.proxy_network:
        return Fidelity(name=variant.name, datalist=datalist, width=float(variant.width), blocks=blocks,
                        levels=levels, epochs=variant.epochs)
    return Fidelity(name=variant.name, datalist=datalist, epochs=variant.epochs)


def run_spec(config: Config, variant: Variant, fid: Fidelity, context: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that decides a run's result; a stored run is reused only for an equal spec.

    The proxy datalist enters by content hash, not path, so that a table carries over between machines.
    """
    from proxy_bundle.study.prepare import content_hash

    fid_d = fid.to_dict()
    if fid_d.get("datalist"):
        fid_d["datalist"] = "sha256:" + content_hash(fid_d["datalist"])
    return {"params": config.params, "variant": variant.as_dict(), "fidelity": fid_d, **dict(context)}


def train_and_score(
    runner: AlgoRunner,
    evaluator: Evaluator,
    config: Config,
    fid: Fidelity,
    trial_dir: str | Path,
    sets: Mapping[str, Sequence[Mapping[str, str]]],
    keep_checkpoints: bool = False,
    train_seed: int | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Train, then score the best checkpoint on every case list in ``sets``.

    ``train_seed`` replaces the template's ``seed`` (the repeat variant). When ``stop`` is set the trial is
    killed at its next validation and the record says ``status: interrupted`` (it must not be stored).

    Returns a result record: ``status`` ("ok" or "failed"), ``search_dice`` (the best validation Dice the
    template reported: what a search sees), ``<set>_dice`` per case list (``val_dice`` defaults to
    ``search_dice`` when ``sets`` has no ``val``), ``cost_s`` (see :func:`costs`: seconds that do not depend
    on the machine's load), ``wall_s`` (wall-clock of the trial, load-dependent), ``curve`` (per validation:
    ``[epoch, Dice, cost seconds since the data were ready]``) and the template's timing split. A failed training is returned (not raised) so that one bad
    configuration, e.g. a diverging learning rate, does not stop a study.
    """
    trial_dir = Path(trial_dir)
    # A run stopped earlier (--max_minutes, Ctrl-C) left a checkpoint the runner would resume from; a study run
    # starts afresh, so that its cost and per-epoch curve come from one uninterrupted training.
    clean_trial(trial_dir)
    params = dict(config.params)
    if train_seed is not None:
        params["seed"] = int(train_seed)
    t0 = time.monotonic()
    try:
        result = runner.run(params, fid, trial_dir, report=lambda epoch, dice: bool(stop and stop.is_set()))
    except TrialFailed as err:
        if stop is not None and stop.is_set():
            return {"status": "interrupted"}
        return {"status": "failed", "error": str(err).splitlines()[0], "cost_s": time.monotonic() - t0}
    if result.pruned or (stop is not None and stop.is_set()):
        return {"status": "interrupted"}
    ckpt = trial_dir / "model"
    timing = _timing(ckpt / "timing.yaml")
    startup, train, basis = costs(timing, float(result.wall_s))
    rec: dict[str, Any] = {
        "status": "ok",
        "cost_s": startup + train,
        "startup_cost_s": startup,
        "train_cost_s": train,
        "cost_basis": basis,
        "wall_s": float(result.wall_s),
        "search_dice": float(result.score) if result.score is not None else math.nan,
        "history": [[int(e), float(s)] for e, s in result.scores],
        "curve": _curve(ckpt / "progress.yaml", timing, basis),
        "timing": timing,
    }
    model = ckpt / "model.pt"
    if not model.is_file():
        rec.update(status="failed", error="training wrote no model.pt")
        return rec
    t1 = time.monotonic()
    scores = evaluator.dice(result.output_dir, model, sets)
    rec["eval_s"] = time.monotonic() - t1
    for name, value in scores.items():
        rec[f"{name}_dice"] = value
    if "val" not in scores:
        rec["val_dice"] = rec["search_dice"]
    if not keep_checkpoints:
        # The optimizer state for resuming one trial is the bulk of a trial's disk use; the study resumes per run.
        (ckpt / "last.pt").unlink(missing_ok=True)
    return rec


def costs(timing: Mapping[str, Any], wall_s: float) -> tuple[float, float, str]:
    """``(startup_s, train_s, basis)`` of one run, in seconds that do not depend on the machine's load.

    On CPU the basis is the trial process's CPU time (all threads; ``cpu_process``): a run costs the same
    whether or not other processes share the cores. On CUDA it is the process CPU time of the start-up plus
    the wall-clock of training and validation on the device (``device_wall``), which the study runs one trial
    per device so that nothing else shares it. A template without these timings falls back to wall-clock
    (``wall``, load-dependent).
    """
    try:
        startup = float(timing["cpu_data_ready"])
        if timing.get("device") == "cuda":
            return startup, float(timing["train_s"]), "device_wall"
        return startup, float(timing["cpu_end"]) - startup, "cpu_process"
    except (KeyError, TypeError, ValueError):
        startup = float(timing.get("startup_s") or 0.0)
        return startup, max(0.0, wall_s - startup), "wall"


def _curve(progress: Path, timing: Mapping[str, Any], basis: str) -> list[list[float]]:
    """Per validation ``[epoch, Dice, cost seconds since the data were ready]`` from the template's progress."""
    try:
        history = yaml.safe_load(progress.read_text()) or []
    except (OSError, yaml.YAMLError):
        return []
    out = []
    for h in history:
        try:
            if basis == "cpu_process":
                spent = float(h["cpu_s"]) - float(timing["cpu_data_ready"])
            else:
                spent = float(h["elapsed_s"])
            out.append([int(h["epoch"]), float(h["avg_dice_score"]), round(spent, 3)])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _timing(path: Path) -> dict[str, Any]:
    try:
        t = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, Any] = {k: t.get(k) for k in ("epochs_run", "num_train_cases", "num_val_cases", "num_parameters",
                                                  "device", "cpu_data_ready", "cpu_end")}
    try:
        out["startup_s"] = float(t["data_ready"]) - float(t["process_start"])
        out["train_s"] = float(t["end"]) - float(t["data_ready"])
    except (KeyError, TypeError, ValueError):
        pass
    return out


def clean_trial(trial_dir: str | Path) -> None:
    """Remove a trial directory (a run is always trained from scratch)."""
    shutil.rmtree(trial_dir, ignore_errors=True)
