"""Small pieces the MONAI bundles in ``bundles/`` call from their configs.

The bundles' configs reference these as ``$proxy_bundle.bundle_support.<name>(...)`` so that the bundles
themselves ship no Python: data splitting (MSD ``dataset.json`` or an Auto3DSeg ``datalist.json`` with folds,
optionally narrowed to a proxy subset), image lists for inference, the per-validation progress file a
search polls, and checkpoint discovery for resuming.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from proxy_bundle import validation
from proxy_bundle.atomic import write_json, write_yaml
from proxy_bundle.errors import InputError
from proxy_bundle.hpo.runners import read_progress
from proxy_bundle.validation import resolve

__all__ = [
    "split_dataset",
    "select_proxy_data",
    "load_datalist",
    "image_datalist",
    "ProgressWriter",
    "latest_checkpoint",
    "flag",
]

_NIFTI = (".nii", ".nii.gz")


def _absolute(entries: list[dict], root: Path) -> list[dict]:
    """Copies of ``entries`` with image/label paths resolved the way MONAI reads them (multi-channel lists kept)."""
    out = []
    for entry in entries:
        item = dict(entry)
        for key in ("image", "label"):
            if key in item:
                value = item[key]
                item[key] = ([str(resolve(v, root).resolve()) for v in value] if isinstance(value, list)
                             else str(resolve(value, root).resolve()))
        out.append(item)
    return out


def _key(entry: dict) -> str:
    image = entry["image"]
    return image[0] if isinstance(image, list) else image


def load_datalist(path: str | os.PathLike, key: str = "training", base_dir: str | os.PathLike | None = None,
                  require_label: bool = True) -> list[dict]:
    """Entries of ``key`` in a datalist JSON, paths made absolute (relative to ``base_dir``, default the file's folder).

    The datalist is checked by :func:`proxy_bundle.validation.load_datalist` (every file must exist; the error
    names the datalist and the entry). ``fold`` keys are kept.
    """
    path = Path(path)
    root = Path(base_dir) if base_dir is not None else path.parent
    data = validation.load_datalist(path, root, require_labels=require_label and key == "training",
                                    require_training=key == "training")
    entries = data.get(key)
    if not isinstance(entries, list) or not entries:
        raise InputError(f"has no entries under {key!r}", where=str(path))
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "image" not in e or (require_label and "label" not in e):
            need = "'image' and 'label'" if require_label else "'image'"
            raise InputError(f"{key}[{i}] needs {need}", where=str(path))
    if key not in ("training", "testing"):
        # validation.load_datalist checks the files of training/testing; check other sections' files too.
        for i, e in enumerate(_absolute(entries, root)):
            files = [f for k in ("image", "label") if k in e for f in (e[k] if isinstance(e[k], list) else [e[k]])]
            missing = [f for f in files if not Path(f).is_file()]
            if missing:
                raise InputError(f"{key}[{i}] file not found: {missing[0]}", where=str(path))
    return _absolute(entries, root)


def split_dataset(dataset_dir: str | os.PathLike, fold: int = 0, num_folds: int = 5,
                  proxy_datalist: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """Deterministic train/validation split of an MSD-layout dataset: ``{"training": [...], "validation": [...]}``.

    ``DIR/datalist.json`` (Auto3DSeg, entries with ``fold``) decides the folds when present: fold ``fold`` is
    validation. Otherwise ``DIR/dataset.json``'s ``training`` cases, sorted by image path, are dealt round-robin
    into ``num_folds`` folds, so the split never depends on file-system order.

    ``proxy_datalist`` (a datalist JSON whose ``training`` entries are a subset of the dataset, paths relative to
    ``dataset_dir`` or absolute) replaces the training cases by that subset; cases of the validation fold are
    dropped from it so that validation stays untouched. When it has a ``validation`` list, that list is used.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise InputError("dataset directory not found", where=str(root))
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise InputError(f"num_folds must be an integer >= 2, got {num_folds!r}", where=str(root))
    if (root / "datalist.json").is_file():
        cases = load_datalist(root / "datalist.json", base_dir=root)
    else:
        cases = _absolute(validation.load_decathlon(root / "dataset.json")["training"], root)
    if not all("fold" in c for c in cases):
        cases = sorted(cases, key=_key)
        for i, c in enumerate(cases):
            c["fold"] = i % num_folds
    folds = sorted({int(c["fold"]) for c in cases})
    if fold not in folds:
        raise InputError(f"fold {fold} does not exist (folds: {folds})", where=str(root))
    val = [c for c in cases if int(c["fold"]) == fold]
    train = [c for c in cases if int(c["fold"]) != fold]
    if proxy_datalist:
        proxy_path = Path(proxy_datalist)
        proxy = load_datalist(proxy_path, base_dir=root)
        val_images = {_key(c) for c in val}
        train = [c for c in proxy if _key(c) not in val_images]
        if "validation" in validation.read_json(proxy_path):
            val = load_datalist(proxy_path, key="validation", base_dir=root)
        if not train:
            raise InputError(f"no proxy case is outside validation fold {fold}", where=str(proxy_path))
    if not train or not val:
        raise InputError(f"fold {fold} leaves {len(train)} training and {len(val)} validation cases; "
                         "need at least one of each", where=str(root))
    return {"training": train, "validation": val}


def select_proxy_data(dataset_dir: str | os.PathLike, out: str | os.PathLike, *, fraction: float | None = None,
                      count: int | None = None, fold: int = 0, num_folds: int = 5, metric: str = "mi",
                      mode: str = "roi", strategy: str = "representative", seed: int = 0) -> str:
    """Select proxy data among this bundle's training cases and write the proxy datalist to ``out``.

    The candidates are exactly the training cases of :func:`split_dataset` for ``fold``; its validation cases go
    into the proxy datalist's ``validation`` list unchanged, so a proxy run validates on the same cases as a full
    run. Scoring and choice are :func:`proxy_bundle.selection.subset.run_selection` (``fraction`` or ``count``,
    ``metric``, ``mode``, ``strategy``). An existing ``out`` made from the same candidates with the same settings
    is reused, so a resumed search does not select again. Returns the path of the proxy datalist.
    """
    from proxy_bundle.selection.subset import default_scores_path, run_selection, write_selection

    out = Path(out)
    split = split_dataset(dataset_dir, fold=fold, num_folds=num_folds)
    keep = ("image", "label")
    candidates = {"training": [{k: e[k] for k in keep if k in e} for e in split["training"]],
                  "validation": [{k: e[k] for k in keep if k in e} for e in split["validation"]]}
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


def image_datalist(source: str | os.PathLike, key: str = "testing",
                   base_dir: str | os.PathLike | None = None) -> list[dict]:
    """Inputs for inference: every NIfTI file in a folder, or the ``key`` entries of a datalist JSON (labels optional)."""
    src = Path(source)
    if src.is_dir():
        files = sorted(str(p.resolve()) for p in src.iterdir() if p.name.endswith(_NIFTI) and not p.name.startswith("."))
        if not files:
            raise InputError("no NIfTI images (*.nii, *.nii.gz) in this folder", where=str(src))
        return [{"image": f} for f in files]
    if src.is_file():
        return load_datalist(src, key=key, base_dir=base_dir, require_label=False)
    raise InputError("input folder or datalist not found", where=str(src))


class ProgressWriter:
    """Ignite handler for a validation engine: after every validation it rewrites ``path`` atomically.

    The file is a YAML list with one entry per validation, ``{epoch, avg_dice_score, best_avg_dice_score,
    best_epoch, elapsed_s}`` - the format of Auto3DSeg's ``progress.yaml``, so one poller serves bundles and
    algorithm templates. ``epoch`` is the training epoch the validation ran after. Entries from an earlier run at
    the same or later epochs are dropped, so a resumed run continues the file and a fresh run starts it anew.
    """

    def __init__(self, path: str | os.PathLike, metric_name: str = "val_mean_dice") -> None:
        self.path = Path(path)
        self.metric_name = metric_name
        self._start = time.monotonic()
        self._entries: list[dict] | None = None
        self._offset = 0.0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        epoch = int(engine.state.epoch)  # ValidationHandler runs the evaluator with the trainer's epoch
        value = engine.state.metrics.get(self.metric_name)
        if value is None:
            raise KeyError(f"metric {self.metric_name!r} not computed by this engine "
                           f"(has {sorted(engine.state.metrics)})")
        if self._entries is None:
            self._entries = [e for e in read_progress(self.path) if int(e.get("epoch", 0)) < epoch]
            # A resumed run continues the clock of the run it resumes (the time between the interruption and
            # the restart trained nothing and is not counted).
            self._offset = float(self._entries[-1].get("elapsed_s", 0.0)) if self._entries else 0.0
        self._entries = [e for e in self._entries if int(e["epoch"]) < epoch]
        score = float(value)
        prev = max(self._entries, key=lambda e: e["best_avg_dice_score"], default=None)
        if prev is None or score > prev["best_avg_dice_score"]:
            best, best_epoch = score, epoch
        else:
            best, best_epoch = float(prev["best_avg_dice_score"]), int(prev["best_epoch"])
        self._entries.append({
            "epoch": epoch,
            "avg_dice_score": score,
            "best_avg_dice_score": best,
            "best_epoch": best_epoch,
            "elapsed_s": round(self._offset + time.monotonic() - self._start, 3),
        })
        write_yaml(self.path, self._entries)


_EPOCH_CKPT = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str | None:
    """Path of the highest-epoch ``*checkpoint_epoch=N.pt`` in ``ckpt_dir`` (written by CheckpointSaver), or None."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _EPOCH_CKPT.search(p.name))]
    return str(max(found)[1]) if found else None


def flag(value: Any, where: str = "flag") -> bool:
    """A config switch as a bool. Command-line overrides pass through python-fire, which keeps lower-case
    ``true``/``false`` as strings; a bare string in a ``$not @x`` expression would otherwise count as true."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off", "none", ""):
            return False
    elif value is None or isinstance(value, (bool, int)):
        return bool(value)
    raise InputError(f"expected true or false, got {value!r}", where=where)
