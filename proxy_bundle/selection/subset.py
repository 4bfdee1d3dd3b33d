"""Proxy-data selection: score the training cases of a datalist by similarity and keep a subset (``select`` command).

Which cases are candidates:

* a datalist with ``fold`` keys: fold ``fold`` (default 0) is the validation fold. Its entries are copied to the
  output unchanged and the entries of all other folds are the candidates;
* a datalist with a ``validation`` list and no folds: every ``training`` entry is a candidate; the ``validation``
  list is copied unchanged;
* neither: every training entry is a candidate (a warning says that nothing is held out).

The output datalist has the input's schema: the same top-level keys and entries, with ``training`` reduced to the
validation fold's entries followed by the selected cases. Auto3DSeg (and ``validate``) need fold numbers
``0..K-1`` without gaps; the selected cases keep their fold numbers when that holds and are otherwise renumbered, in
order, onto the free numbers (the validation fold's number never changes). Proxy runs train on the selected cases
and validate on fold ``fold``, exactly the cases a full run of that fold validates on.

``roi`` mode needs a label with foreground; a case without one is compared in ``image`` mode instead (a warning,
and ``mode_used: image`` in the scores file).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from proxy_bundle.errors import InputError
from proxy_bundle.options import SelectionMode, Similarity, Strategy

__all__ = ["Selection", "run_selection", "write_selection", "select", "default_scores_path", "case_id"]

log = logging.getLogger("proxy_bundle.selection")

#: Similarity metrics (the same as ``similarity.METRICS``; repeated so that option errors need no torch import).
METRICS = ("mi", "nmi", "ncc")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")


@dataclass
class Selection:
    """Everything a selection produced: the proxy datalist and the scores document (both plain JSON values)."""

    proxy_datalist: dict
    scores: dict
    selected: list[str]
    warnings: list[str] = field(default_factory=list)


def case_id(entry: dict) -> str:
    """A case's name: its (first) image file name without the image suffix."""
    image = entry["image"][0] if isinstance(entry["image"], list) else entry["image"]
    name = Path(str(image)).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def brief_list(names: Sequence[str], limit: int = 12) -> str:
    """``a, b, c`` or ``a, b, ... (n more)`` for console summaries."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names) - limit} more)"


def default_scores_path(out: str | os.PathLike) -> Path:
    """``<out stem>_scores.json`` next to ``out``."""
    p = Path(out)
    name = p.name[:-5] if p.name.lower().endswith(".json") else p.name
    return p.with_name(f"{name}_scores.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _triple(value: Any, name: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p for p in value.replace(",", " ").split() if p]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        parts = [value] * 3
    else:
        parts = list(value)
    try:
        nums = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise InputError(f"expected one or three numbers, got {value!r}", where=name) from None
    if len(nums) == 1:
        nums *= 3
    if len(nums) != 3 or not all(math.isfinite(v) and v > 0 for v in nums):
        raise InputError(f"expected one or three positive numbers, got {value!r}", where=name)
    return nums[0], nums[1], nums[2]


def _pair(value: Any, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    parts = [p for p in value.replace(",", " ").split() if p] if isinstance(value, str) else list(value)
    try:
        nums = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise InputError(f"expected two numbers (low, high), got {value!r}", where=name) from None
    if len(nums) != 2 or not all(math.isfinite(v) for v in nums):
        raise InputError(f"expected two numbers (low, high), got {value!r}", where=name)
    return nums[0], nums[1]


def _int_option(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= int(value) <= high:
        raise InputError(f"must be an integer in [{low}, {high}], got {value!r}", where=name)
    return int(value)


def check_options(*, fraction: Any, count: Any, metric: str, mode: str, strategy: str, grid: Any, bins: Any,
                  seed: Any, workers: Any, spacing: Any, window: Any, percentiles: Any) -> tuple:
    """Check the selection options (no file read, no torch import).

    Returns:
        ``(grid, bins, seed, workers, spacing, window, percentiles)`` normalised.

    Raises:
        InputError: naming the option.
    """
    from proxy_bundle.selection import strategies as st

    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r} (use one of {', '.join(METRICS)})", where="--similarity")
    if strategy not in st.STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r} (use one of {', '.join(st.STRATEGIES)})", where="strategy")
    if mode not in ("roi", "image"):
        raise InputError(f"unknown mode {mode!r} (use roi or image)", where="mode")
    if (fraction is None) == (count is None):
        raise InputError("give exactly one of --data_fraction or --count", where="size")
    if fraction is not None:
        st.subset_size(1, fraction=fraction)  # range check before any file is read
    return (
        _int_option(grid, "grid", 4, 512),
        _int_option(bins, "bins", 2, 256),
        _int_option(seed, "seed", 0, 2**63 - 1),
        _int_option(workers, "workers", 0, 256),
        _triple(spacing, "spacing"),
        _pair(window, "window"),
        _pair(percentiles, "percentiles"),
    )


def _partition(data: dict, fold: int | None, where: str) -> tuple[list[int], list[int], dict[str, Any]]:
    """(candidate indices, validation-fold indices, description) for the datalist's ``training`` entries."""
    training = data["training"]
    all_idx = list(range(len(training)))
    folds = sorted({int(e["fold"]) for e in training if "fold" in e})
    # Folds first, as in AutoRunner: a fold-form datalist (validation list already folded in as fold 0) may
    # keep its "validation" key.
    if not folds and isinstance(data.get("validation"), list) and data["validation"]:
        return all_idx, [], {"kind": "list", "key": "validation", "n_cases": len(data["validation"])}
    if not folds:
        return all_idx, [], {"kind": "none", "n_cases": 0}
    if fold is None:
        return all_idx, [], {"kind": "none", "n_cases": 0}
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)):
        raise InputError(f"fold must be an integer, got {fold!r}", where="fold")
    if int(fold) not in folds:
        raise InputError(f"validation fold {fold} does not exist (folds: {folds})", where=where)
    val = [i for i in all_idx if "fold" in training[i] and int(training[i]["fold"]) == int(fold)]
    cand = [i for i in all_idx if i not in set(val)]
    return cand, val, {"kind": "fold", "fold": int(fold), "n_cases": len(val)}


def _contiguous_folds(val_fold: int | None, entries: list[dict]) -> list[dict]:
    """Selected entries with fold numbers that, together with ``val_fold``, run 0..K-1 without gaps."""
    if not entries or not all("fold" in e for e in entries):
        return entries
    used = sorted({int(e["fold"]) for e in entries})
    present = set(used) | ({val_fold} if val_fold is not None else set())
    if present == set(range(len(present))):
        return entries
    free = [f for f in range(len(used) + (1 if val_fold is not None else 0)) if f != val_fold]
    if val_fold is not None and val_fold > len(used):
        # too few distinct folds left to fill 0..val_fold-1: deal the cases over those numbers instead.
        if len(entries) < val_fold:
            raise InputError(
                f"{len(entries)} selected cases cannot fill folds 0..{val_fold - 1} around validation fold {val_fold}; "
                "select more cases or use fold 0 for validation",
                where="fold",
            )
        out = []
        for k, e in enumerate(entries):
            e = dict(e)
            e["fold"] = k % val_fold
            out.append(e)
        return out
    mapping = {old: free[i] for i, old in enumerate(used)}
    out = []
    for e in entries:
        e = dict(e)
        e["fold"] = mapping[int(e["fold"])]
        out.append(e)
    return out


def _modality(modality: Any, data: dict, dataroot: Path) -> tuple[str, str]:
    """(kind, where it came from)."""
    from proxy_bundle.selection.preprocess import modality_kind

    if modality is not None:
        return modality_kind(modality), "option"
    if "modality" in data:
        return modality_kind(data["modality"]), "datalist"
    ds = dataroot / "dataset.json"
    if ds.is_file():
        from proxy_bundle.validation import read_json

        meta = read_json(ds)
        if isinstance(meta, dict) and "modality" in meta:
            return modality_kind(meta["modality"]), str(ds)
    return "mr", "default (no modality given: percentile scaling)"


def _stats(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {}
    return {
        "min": float(v.min()),
        "max": float(v.max()),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "std": float(v.std()),
    }


def run_selection(
    datalist: str | os.PathLike,
    dataroot: str | os.PathLike | None = None,
    *,
    fraction: float | None = None,
    count: int | None = None,
    metric: str = "mi",
    mode: str = "roi",
    strategy: str = "representative",
    grid: int = 48,
    bins: int = 32,
    seed: int = 0,
    fold: int | None = 0,
    modality: Any = None,
    spacing: Any = None,
    window: Any = None,
    percentiles: Any = None,
    margin: float = 10.0,
    device: str | None = None,
    workers: int = 0,
    progress: bool = True,
    gate_input: bool = True,
) -> Selection:
    """Score the candidate cases of ``datalist`` and select a proxy subset (nothing is written; see :func:`select`).

    Returns a :class:`Selection` whose ``scores`` document holds, per candidate, its id, image, fold, score (mean
    similarity to the other candidates), rank, whether it was selected and the mode actually used; the candidates'
    similarity matrix; and the provenance (all settings and the sha256 of the datalist file).

    ``gate_input=False`` skips the validation gate (:func:`proxy_bundle.validation.gate`) for callers that have
    just run it on the same datalist.
    """
    from proxy_bundle.selection import strategies as st

    grid, bins, seed, workers, spacing_t, window_t, percentiles_t = check_options(
        fraction=fraction, count=count, metric=metric, mode=mode, strategy=strategy, grid=grid, bins=bins,
        seed=seed, workers=workers, spacing=spacing, window=window, percentiles=percentiles)

    from proxy_bundle.selection.preprocess import PreprocessConfig, common_spacing, iter_case_features
    from proxy_bundle.selection.similarity import mean_similarity, pairwise_similarity, quantize, torch_threads
    from proxy_bundle.validation import gate, load_datalist, resolve

    path = Path(datalist)
    if gate_input:
        # Every case is read and checked before any work (and before anything is written).
        gate(path, dataroot, require_labels=False, require_foreground=False)
    data = load_datalist(path, dataroot, require_labels=False)
    root = Path(dataroot) if dataroot is not None else path.parent
    cand, val, validation = _partition(data, fold, str(path))
    k = st.subset_size(len(cand), fraction=fraction, count=count)
    if len(cand) < 2:
        raise InputError(f"only {len(cand)} candidate case(s) outside the validation fold; need at least 2",
                         where=str(path))
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        log.warning("warning: %s", message)

    if validation["kind"] == "none":
        warn(f"{path}: no validation fold or list: all {len(cand)} training cases are candidates")

    training = data["training"]
    entries = [training[i] for i in cand]
    ids = [case_id(e) for e in entries]
    if len(set(ids)) != len(ids):  # same file name in two folders: fall back to the path as given
        ids = [str(e["image"][0] if isinstance(e["image"], list) else e["image"]) for e in entries]

    def files(entry: dict) -> tuple[Any, Any]:
        image = entry["image"]
        image_path = [str(resolve(p, root)) for p in image] if isinstance(image, list) else str(resolve(image, root))
        label = entry.get("label")
        return image_path, (str(resolve(label, root)) if label is not None else None)

    cases = [files(e) for e in entries]
    kind, modality_source = _modality(modality, data, root)
    if spacing_t is None:
        spacing_t = common_spacing([c[0] for c in cases])
    cfg_kwargs: dict[str, Any] = dict(mode=mode, grid=grid, spacing=spacing_t, modality=kind, margin_mm=float(margin))
    if window_t is not None:
        cfg_kwargs["ct_window"] = window_t
    if percentiles_t is not None:
        cfg_kwargs["mr_percentiles"] = percentiles_t
    config = PreprocessConfig(**cfg_kwargs)

    from tqdm.auto import tqdm

    n = len(cases)
    # MI only needs bin codes: keep uint8 codes instead of float32 intensities (4x less memory).
    keep_codes = metric in ("mi", "nmi")
    stack: np.ndarray | None = None
    modes_used: list[str] = [mode] * n
    with tqdm(total=n, desc="preprocess", unit="case", disable=not progress, leave=False) as bar:
        for i, feats in iter_case_features(cases, config, workers=workers):
            if keep_codes:
                with torch_threads(1):
                    vec = quantize(feats.features, bins).numpy()
            else:
                vec = feats.features
            if stack is None:
                stack = np.empty((n, vec.size), dtype=vec.dtype)
            elif vec.size != stack.shape[1]:
                raise InputError(f"has {vec.size // config.voxels} image channels, the first case has "
                                 f"{stack.shape[1] // config.voxels}", where=ids[i])
            stack[i] = vec
            modes_used[i] = feats.mode_used
            if feats.note:
                warn(f"{ids[i]}: {feats.note}")
            bar.update(1)
    assert stack is not None
    pairs = n * (n - 1) // 2
    with tqdm(total=pairs, desc=f"{metric} pairs", unit="pair", disable=not progress, leave=False) as bar:
        sim = pairwise_similarity(stack, metric, bins, device=device, progress=bar.update).numpy()
    scores = mean_similarity(sim)
    chosen = st.choose(sim, strategy, k, seed)
    chosen_set = set(int(c) for c in chosen)
    ranking = np.argsort(-scores, kind="stable")
    rank = np.empty(n, dtype=int)
    rank[ranking] = np.arange(1, n + 1)

    selected_entries = [entries[int(c)] for c in sorted(chosen_set)]
    selected_entries = _contiguous_folds(validation.get("fold"), selected_entries)
    proxy = copy.deepcopy(data)
    proxy["training"] = [copy.deepcopy(training[i]) for i in val] + copy.deepcopy(selected_entries)
    if "numTraining" in proxy:  # a Decathlon dataset.json: keep it valid (numTraining == len(training))
        proxy["numTraining"] = len(proxy["training"])

    order = [ids[int(c)] for c in chosen]
    case_rows = []
    for i, e in enumerate(entries):
        row: dict[str, Any] = {"id": ids[i], "image": e["image"]}
        if "label" in e:
            row["label"] = e["label"]
        if "fold" in e:
            row["fold"] = e["fold"]
        row.update(score=float(scores[i]), rank=int(rank[i]), selected=i in chosen_set, mode_used=modes_used[i])
        case_rows.append(row)
    from proxy_bundle import __version__

    provenance = {
        "metric": metric,
        "mode": mode,
        "strategy": strategy,
        "fraction": fraction,
        "count": count,
        "k": k,
        "seed": seed,
        "bins": bins,
        "datalist": str(path.resolve()),
        "datalist_sha256": _sha256(path),
        "dataroot": str(root.resolve()),
        "validation": validation,
        "modality_source": modality_source,
        **config.provenance(),
        "proxy_bundle_version": __version__,
    }
    doc = {
        "provenance": provenance,
        "summary": {
            "n_candidates": n,
            "n_selected": k,
            "selected": order,
            "score_stats": _stats(scores),
            "selected_score_stats": _stats(scores[sorted(chosen_set)]),
            "fallback_cases": [ids[i] for i in range(n) if modes_used[i] != mode],
        },
        "cases": case_rows,
        "case_ids": ids,
        "similarity": [[float(v) for v in row] for row in sim],
        "warnings": warnings,
    }
    return Selection(proxy_datalist=proxy, scores=doc, selected=order, warnings=warnings)


def write_selection(selection: Selection, out: str | os.PathLike, scores: str | os.PathLike | None = None
                    ) -> tuple[Path, Path]:
    """Write the proxy datalist and the scores file atomically; returns both paths."""
    from proxy_bundle.atomic import write_json

    out_path = Path(out)
    scores_path = Path(scores) if scores is not None else default_scores_path(out_path)
    if scores_path.resolve() == out_path.resolve():
        raise InputError("the scores file and the proxy datalist must be different files", where=str(out_path))
    source = Path(selection.scores["provenance"]["datalist"]).resolve()
    if source in (out_path.resolve(), scores_path.resolve()):
        raise InputError("would overwrite the input datalist; choose another --out/--scores", where=str(out_path))
    selection.scores["provenance"]["proxy_datalist"] = str(out_path.resolve())
    write_json(scores_path, selection.scores)
    write_json(out_path, selection.proxy_datalist)
    return out_path, scores_path


def select(
    datalist: str,
    dataroot: str | None = None,
    data_fraction: float | None = None,
    count: int | None = None,
    similarity: Similarity = "mi",
    mode: SelectionMode = "roi",
    strategy: Strategy = "representative",
    grid: int = 48,
    bins: int = 32,
    seed: int = 0,
    out: str = "proxy_datalist.json",
    scores: str | None = None,
    device: str | None = None,
    fold: int | None = 0,
    modality: str | None = None,
    spacing: Any = None,
    window: Any = None,
    percentiles: Any = None,
    margin: float = 10.0,
    num_workers: int = 0,
    progress: bool = True,
    report: bool = True,
) -> None:
    """Select a proxy subset of the training cases of an Auto3DSeg datalist by image similarity.

    Every candidate is preprocessed onto a small common grid, compared with every other candidate, and scored by
    its mean similarity; ``strategy`` then picks the subset. The validation fold (or ``validation`` list) is kept
    unchanged and is never a candidate.

    Args:
        datalist: Auto3DSeg datalist JSON (``training`` entries with ``image``, ``label``, ``fold``).
        dataroot: folder the datalist's paths are relative to (default: the datalist's folder).
        data_fraction: size of the subset as a fraction of the candidates, in (0, 1] (rounded, at least 1).
        count: size of the subset as a number of cases (instead of ``data_fraction``).
        similarity: image similarity metric: ``mi`` (histogram mutual information), ``nmi`` (MI normalised to [0, 1]) or ``ncc``.
        mode: ``roi`` (label bounding box + ``margin`` mm; cases without foreground fall back to ``image``) or
            ``image`` (foreground-cropped whole image).
        strategy: ``representative`` (highest mean similarity), ``diverse`` (lowest), ``coverage`` (k-medoids over
            the similarity matrix) or ``random`` (seeded).
        grid: edge of the cubic proxy grid cases are compared on (voxels).
        bins: histogram bins per image for MI.
        seed: random seed (``random`` strategy).
        out: proxy datalist to write (the input's schema, ``training`` reduced).
        scores: scores file (default ``<out stem>_scores.json``): per-case scores, similarity matrix, provenance.
        device: ``cpu`` or ``cuda`` for the similarity computation (default: CUDA when available).
        fold: validation fold kept intact (ignored when the datalist has a ``validation`` list).
        modality: ``CT`` (HU window) or anything else (percentile scaling); default from the datalist or the
            ``dataset.json`` in ``dataroot``.
        spacing: common voxel size in mm, one or three numbers (default: per-axis median of the candidates).
        window: CT intensity window ``low,high`` in HU (default -175,250).
        percentiles: percentile range ``low,high`` for non-CT images (default 0.5,99.5).
        margin: context around the label's bounding box in ``roi`` mode (mm).
        num_workers: DataLoader worker processes for reading cases (0: in this process).
        progress: show progress bars.
        report: write the selection report (Markdown + figures) into ``<out stem>_report/``.
    """
    if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int)):
        raise InputError(f"fold must be an integer, got {fold!r}", where="fold")
    selection = run_selection(
        datalist, dataroot, fraction=data_fraction, count=count, metric=similarity, mode=mode, strategy=strategy,
        grid=grid, bins=bins, seed=seed, fold=fold, modality=modality, spacing=spacing, window=window,
        percentiles=percentiles, margin=margin, device=device, workers=num_workers, progress=progress,
    )
    out_path, scores_path = write_selection(selection, out, scores)
    s = selection.scores["summary"]
    v = selection.scores["provenance"]["validation"]
    kept = {"fold": f"validation fold {v.get('fold')} kept ({v['n_cases']} cases)",
            "list": f"validation list kept ({v['n_cases']} cases)", "none": "no validation cases"}[v["kind"]]
    print(f"selected {s['n_selected']} of {s['n_candidates']} candidates ({similarity}, {mode}, {strategy}); {kept}")
    print(f"selected: {brief_list(s['selected'])}")
    print(f"wrote {out_path} and {scores_path}")
    if report:
        from proxy_bundle.selection.report import report_dir, report_line, write_selection_report

        print(report_line(write_selection_report(selection.scores, report_dir(out_path))))
