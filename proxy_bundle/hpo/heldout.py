"""What a finished search is worth: the winner against the template's default configuration, on held-out data.

* :func:`external_cases` finds the held-out set of a data source: ``external`` in ``input.yaml`` (a JSON file with a
  ``testing`` list), else ``external.json`` in the dataset folder (the phantoms' and MSD-style layout), else the
  datalist's own ``testing`` list when every entry has a label. Checked before any training starts.
* :func:`run_default_trial` trains the template's default configuration at full fidelity through the search's
  own runner (the "baseline trial"): the question a search must answer is whether it beats the defaults.
* :func:`score_models` scores checkpoints on the validation fold and the held-out set exactly like the template's
  validation (:class:`proxy_bundle.study.evaluate.Evaluator`).
* :func:`trivial_dice` is the score of the best constant prediction (one class everywhere), the floor below
  which a "result" carries no information.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from proxy_bundle.atomic import write_json
from proxy_bundle.errors import InputError

__all__ = ["external_cases", "run_default_trial", "scorable", "score_models", "template_values", "trivial_dice",
           "validation_cases"]

DEFAULT_TRIAL_DIR = "default_trial"


def _labelled(entries: Any) -> bool:
    return isinstance(entries, list) and bool(entries) and all(isinstance(e, dict) and "label" in e for e in entries)


def external_cases(cfg: Mapping[str, Any]) -> tuple[list[dict[str, str]], str] | None:
    """Held-out cases (absolute ``image``/``label`` paths) of a data source and where they were listed.

    ``cfg``: the data source config (``dataroot``, ``datalist``, optional ``external``). Returns ``None`` when the
    data has no labelled held-out set. Raises :class:`InputError` for a listed set that cannot be read or whose
    files are missing (before any training, like every input check).
    """
    from proxy_bundle.study.evaluate import read_cases

    dataroot = Path(str(cfg["dataroot"]))
    candidates: list[Path] = []
    if cfg.get("external"):
        p = Path(os.path.expanduser(str(cfg["external"])))
        candidates.append(p if p.is_absolute() else dataroot / p)
        if not candidates[0].is_file():
            raise InputError("external set listed in the input config not found", where=str(candidates[0]))
    candidates.append(dataroot / "external.json")
    candidates.append(Path(str(cfg["datalist"])))
    for path in candidates:
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read held-out case list ({err.__class__.__name__})", where=str(path)) from None
        if not _labelled(data.get("testing") if isinstance(data, dict) else None):
            if path == candidates[-1]:
                continue  # an MSD datalist's unlabelled testing list is not a held-out set
            raise InputError("no 'testing' list of labelled cases", where=str(path))
        cases = read_cases(path, "testing", dataroot)
        for i, case in enumerate(cases):
            for key in ("image", "label"):
                if not os.path.isfile(case[key]):
                    raise InputError(f"testing entry {i}: {key} file not found ({case[key]})", where=str(path))
        return cases, str(path)
    return None


def validation_cases(cfg: Mapping[str, Any], fold: int) -> list[dict[str, str]]:
    """The cases every trial is scored on (absolute paths): the datalist's ``validation`` list when it has one,
    else the training entries of fold ``fold``."""
    from proxy_bundle.study.evaluate import read_cases

    try:
        has_list = isinstance(json.loads(Path(str(cfg["datalist"])).read_text()).get("validation"), list)
    except (OSError, ValueError, AttributeError):
        has_list = False
    if has_list:
        return read_cases(cfg["datalist"], "validation", cfg["dataroot"])
    return read_cases(cfg["datalist"], "training", cfg["dataroot"], fold=fold)


def trivial_dice(cases: Sequence[Mapping[str, str]], num_classes: int | None = None) -> float:
    """Mean foreground Dice of the best constant prediction (one foreground class on every voxel).

    Predicting class ``c`` everywhere scores ``2|Y_c| / (|Y_c| + N)`` on class ``c`` (N voxels) and 0 on the
    others, so the mean over the ``num_classes - 1`` foreground classes is that over ``num_classes - 1``; the best
    ``c`` is reported. ``cases``: dicts with a ``label`` path (NIfTI). Returns a value in [0, 1].
    """
    import nibabel as nib
    import numpy as np

    per_class: dict[int, list[float]] = {}
    for case in cases:
        label = np.asarray(nib.load(case["label"]).dataobj).astype(np.int64)
        n = label.size
        for c in np.unique(label):
            if c == 0:
                continue
            k = int((label == c).sum())
            per_class.setdefault(int(c), []).append(2.0 * k / (k + n))
    if not per_class:
        return 0.0
    n_fg = max(len(per_class), (num_classes or 0) - 1)
    return float(max(np.mean(v) for v in per_class.values()) / n_fg)


def template_values(config_file: str | os.PathLike, names: Sequence[str]) -> dict[str, Any]:
    """Values of ``key#sub`` settings in a (filled) ``hyper_parameters.yaml``; missing keys are left out."""
    import yaml

    data = yaml.safe_load(Path(config_file).read_text()) or {}
    out: dict[str, Any] = {}
    for name in names:
        node: Any = data
        for part in name.split("#"):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            out[name] = node
    return out


def run_default_trial(runner: Any, fidelity: Any, out_dir: str | os.PathLike,
                      searched: Sequence[str]) -> dict[str, Any]:
    """Train the template's default configuration (no searched override) at ``fidelity``; resumable.

    ``runner``: the search's :class:`~proxy_bundle.hpo.runners.TrialRunner`; ``out_dir``: the study folder (the
    trial goes to ``out_dir/default_trial``). Returns ``{params, score, scores, wall_s, model_path, bundle_dir,
    fidelity}`` where ``params`` are the template's values of the ``searched`` settings. A finished trial with the
    same fidelity is reused. Raises :class:`~proxy_bundle.hpo.runners.TrialFailed` when training fails.
    """
    out = Path(out_dir)
    record_path = out / f"{DEFAULT_TRIAL_DIR}.json"
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("fidelity") == fidelity.to_dict() and record.get("model_path") \
                and os.path.isfile(record["model_path"]):
            return record
    result = runner.run({}, fidelity, out / DEFAULT_TRIAL_DIR, lambda epoch, score: False)
    bundle = result.output_dir
    config = Path(bundle or "") / "configs" / "hyper_parameters.yaml"
    record = {
        "params": template_values(config, searched) if config.is_file() else {},
        "score": result.score,
        "scores": [{"epoch": int(e), "dice": float(s)} for e, s in result.scores],
        "wall_s": result.wall_s,
        "model_path": result.model_path,
        "bundle_dir": bundle,
        "fidelity": fidelity.to_dict(),
    }
    write_json(record_path, record)
    return record


def scorable(bundle_dir: str | os.PathLike | None) -> bool:
    """Whether a trial's algo folder can be scored here: the evaluator rebuilds the template's own inference
    pipeline from ``scripts/pipeline.py`` (proxyseg); MONAI's templates have no such module."""
    return bool(bundle_dir) and (Path(bundle_dir) / "scripts" / "pipeline.py").is_file()


def score_models(models: Mapping[str, tuple[str, str]],
                 sets: Mapping[str, Sequence[Mapping[str, str]]]) -> dict[str, dict[str, float]]:
    """Mean foreground Dice of each ``{name: (bundle_dir, model_path)}`` on each ``{set name: cases}``.

    Models whose checkpoint is missing or whose algo folder is not :func:`scorable` are left out.
    """
    from proxy_bundle.study.evaluate import Evaluator

    evaluator = Evaluator()
    return {name: evaluator.dice(bundle, model, sets) for name, (bundle, model) in models.items()
            if scorable(bundle) and model and os.path.isfile(model)}
