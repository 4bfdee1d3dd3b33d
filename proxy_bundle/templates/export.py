"""``export``: hand a search's winner back to Auto3DSeg as an AutoRunner work dir.

Auto3DSeg's AutoRunner finds trained algorithms by folder: every ``<work_dir>/<name>_<fold>/algo_object.json``
(MONAI's pickle-free algo record) with a ``best_metric`` is a trained algorithm; one without is generated but
untrained. ``export`` writes one such folder per cross-validation fold, each a bundle exported by the template's
own ``BundleAlgo.export_to_disk`` with the winning settings (searched parameters plus the search's fixed
overrides, at full fidelity) written into its configs. The fold the search trained on also gets the trained
model (the full-fidelity trial's checkpoint folder) and its score, so:

* ``AutoRunner(work_dir=W, input=W/input.yaml, analyze=False, algo_gen=False, train=False)`` ensembles it
  (with one trained fold, use ``set_ensemble_method("AlgoEnsembleBestN", n_best=1)``);
* ``AutoRunner(..., train=None)`` trains the remaining folds, ``train=True`` retrains every fold.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from proxy_bundle.atomic import ensure_dir, write_yaml
from proxy_bundle.errors import InputError

__all__ = ["export", "export_winner", "winner_settings"]

# Settings that belong to one trial (where it wrote) or to the search's proxy machinery, not to the algorithm.
_TRIAL_ONLY = {"ckpt_path", "fold", "cache_dir"}


def winner_settings(trial_overrides: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The algorithm's settings from a full-fidelity trial's ``overrides.yaml`` (pure).

    Drops what only described that trial (checkpoint folder, fold, proxyseg's cache) and proxyseg's ``proxy#``
    switches (off at full fidelity anyway); the searched ``params`` win over anything else.
    """
    out = {k: v for k, v in trial_overrides.items() if k not in _TRIAL_ONLY and not str(k).startswith("proxy#")}
    out.update(params)
    return out


def _folds(datalist: Path) -> list[int]:
    try:
        data = json.loads(datalist.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the datalist ({err.__class__.__name__})", where=str(datalist)) from None
    folds = sorted({int(c["fold"]) for c in data.get("training", []) if isinstance(c, dict) and "fold" in c})
    if not folds:
        raise InputError("no training case has a 'fold' key; AutoRunner needs folds", where=str(datalist))
    return folds


def _load_results(work: Path, study_name: str | None) -> dict[str, Any]:
    path = work / "hpo" / (f"{study_name}/results.json" if study_name else "results.json")
    if not path.is_file():
        raise InputError("no search results here; run `hpo` first (or pass --study_name)", where=str(path))
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise InputError("not valid JSON", where=str(path)) from None


def export_winner(algo: Any, settings: Mapping[str, Any], out_dir: str | os.PathLike, folds: list[int],
                  trained_fold: int | None = None, trained_ckpt: str | os.PathLike | None = None,
                  score: float | None = None, cuda: bool | None = None) -> list[Path]:
    """Write ``<out_dir>/<algo.name>_<fold>`` for each fold; returns the folders.

    ``algo``: a ``BundleAlgo`` with data stats and data source set (as ``BundleGen`` makes it). The
    ``trained_fold`` folder gets a copy of ``trained_ckpt`` as its checkpoint folder and ``score`` as its
    ``best_metric``. ``cuda=False`` applies the template adapter's CPU settings (default: whether CUDA is
    available). Raises :class:`InputError` when ``trained_ckpt`` does not exist.
    """
    from monai.auto3dseg import algo_to_json
    from monai.utils.enums import AlgoKeys

    from proxy_bundle.templates.adapters import adapter_for, set_config_values

    name = str(getattr(algo, "name", "") or "")
    if not name or "_" in name:
        raise InputError(f"algorithm name {name!r} must be a non-empty identifier without '_' (AutoRunner splits "
                         "folder names on '_')", where="algo")
    if trained_ckpt is not None and not Path(trained_ckpt).is_dir():
        raise InputError("the trained model's folder is missing", where=str(trained_ckpt))
    adapter = adapter_for(name)
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    out_dir = ensure_dir(Path(out_dir).resolve())
    written = []
    for fold in folds:
        bundle_name = f"{name}_{fold}"
        values = dict(settings)
        if adapter is not None:
            values = {**adapter.defaults, **adapter.device_overrides(cuda), **values}
        values["fold"] = int(fold)
        a = copy.deepcopy(algo)
        dest = out_dir / bundle_name
        if dest.exists():
            shutil.rmtree(dest)
        a.export_to_disk(str(out_dir), bundle_name, **values)
        bundle = Path(a.get_output_path())
        if adapter is not None:
            set_config_values(bundle, values)
            if not cuda:
                adapter.patch_for_cpu(bundle)
        meta: dict[str, Any] = {}
        if trained_ckpt is not None and fold == trained_fold:
            ckpt = _ckpt_dir(bundle, adapter)
            if ckpt.exists():
                shutil.rmtree(ckpt)
            shutil.copytree(trained_ckpt, ckpt, ignore=shutil.ignore_patterns("mlruns"))
            if score is not None:
                meta[str(AlgoKeys.SCORE)] = float(score)
        algo_to_json(a, template_path=a.template_path, **meta)
        written.append(bundle)
    return written


def _ckpt_dir(bundle: Path, adapter: Any) -> Path:
    if adapter is not None:
        return adapter.ckpt_dir(bundle)
    from monai.bundle import ConfigParser

    parser = ConfigParser(globals=False)
    parser.read_config(str(bundle / "configs" / "hyper_parameters.yaml"))
    return Path(str(parser.get_parsed_content("ckpt_path")))


def export(work_dir: str = "work", out: str | None = None, study_name: str | None = None,
           folds: Literal["all", "trained"] = "all", with_model: bool = True) -> None:
    """Write the search's winner into an AutoRunner work dir (see the module docstring).

    Args:
        work_dir: the work dir W of the `hpo` run (input.yaml, datastats.yaml, algorithm_templates, hpo/).
        out: AutoRunner work dir to write (default: W itself, which already holds datastats.yaml).
        study_name: which search of W (default: the latest, W/hpo/results.json).
        folds: "all" (one folder per datalist fold; the searched fold carries the trained model) or "trained"
            (only the searched fold).
        with_model: copy the trained model and its score into the searched fold's folder (false: settings only,
            every folder untrained, so AutoRunner(train=None) trains them all).
    """
    from proxy_bundle.hpo.runners import AlgoRunner

    work = Path(work_dir).resolve()
    if str(folds) not in ("all", "trained"):
        raise InputError(f"use 'all' or 'trained', got {folds!r}", where="--folds")
    for need in ("input.yaml", "datastats.yaml"):
        if not (work / need).is_file():
            raise InputError(f"no {need}: not the work dir of an `hpo` run", where=str(work))
    results = _load_results(work, study_name)
    best = results.get("best") or {}
    trial = next((t for t in results.get("trials", []) if t.get("number") == best.get("trial")
                  and t.get("phase") == best.get("phase")), None)
    if trial is None or not trial.get("trial_dir"):
        raise InputError("results.json names no best trial folder", where=str(work / "hpo"))
    trial_dir = Path(trial["trial_dir"])
    overrides_file = trial_dir / "overrides.yaml"
    if not overrides_file.is_file():
        raise InputError("the best trial's overrides.yaml is missing", where=str(trial_dir))
    trial_overrides = yaml.safe_load(overrides_file.read_text()) or {}
    settings = winner_settings(trial_overrides, best.get("params") or {})
    cfg = yaml.safe_load((work / "input.yaml").read_text()) or {}
    datalist = Path(str(cfg.get("datalist", "")))
    if not datalist.is_absolute():
        datalist = work / datalist
    fold = int(trial_overrides.get("fold", 0))
    wanted = _folds(datalist) if folds == "all" else [fold]
    algo_dirs = [p for p in trial_dir.iterdir() if (p / "scripts").is_dir() and (p / "configs").is_dir()]
    if len(algo_dirs) != 1:
        raise InputError("expected one exported algorithm folder in the best trial", where=str(trial_dir))
    algo_name = algo_dirs[0].name
    out_dir = Path(out).resolve() if out else work
    ensure_dir(out_dir)
    if out_dir != work:
        # AutoRunner(analyze=False) reads <work_dir>/datastats.yaml; the algo records point at its templates.
        shutil.copy2(work / "datastats.yaml", out_dir / "datastats.yaml")
        write_yaml(out_dir / "input.yaml", cfg)
        if not (out_dir / "algorithm_templates" / algo_name).is_dir():
            shutil.copytree(work / "algorithm_templates" / algo_name, out_dir / "algorithm_templates" / algo_name)
    runner = AlgoRunner.from_templates(out_dir / "algorithm_templates", algo_name, out_dir,
                                       out_dir / "datastats.yaml", out_dir / "input.yaml")
    ckpt = Path(str(trial_overrides.get("ckpt_path", trial_dir / "model")))
    model = best.get("model_path")
    written = export_winner(runner.algo, settings, out_dir, wanted, trained_fold=fold,
                            trained_ckpt=ckpt if with_model and model and ckpt.is_dir() else None,
                            score=best.get("score") if with_model else None)
    print(f"export: {algo_name} (score {best.get('score')}) -> " + ", ".join(str(p) for p in written))
    print(f"ensemble: AutoRunner(work_dir={str(out_dir)!r}, input={str(out_dir / 'input.yaml')!r}, "
          "analyze=False, algo_gen=False, train=False)")
