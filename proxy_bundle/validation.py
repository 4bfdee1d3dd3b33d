"""Input validation for datalists, Decathlon ``dataset.json`` files and NIfTI image/label pairs.

Every command loads its inputs through this module so that bad input fails early with a one-line
:class:`~proxy_bundle.errors.InputError` naming the file or case and the problem (the CLI turns it
into ``error: <where>: <problem>`` and exit code 2), instead of a traceback deep inside a
transform, a worker process or a training loop hours later.

Public API:

- :func:`read_json` - parse a JSON file (missing file, syntax error with line:col).
- :func:`load_datalist` - an Auto3DSeg datalist (``training`` / ``testing`` lists, ``fold`` keys).
- :func:`load_decathlon` - a Medical Segmentation Decathlon ``dataset.json``.
- :func:`resolve` - how an entry path is joined with the dataroot.
- :func:`declared_labels` - the label values declared by a ``dataset.json``.
- :func:`check_case` - one image (and optional label) file: readable, 3D, finite, consistent.
- :func:`auto3dseg_folds` - a datalist in the fold form AutoRunner trains on (``validation`` list -> fold 0).
- :func:`dataset_problems` - every problem of a whole dataset (datalist + all files), lazily.
- :func:`gate` - the check every command runs before any work: the first problem as an InputError.
- :func:`validate` - the ``validate`` CLI command: lists every problem found (up to a limit).

This module imports only numpy, nibabel and :mod:`proxy_bundle.errors`, so it can be copied next to a
bundle's scripts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

try:
    from proxy_bundle.errors import InputError
except ImportError:  # pragma: no cover - the copy in a MONAI bundle's scripts/ (bundles/*/scripts)
    from .errors import InputError  # type: ignore[no-redef]

__all__ = [
    "CaseInfo",
    "DatasetInfo",
    "auto3dseg_folds",
    "check_case",
    "check_label_set",
    "dataset_problems",
    "declared_labels",
    "gate",
    "gate_cases",
    "input_fingerprint",
    "load_datalist",
    "load_decathlon",
    "read_json",
    "resolve",
    "validate",
]

#: Absolute tolerance (in mm, on every affine entry) for an image and its label to count as aligned.
#: Label files written by other tools often differ from the image in the last float32 digits of
#: the sform/qform; anything larger than this is a real misalignment.
AFFINE_ATOL = 1e-3

_DECATHLON_KEYS = ("name", "modality", "labels", "numTraining", "training")
#: Lists of cases a datalist may hold (Auto3DSeg / MONAI bundle conventions).
SECTIONS = ("training", "validation", "testing")
#: Keys of one datalist entry that the tools read.
ENTRY_KEYS = ("image", "label", "fold")
#: Keys of Decathlon ``dataset.json`` files (and common extras) that are not misspellings of the keys above.
_OTHER_KEYS = frozenset({"numTraining", "numTest", "test", "name", "description", "modality", "labels",
                         "tensorImageSize", "reference", "licence", "license", "release", "channel_names"})
#: How many problems ``validate`` lists before it stops looking.
MAX_PROBLEMS = 20


def _one_line(text: object) -> str:
    """Collapse a (library) message to one line; some nibabel messages carry newlines."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------------
# JSON files
# --------------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike) -> Any:
    """Parse the JSON file ``path``.

    Raises:
        InputError: (``where`` = the file) when it does not exist, is a directory, is not UTF-8 or
            is not valid JSON; a syntax error reports ``line L:C`` and the parser's reason.
    """
    p = Path(path)
    if not p.exists():
        raise InputError("file not found", where=str(p))
    if p.is_dir():
        raise InputError("is a directory, expected a JSON file", where=str(p))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"not a UTF-8 text file ({_one_line(err.reason)} at byte {err.start})", where=str(p)) from None
    except OSError as err:
        raise InputError(f"cannot read file: {_one_line(err.strerror or err)}", where=str(p)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"invalid JSON at line {err.lineno}:{err.colno}: {err.msg}", where=str(p)) from None


def resolve(entry_path: str | os.PathLike, dataroot: str | os.PathLike) -> Path:
    """The file an entry path refers to: absolute paths (and ``~``) as given, others under ``dataroot``.

    This is the rule MONAI's ``load_decathlon_datalist`` / Auto3DSeg apply, so a datalist that
    passes validation here is read the same way by MONAI.
    """
    p = Path(os.path.expanduser(os.fspath(entry_path)))
    return p if p.is_absolute() else Path(dataroot) / p


# --------------------------------------------------------------------------------------------------
# Datalists
# --------------------------------------------------------------------------------------------------


def _entry_files(value: Any) -> list[str] | None:
    """An entry's image/label value as a list of paths (multi-channel entries list one per channel)."""
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    return None


def _near_miss(key: str, known: Sequence[str]) -> str | None:
    """The known key that ``key`` is probably a misspelling of (``"fold:"``, ``"Label"``, ``"trainig"``), else None.

    Unknown keys are allowed (datalists carry extra fields such as a case id); only a near miss of a key the
    tools read is an error, because the intended key is then silently missing.
    """
    if key in known or key in _OTHER_KEYS:
        return None
    norm = re.sub(r"[^a-z]", "", str(key).lower())
    for k in known:
        if norm == k:
            return k
    close = [k for k in difflib.get_close_matches(norm, list(known), n=3, cutoff=0.8) if abs(len(k) - len(norm)) <= 2]
    return close[0] if close else None


def _check_entries(
    entries: Any,
    section: str,
    where: str,
    *,
    require_label: bool,
) -> None:
    if not isinstance(entries, list):
        raise InputError(f"'{section}' must be a list of entries, got {type(entries).__name__}", where=where)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InputError(
                f"{section}[{i}] must be an object with an 'image' key, got {type(entry).__name__}", where=where
            )
        for key in entry:
            meant = _near_miss(str(key), ENTRY_KEYS)
            if meant is not None:
                raise InputError(f"{section}[{i}] has key {key!r}: did you mean {meant!r}?", where=where)
        if "image" not in entry:
            raise InputError(f"{section}[{i}] is missing key 'image'", where=where)
        if _entry_files(entry["image"]) is None:
            raise InputError(f"{section}[{i}] 'image' must be a path or a list of paths", where=where)
        if require_label and "label" not in entry:
            raise InputError(f"{section}[{i}] is missing key 'label'", where=where)
        if "label" in entry and _entry_files(entry["label"]) is None:
            raise InputError(f"{section}[{i}] 'label' must be a path", where=where)


def _case_key(entry: dict, dataroot: Path) -> str:
    return os.path.normpath(os.fspath(resolve(_entry_files(entry["image"])[0], dataroot)))


def _check_duplicates(sections: Sequence[tuple[str, list[dict]]], dataroot: Path, where: str) -> None:
    """No image twice in one list, and no testing case that is trained on.

    An image in both ``training`` and ``validation`` is what AutoRunner accepts (the case becomes a validation
    case, see :func:`auto3dseg_folds`), and a ``testing`` image may also be a ``validation`` image; a ``testing``
    image that is only in ``training`` would be scored by a model trained on it.
    """
    # Normalise so that "./imagesTr/a.nii.gz" and "imagesTr/a.nii.gz" count as the same file.
    seen: dict[str, dict[str, str]] = {}
    for section, entries in sections:
        for i, entry in enumerate(entries):
            key = _case_key(entry, dataroot)
            here = f"{section}[{i}]"
            earlier = seen.setdefault(key, {})
            first = _entry_files(entry["image"])[0]
            if section in earlier:
                raise InputError(f"duplicate entry: {here} and {earlier[section]} both use image {first}", where=where)
            if section == "testing" and "training" in earlier and "validation" not in earlier:
                raise InputError(
                    f"duplicate entry: {here} and {earlier['training']} both use image {first} "
                    "(a testing case must not be trained on)",
                    where=where,
                )
            earlier[section] = here


def _check_folds(entries: list[dict], where: str, *, require_folds: bool) -> None:
    has = [("fold" in e) for e in entries]
    if not any(has):
        if require_folds:
            raise InputError("training entries have no 'fold' key (folds are required here)", where=where)
        return
    if not all(has):
        missing = has.index(False)
        raise InputError(
            f"training[{missing}] has no 'fold' key while other entries do (give every entry a fold, or none)", where=where
        )
    folds: set[int] = set()
    for i, e in enumerate(entries):
        f = e["fold"]
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise InputError(f"training[{i}] 'fold' must be a non-negative integer, got {f!r}", where=where)
        folds.add(f)
    expected = set(range(len(folds)))
    if folds != expected:
        raise InputError(
            f"folds are not contiguous: found {sorted(folds)}, expected 0..{len(folds) - 1} "
            f"(missing {sorted(set(range(max(folds) + 1)) - folds)})",
            where=where,
        )


def _check_files_exist(sections: Sequence[tuple[str, list[dict]]], dataroot: Path, where: str) -> None:
    for section, entries in sections:
        for i, entry in enumerate(entries):
            for key in ("image", "label"):
                for rel in _entry_files(entry.get(key)) or []:
                    p = resolve(rel, dataroot)
                    if not p.is_file():
                        what = "is a directory" if p.is_dir() else "not found"
                        raise InputError(f"{section}[{i}] {key} file {what}: {rel} (dataroot {dataroot})", where=where)


def load_datalist(
    path: str | os.PathLike,
    dataroot: str | os.PathLike | None = None,
    *,
    require_labels: bool = True,
    require_folds: bool = False,
    check_files: bool = True,
    require_training: bool = True,
) -> dict:
    """Load and check an Auto3DSeg datalist.

    Format: ``{"training": [{"image": ..., "label": ..., "fold": k}, ...], "testing": [{"image": ...}, ...]}``
    with paths relative to ``dataroot`` (default: the datalist's folder). ``image`` may also be a
    list of paths (one per channel). A ``validation`` list (MONAI bundle datalists) is checked like
    ``training`` but has no folds. Other top-level keys (``name``, ``site``, ...) are allowed.

    Checks: JSON syntax; a ``training`` list (or, with ``require_training=False``, at least one of
    ``training`` / ``validation`` / ``testing``); ``image`` on every entry, ``label`` on every
    training/validation entry when ``require_labels``; no misspelt key (``"fold:"``, ``"Training"``); no image
    listed twice in one list, no ``testing`` image that is only a ``training`` image (an image in both
    ``training`` and ``validation`` is a validation case, as in AutoRunner); ``fold`` on all training
    entries or none (all when ``require_folds``), and the fold ids exactly ``0..K-1``; every listed
    file exists (when ``check_files``). Image contents are not read: see :func:`check_case`.

    Returns:
        The parsed datalist, unchanged (paths are *not* rewritten; use :func:`resolve`).

    Raises:
        InputError: ``where`` is the datalist file; the message names the entry (``training[3]``).
    """
    p = Path(path)
    where = str(p)
    data = read_json(p)
    if not isinstance(data, dict):
        raise InputError(f"a datalist must be a JSON object, got {type(data).__name__}", where=where)
    root = Path(dataroot) if dataroot is not None else p.parent
    if check_files and dataroot is not None and not Path(dataroot).is_dir():
        raise InputError("dataroot is not a directory", where=str(dataroot))
    for key in data:
        meant = _near_miss(str(key), SECTIONS)
        if meant is not None:
            raise InputError(f"top-level key {key!r}: did you mean {meant!r}?", where=where)

    sections: list[tuple[str, list[dict]]] = []
    if "training" in data:
        _check_entries(data["training"], "training", where, require_label=require_labels)
        if require_training and not data["training"]:
            raise InputError("'training' is empty", where=where)
        sections.append(("training", data["training"]))
    elif require_training:
        raise InputError("missing key 'training'", where=where)
    if "validation" in data:
        _check_entries(data["validation"], "validation", where, require_label=require_labels)
        sections.append(("validation", data["validation"]))
    if "testing" in data:
        _check_entries(data["testing"], "testing", where, require_label=False)
        sections.append(("testing", data["testing"]))
    if not sections:
        raise InputError("missing key 'training', 'validation' or 'testing'", where=where)

    _check_duplicates(sections, root, where)
    if "training" in data:
        _check_folds(data["training"], where, require_folds=require_folds)
    if check_files:
        _check_files_exist(sections, root, where)
    return data


def auto3dseg_folds(data: dict, num_fold: int = 5) -> dict:
    """The datalist with ``fold`` on every training entry, exactly as MONAI's AutoRunner assigns them.

    AutoRunner (``AutoRunner.inspect_datalist_folds``, MONAI 1.6) accepts three forms, and this function
    reproduces its result so that every command trains, validates and analyses the same cases it would:

    * ``fold`` keys on the training entries: returned unchanged (a deep copy).
    * a non-empty ``validation`` list and no folds: training entries get fold 1, the validation entries fold
      0 and are appended to ``training``; a training entry whose label is also listed in
      ``validation`` becomes fold 0 and is not appended twice. There is then one fold: fold 0 validates.
    * neither: ``num_fold`` folds (default 5, ``2 <= num_fold <= len(training)``) dealt at random with seed 0,
      as scikit-learn's ``KFold(n_splits=num_fold, shuffle=True, random_state=0)`` does; reproduced with
      numpy (same generator, same order) so that no scikit-learn install is needed.

    MONAI's DataAnalyzer then analyses every entry of ``training`` (validation cases included).

    Args:
        data: a datalist already checked by :func:`load_datalist`.
        num_fold: folds to make when the datalist has neither folds nor a validation list.

    Returns:
        A new datalist (``validation`` and ``testing`` kept as given).

    Raises:
        InputError: ``num_fold`` outside ``[2, len(training)]`` when folds have to be made.
    """
    out = json.loads(json.dumps(data))
    training = out.get("training") or []
    if any("fold" in e for e in training):
        return out
    validation = out.get("validation") or []
    if validation:
        # AutoRunner matches a validation entry to a training entry by its label file.
        def keys(e: dict) -> set[str]:
            return {"label:" + json.dumps(e["label"])} if "label" in e else {"image:" + json.dumps(e["image"])}

        val_keys: dict[str, int] = {}
        for j, e in enumerate(validation):
            for k in keys(e):
                val_keys.setdefault(k, j)
        used: set[int] = set()
        for e in training:
            match = [val_keys[k] for k in keys(e) if k in val_keys]
            e["fold"] = 0 if match else 1
            used.update(match)
        extra = [dict(e, fold=0) for j, e in enumerate(validation) if j not in used]
        out["training"] = training + extra
        return out
    n = len(training)
    if isinstance(num_fold, bool) or not isinstance(num_fold, int) or not 2 <= num_fold <= n:
        raise InputError(
            f"the training entries have no 'fold' keys and no validation list; {num_fold!r} folds cannot be dealt "
            f"over {n} case(s) (need 2 <= num_fold <= {n}): add 'fold' keys or a 'validation' list",
            where="num_fold",
        )
    order = np.arange(n)
    np.random.RandomState(0).shuffle(order)
    sizes = np.full(num_fold, n // num_fold, dtype=int)
    sizes[: n % num_fold] += 1
    start = 0
    for fold, size in enumerate(sizes):
        for i in order[start:start + size]:
            training[int(i)]["fold"] = fold
        start += size
    return out


def load_decathlon(dataset_json_path: str | os.PathLike, *, check_files: bool = True) -> dict:
    """Load and check a Medical Segmentation Decathlon ``dataset.json``.

    Checks: JSON syntax; keys ``name``, ``modality``, ``labels``, ``numTraining``, ``training``;
    ``modality`` and ``labels`` are non-empty objects keyed by integer strings (``"0"``, ``"1"``, ...);
    ``numTraining == len(training)``; every training entry has ``image`` and ``label``; no image
    listed twice; every listed file exists relative to the file's folder (when ``check_files``).

    Returns:
        The parsed dictionary, unchanged.

    Raises:
        InputError: ``where`` is the ``dataset.json`` file.
    """
    p = Path(dataset_json_path)
    where = str(p)
    data = read_json(p)
    if not isinstance(data, dict):
        raise InputError(f"dataset.json must be a JSON object, got {type(data).__name__}", where=where)
    for key in _DECATHLON_KEYS:
        if key not in data:
            raise InputError(f"missing key '{key}'", where=where)
    for key in ("modality", "labels"):
        value = data[key]
        if not isinstance(value, dict) or not value:
            raise InputError(f"'{key}' must be a non-empty object like {{\"0\": ...}}", where=where)
        bad = [k for k in value if not _is_int_string(k)]
        if bad:
            raise InputError(f"'{key}' keys must be integers, got {bad[0]!r}", where=where)
    n = data["numTraining"]
    if isinstance(n, bool) or not isinstance(n, int):
        raise InputError(f"'numTraining' must be an integer, got {n!r}", where=where)
    _check_entries(data["training"], "training", where, require_label=True)
    if n != len(data["training"]):
        raise InputError(f"numTraining is {n} but 'training' lists {len(data['training'])} entries", where=where)
    if not data["training"]:
        raise InputError("'training' is empty", where=where)
    sections = [("training", data["training"])]
    _check_duplicates(sections, p.parent, where)
    if check_files:
        _check_files_exist(sections, p.parent, where)
    return data


def _is_int_string(value: str) -> bool:
    try:
        int(value)
    except (TypeError, ValueError):
        return False
    return True


def declared_labels(dataset: dict) -> list[int]:
    """The label values a Decathlon ``dataset.json`` declares (keys of ``labels``), sorted."""
    return sorted(int(k) for k in dataset["labels"])


# --------------------------------------------------------------------------------------------------
# Image / label files
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseInfo:
    """What :func:`check_case` learnt about one case.

    Attributes:
        case: the case name used in error messages.
        shape: spatial shape (3 ints) of the image.
        channels: number of image channels (1 for a 3D image).
        spacing: voxel size in mm along the three spatial axes (from the affine).
        affine: the image's 4x4 voxel-to-world affine.
        label_values: sorted distinct label values, or ``None`` when no label was given.
    """

    case: str
    shape: tuple[int, int, int]
    channels: int
    spacing: tuple[float, float, float]
    affine: np.ndarray
    label_values: tuple[int, ...] | None = None


# nibabel raises these for unreadable files: a bad header or magic (ImageFileError, HeaderDataError,
# ValueError), a truncated file (OSError / EOFError / struct.error) or a damaged gzip stream (zlib.error).
def _read_errors() -> tuple[type[BaseException], ...]:
    import nibabel as nib

    return (
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
        OSError,
        EOFError,
        ValueError,
        struct.error,
        zlib.error,
    )


def _fmt(value: Any) -> str:
    """A voxel value with every digit its type holds (float32 0.99999994 must not print as 1)."""
    v = np.asarray(value)
    if v.dtype.kind == "f":
        return np.format_float_positional(v.item() if v.dtype == np.float64 else v[()], trim="-")
    return str(v.item())


def _load_array(path: Path, what: str, case: str) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of a NIfTI file, or an InputError for a missing/unreadable file or an unusable geometry."""
    import nibabel as nib

    if not path.is_file():
        raise InputError(f"{what} file not found: {path}", where=case)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return _load_with_monai(path, what, case)
    try:
        img = nib.load(os.fspath(path))
        # dataobj applies scl_slope/inter but keeps the stored dtype otherwise (get_fdata would
        # make a float64 copy of every volume).
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except _read_errors() as err:
        raise InputError(f"cannot read {what} {path.name} ({type(err).__name__}: {_one_line(err)})", where=case) from None
    _check_geometry(img, affine, what, case)
    return data, affine


def _load_with_monai(path: Path, what: str, case: str) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of a non-NIfTI file (``.mha``, ``.nrrd``, ...) read by the reader MONAI's ``LoadImage``
    picks for it, i.e. the reader training will use; its failure (e.g. no ITK installed) is the message."""
    try:
        from monai.transforms import LoadImage

        img = LoadImage(image_only=True)(os.fspath(path))
        data = np.asarray(img)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # readers raise anything from OptionalImportError to RuntimeError
        raise InputError(f"cannot read {what} {path.name} ({type(err).__name__}: {_one_line(err)[:300]})",
                         where=case) from None
    _check_geometry(None, affine, what, case)
    return data, affine


def _check_geometry(img: Any, affine: np.ndarray, what: str, case: str) -> None:
    """Voxel sizes and orientation that every reader agrees on.

    MONAI's NibabelReader takes the sform (``img.affine``) while ITK-based readers prefer the qform, so a file
    whose two disagree is read differently by different tools; a zero, negative or non-finite voxel size makes
    resampling divide by zero or flip the volume.
    """
    header = getattr(img, "header", None)
    if header is not None and "pixdim" in header:
        pixdim = np.asarray(header["pixdim"][1:4])
        ndim = int(header["dim"][0])
        pixdim = pixdim[: max(1, min(3, ndim))]
        if not np.isfinite(pixdim).all() or (pixdim <= 0).any():
            shown = ", ".join(_fmt(v) for v in pixdim)
            raise InputError(f"{what} has voxel spacing ({shown}) in its header; spacing must be finite and > 0 mm",
                             where=case)
    if not np.isfinite(affine).all():
        raise InputError(f"{what} affine has non-finite entries (NaN/Inf)", where=case)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if (zooms <= 0).any() or abs(float(np.linalg.det(affine[:3, :3]))) <= 0:
        raise InputError(f"{what} affine is singular (voxel size {tuple(float(z) for z in zooms)} mm)", where=case)
    get_q, get_s = getattr(header, "get_qform", None), getattr(header, "get_sform", None)
    if get_q is not None and get_s is not None:
        qform, qcode = get_q(coded=True)
        sform, scode = get_s(coded=True)
        if qcode and scode and qform is not None and sform is not None:
            tol = _affine_tolerance(AFFINE_ATOL, zooms)
            diff = float(np.abs(np.asarray(qform) - np.asarray(sform)).max())
            if diff > tol:
                raise InputError(
                    f"{what} qform and sform disagree (max difference {diff:.4g} > {tol:g}); readers differ on "
                    "where this volume lies: rewrite the header with one orientation (e.g. set qform = sform)",
                    where=case,
                )


def _zooms(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis: the norms of the affine's columns, at full precision."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def _affine_tolerance(atol: float, zooms: Any) -> float:
    """``atol``, but never more than a tenth of the smallest voxel (0.001 mm data needs a finer tolerance)."""
    smallest = float(np.min(np.asarray(zooms, dtype=np.float64)))
    return min(float(atol), 0.1 * smallest) if smallest > 0 else float(atol)


def _spatial(data: np.ndarray, what: str, case: str, channels: int) -> tuple[tuple[int, int, int], int]:
    """Spatial shape and channel count; a 3D volume may carry trailing singleton dimensions."""
    shape = tuple(int(s) for s in data.shape)
    core = shape
    while len(core) > 3 and core[-1] == 1:
        core = core[:-1]
    if len(core) == 3:
        return core, 1  # type: ignore[return-value]
    if len(core) == 4 and channels > 1 and core[3] == channels:
        return core[:3], channels  # type: ignore[return-value]
    expected = "3D" if channels == 1 else f"3D or 4D with {channels} channels"
    why = " (2D data are not supported: the networks are 3D)" if len(core) < 3 else ""
    raise InputError(f"{what} is {len(shape)}D with shape {shape}, expected {expected}{why}", where=case)


def _normalise_labels(labels: Iterable[int] | int | str | None) -> set[int] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        items: Iterable[Any] = [s for s in labels.replace(",", " ").split() if s]
    elif isinstance(labels, (int, np.integer)):
        items = [labels]
    else:
        items = labels
    out: set[int] = set()
    for v in items:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InputError(f"label values must be integers, got {v!r}", where="labels") from None
        if not f.is_integer():
            raise InputError(f"label values must be integers, got {v!r}", where="labels")
        out.add(int(f))
    return out


def check_case(
    image: str | os.PathLike | Sequence[str | os.PathLike],
    label: str | os.PathLike | None = None,
    *,
    labels: Iterable[int] | None = None,
    require_foreground: bool = False,
    case: str | None = None,
    channels: int = 1,
    affine_atol: float = AFFINE_ATOL,
    require_positive: bool = True,
) -> CaseInfo:
    """Read one image (and its label) and check that it can be trained on.

    Args:
        image: the image file (NIfTI), or a list of per-channel files (each must be 3D).
        label: the label file, or ``None`` for an unlabelled case.
        labels: the declared label values; background 0 is always allowed. ``None`` skips the check.
        require_foreground: fail when the label has no non-zero voxel.
        case: the name errors are reported under (default: the image file name).
        channels: image channels expected; ``1`` means a 3D image (a trailing singleton dimension is
            fine), ``C > 1`` also accepts a 4D image with ``C`` channels last (multi-modal MSD tasks).
        affine_atol: tolerance (mm) for the image and label affines to agree, entry by entry.
        require_positive: fail when no intensity is > 0 (MONAI's DataAnalyzer skips such a case; images that
            are only segmented need not meet this).

    Checks: readable NIfTI (missing, corrupt, truncated gzip), 3D (not 4D/2D), finite intensities
    (no NaN/Inf), label spatial shape and affine equal to the image's, integer label values,
    values within ``labels``, non-empty foreground when ``require_foreground``.

    Returns:
        A :class:`CaseInfo`.

    Raises:
        InputError: ``where`` is ``case``; the message names the problem.
    """
    paths = [Path(image)] if isinstance(image, (str, os.PathLike)) else [Path(x) for x in image]
    name = case if case is not None else paths[0].name
    if not paths:
        raise InputError("no image file given", where=name)

    shape: tuple[int, int, int] | None = None
    affine: np.ndarray | None = None
    n_channels = 0
    positive = False
    peak: Any = None
    for p in paths:
        data, aff = _load_array(p, "image", name)
        per_file_channels = channels if len(paths) == 1 else 1
        sp, c = _spatial(data, "image", name, per_file_channels)
        if data.dtype.kind not in "fcbiu":
            raise InputError(f"image has a non-numeric data type {data.dtype}", where=name)
        if data.dtype.kind in "fc" and not np.isfinite(data).all():
            bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            raise InputError(f"image contains NaN/Inf intensities ({bad} voxels)", where=name)
        if not data.size:
            raise InputError("image has no voxels", where=name)
        top = data.max()
        peak = top if peak is None else max(peak, top)
        positive = positive or bool(top > 0)
        if shape is None:
            shape, affine = sp, aff
        elif sp != shape or not np.allclose(aff, affine, rtol=0, atol=_affine_tolerance(affine_atol, _zooms(affine))):
            raise InputError(f"channel file {p.name} does not match the first channel's shape/affine", where=name)
        n_channels += c
        del data
    assert shape is not None and affine is not None
    if len(paths) > 1 and channels not in (1, n_channels):
        raise InputError(f"image has {n_channels} channel files, expected {channels}", where=name)
    if require_positive and not positive:
        # DataAnalyzer's foreground is "intensity > 0": such a case fails inside it and is skipped silently.
        raise InputError(
            f"image has no intensity > 0 (maximum {_fmt(peak)}); MONAI's DataAnalyzer cannot analyse such a case: "
            "shift the intensities so that the body is > 0",
            where=name,
        )

    spacing = tuple(float(s) for s in _zooms(affine))
    label_values: tuple[int, ...] | None = None
    if label is not None:
        label_values = _check_label(Path(label), name, shape, affine, labels, require_foreground, affine_atol)
    return CaseInfo(
        case=name,
        shape=shape,
        channels=n_channels,
        spacing=spacing,  # type: ignore[arg-type]
        affine=affine,
        label_values=label_values,
    )


def _check_label(
    path: Path,
    name: str,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    labels: Iterable[int] | None,
    require_foreground: bool,
    atol: float,
) -> tuple[int, ...]:
    data, aff = _load_array(path, "label", name)
    lshape, _ = _spatial(data, "label", name, 1)
    if lshape != shape:
        raise InputError(f"image/label shape mismatch: image {shape}, label {lshape}", where=name)
    tol = _affine_tolerance(atol, _zooms(affine))
    if not np.allclose(aff, affine, rtol=0, atol=tol):
        diff = float(np.abs(aff - affine).max())
        raise InputError(f"image/label affine mismatch (max difference {diff:.4g} > {tol:g})", where=name)
    if data.dtype.kind not in "fbiu":
        raise InputError(f"label has a non-numeric data type {data.dtype}", where=name)
    values = np.unique(data)
    if data.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise InputError("label contains NaN/Inf values", where=name)
        frac = values[values != np.round(values)]
        if frac.size:
            raise InputError(
                f"label has non-integer values (e.g. {_fmt(frac[-1])} in {data.dtype}); labels must be integer class "
                "ids: round them and save the label as an integer type (e.g. uint8)",
                where=name,
            )
    ints = tuple(int(v) for v in values)
    if ints and ints[0] < 0:
        raise InputError(
            f"label has negative values (e.g. {ints[0]}); labels must be class ids 0..K-1 (is this an image file?)",
            where=name,
        )
    allowed = _normalise_labels(labels)
    if allowed is not None:
        outside = sorted(set(ints) - allowed - {0})
        if outside:
            raise InputError(f"label values {outside} are outside the declared labels {sorted(allowed | {0})}", where=name)
    if require_foreground and not any(v != 0 for v in ints):
        raise InputError("label has no foreground (all voxels are 0)", where=name)
    return ints


# --------------------------------------------------------------------------------------------------
# The ``validate`` command
# --------------------------------------------------------------------------------------------------


def _is_decathlon(data: Any) -> bool:
    return isinstance(data, dict) and "numTraining" in data and "modality" in data


def check_label_set(found: Iterable[int], declared: Iterable[int] | None, where: str) -> None:
    """The label values of a whole dataset must be the class ids ``0..K-1`` a network is trained on.

    Auto3DSeg templates and MONAI bundles make ``max(label) + 1`` output classes, so labels stored as 0/255
    would train a 256-class network on two classes. With ``declared`` labels (a ``dataset.json``), the
    declared set must be ``0..K-1`` (values it declares may be absent from the data); without, the values
    found in the label files must be.

    Raises:
        InputError: naming the values and the remapping that would fix them.
    """
    if declared is not None:
        values = sorted(set(int(v) for v in declared) | {0})
        what, fix = "declared labels", ""
    else:
        values = sorted(set(int(v) for v in found) | {0})
        what = "label values"
        fix = ", or declare the full label set in the 'labels' of a dataset.json next to the datalist"
    if values == list(range(len(values))):
        return
    k = len(values)
    mapping = ", ".join(f"{a} -> {b}" for b, a in enumerate(values) if a != b)
    raise InputError(
        f"{what} {values} are not contiguous class ids 0..{k - 1} (a network would get {max(values) + 1} output "
        f"classes): remap them to 0..{k - 1} ({mapping}){fix}",
        where=where,
    )


@dataclass
class DatasetInfo:
    """What :func:`dataset_problems` / :func:`gate` learnt about a dataset.

    Attributes:
        datalist: the list file checked.
        dataroot: the folder its paths are relative to.
        data: the parsed list, unchanged.
        sections: ``(name, entries)`` for each of ``training`` / ``validation`` / ``testing`` present.
        declared: declared label values (``None`` when nothing declares them) and ``labels_source`` where from.
        channels: image channels expected.
        cases: the :class:`CaseInfo` of every case that passed.
        labels_found: union of the label values found.
    """

    datalist: Path
    dataroot: Path
    data: dict = field(default_factory=dict)
    sections: list = field(default_factory=list)
    declared: set[int] | None = None
    labels_source: str | None = None
    channels: int = 1
    cases: list = field(default_factory=list)
    labels_found: set = field(default_factory=set)


def _context(datalist: str | os.PathLike, dataroot: str | os.PathLike | None, labels: Any,
             channels: int | None, require_labels: bool) -> DatasetInfo:
    """Parse and check the list file; work out the declared labels and the channel count."""
    path = Path(datalist)
    data = read_json(path)
    n_channels = 1
    declared, source = None, None
    if labels is not None:
        declared, source = _normalise_labels(labels), "--labels"
    if _is_decathlon(data):
        ds = load_decathlon(path)
        root = path.parent
        sections: list[tuple[str, list[dict]]] = [("training", ds["training"])]
        if declared is None:
            declared, source = set(declared_labels(ds)), str(path)
        n_channels = len(ds["modality"])
    else:
        # A list with only "testing" (an external evaluation set) is a valid input on its own.
        other_only = isinstance(data, dict) and "training" not in data and bool({"validation", "testing"} & set(data))
        data = load_datalist(path, dataroot, require_labels=require_labels, require_training=not other_only)
        root = Path(dataroot) if dataroot is not None else path.parent
        sections = [(s, data[s]) for s in SECTIONS if s in data]
        sibling = root / "dataset.json"
        if sibling.is_file():
            ds = read_json(sibling)
            if _is_decathlon(ds) and isinstance(ds.get("labels"), dict) and all(map(_is_int_string, ds["labels"])):
                if declared is None:
                    declared, source = set(declared_labels(ds)), str(sibling)
                if isinstance(ds.get("modality"), dict) and ds["modality"]:
                    n_channels = len(ds["modality"])
    if channels is not None:
        n_channels = int(channels)
    return DatasetInfo(datalist=path, dataroot=root, data=data, sections=sections, declared=declared,
                       labels_source=source, channels=n_channels)


def dataset_problems(
    datalist: str | os.PathLike,
    dataroot: str | os.PathLike | None = None,
    *,
    labels: Any = None,
    channels: int | None = None,
    require_foreground: bool = True,
    require_labels: bool = True,
    info: DatasetInfo | None = None,
    progress: bool = False,
) -> Iterator[InputError]:
    """Every problem of a dataset, in the order found: the list file, then each case, then the label set.

    A problem with the list file itself (syntax, keys, missing files) ends the search; a bad case does not,
    so a caller can report them all (``validate``) or stop at the first (:func:`gate`).

    Args:
        datalist: an Auto3DSeg datalist or a Decathlon ``dataset.json``.
        dataroot: folder the datalist's paths are relative to (default: its folder).
        labels: declared label values (default: the ``labels`` of the ``dataset.json`` given or next to the
            datalist in ``dataroot``).
        channels: image channels (default: the ``modality`` count of that ``dataset.json``, else 1).
        require_foreground: every label must have a non-zero voxel.
        require_labels: every training/validation entry must have a label.
        info: filled in as cases pass (:class:`DatasetInfo`), for the caller's summary.
        progress: show a progress bar over the cases.

    Yields:
        :class:`InputError` per problem (``where`` = the file or case).
    """
    try:
        ctx = _context(datalist, dataroot, labels, channels, require_labels)
    except InputError as err:
        yield err
        return
    if info is not None:
        info.__dict__.update(ctx.__dict__)
        ctx = info
    cases = [(section, entry) for section, entries in ctx.sections for entry in entries]
    seen: set[str] = set()
    iterator: Iterable = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="validate", unit="case", disable=None, leave=False)
    for section, entry in iterator:
        images = _entry_files(entry["image"]) or []
        key = _case_key(entry, ctx.dataroot)
        if key in seen:  # the same case in validation and testing: checked once
            continue
        seen.add(key)
        label_files = _entry_files(entry.get("label"))
        try:
            if label_files is not None and len(label_files) != 1:
                raise InputError("an entry must have exactly one label file", where=images[0])
            case = check_case(
                [resolve(x, ctx.dataroot) for x in images] if len(images) > 1 else resolve(images[0], ctx.dataroot),
                resolve(label_files[0], ctx.dataroot) if label_files else None,
                labels=ctx.declared,
                require_foreground=require_foreground,
                case=images[0],
                channels=ctx.channels,
                # DataAnalyzer reads training (and validation) cases only.
                require_positive=section != "testing",
            )
        except InputError as err:
            yield err
            continue
        ctx.cases.append(case)
        if case.label_values is not None:
            ctx.labels_found.update(case.label_values)
    if ctx.labels_found:
        try:
            check_label_set(ctx.labels_found, ctx.declared, ctx.labels_source or str(ctx.datalist))
        except InputError as err:
            yield err


def _file_stats(info_or_data: dict, root: Path) -> list:
    out = []
    for section in SECTIONS:
        for entry in info_or_data.get(section) or []:
            if not isinstance(entry, dict):
                continue
            for key in ("image", "label"):
                for rel in _entry_files(entry.get(key)) or []:
                    p = resolve(rel, root)
                    try:
                        st = p.stat()
                        out.append([os.fspath(p), st.st_size, st.st_mtime_ns])
                    except OSError:
                        out.append([os.fspath(p), None, None])
    return out


def input_fingerprint(datalist: str | os.PathLike | dict, dataroot: str | os.PathLike, **settings: Any) -> str:
    """SHA-256 of what a result computed from a dataset depends on: the datalist's content, the dataroot,
    ``settings`` (modality, labels, ...) and every listed file's size and modification time.

    Anything built from the dataset (a validation record, ``datastats.yaml``, a proxy datalist, a search) is
    reused only under the same fingerprint, so an edited datalist or a replaced file is never served stale.
    """
    data = read_json(datalist) if not isinstance(datalist, dict) else datalist
    root = Path(dataroot).resolve()
    blob = {
        "datalist": data,
        "dataroot": os.fspath(root),
        "settings": settings,
        "files": _file_stats(data if isinstance(data, dict) else {}, root),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def gate(
    datalist: str | os.PathLike,
    dataroot: str | os.PathLike | None = None,
    *,
    labels: Any = None,
    channels: int | None = None,
    require_foreground: bool = True,
    require_labels: bool = True,
    record_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> DatasetInfo | None:
    """The check every command runs before any work: raise the first problem of the dataset.

    With ``record_dir``, a passed check leaves ``record_dir/validated-<fingerprint>.json`` and is skipped
    when the same inputs (datalist, files' sizes and times, settings) come again; ``None`` is returned then.

    Raises:
        InputError: the first problem :func:`dataset_problems` finds.
    """
    fp = record = None
    if record_dir is not None:
        root = Path(dataroot) if dataroot is not None else Path(datalist).parent
        fp = input_fingerprint(datalist, root, labels=None if labels is None else sorted(_normalise_labels(labels)),
                               channels=channels, require_foreground=require_foreground,
                               require_labels=require_labels)
        record = Path(record_dir) / f"validated-{fp[:24]}.json"
        if record.is_file():
            return None
    info = DatasetInfo(datalist=Path(datalist), dataroot=Path(dataroot or Path(datalist).parent))
    for problem in dataset_problems(datalist, dataroot, labels=labels, channels=channels,
                                    require_foreground=require_foreground, require_labels=require_labels,
                                    info=info, progress=progress):
        raise problem
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": fp, "datalist": os.fspath(Path(datalist).resolve()),
                                   "cases": len(info.cases)}) + "\n")
        os.replace(tmp, record)
    return info


def gate_cases(
    items: Sequence[dict],
    *,
    labels: Iterable[int] | None = None,
    channels: int = 1,
    require_foreground: bool = False,
    where: str = "datalist",
    record_dir: str | os.PathLike | None = None,
    require_positive: bool = True,
) -> None:
    """:func:`gate` for cases already resolved to files (``{"image": path or [paths], "label": path}``), as a
    training or inference script holds them: every case, then the label set (``0..K-1``, see
    :func:`check_label_set`; ``where`` names the list in that message). With ``record_dir``, a passed check is
    recorded and not repeated for the same files.

    Raises:
        InputError: the first problem found.
    """
    record = fp = None
    if record_dir is not None:
        fp = input_fingerprint({"training": [dict(i) for i in items]}, "/", labels=None if labels is None
                               else sorted(int(v) for v in labels), channels=channels,
                               require_foreground=require_foreground)
        record = Path(record_dir) / f"validated-{fp[:24]}.json"
        if record.is_file():
            return
    found: set[int] = set()
    any_label = False
    for item in items:
        image = item["image"]
        files = [image] if isinstance(image, (str, os.PathLike)) else list(image)
        info = check_case(files[0] if len(files) == 1 else files, item.get("label"), labels=labels,
                          require_foreground=require_foreground, case=os.fspath(files[0]), channels=channels,
                          require_positive=require_positive)
        if info.label_values is not None:
            any_label = True
            found.update(info.label_values)
    if any_label:
        check_label_set(found, None, where)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": fp, "cases": len(items)}) + "\n")
        os.replace(tmp, record)


def validate(
    datalist: str,
    dataroot: str | None = None,
    labels: Any = None,
    require_foreground: bool = True,
    max_problems: int = MAX_PROBLEMS,
) -> None:
    """Check a dataset before using it: the list file and every image/label pair.

    Accepts an Auto3DSeg datalist (``training`` / ``validation`` / ``testing`` entries with paths relative to
    DATAROOT) or a Decathlon ``dataset.json`` (recognised by its ``numTraining`` / ``modality`` keys;
    paths relative to its folder). Prints ``ok: N cases ...`` when everything passes. Otherwise every
    problem found (up to ``max_problems``) is printed as ``error: <file or case>: <problem>``, one per line,
    and the exit code is 2; a single problem is that one line.

    Args:
        datalist: path to the datalist JSON or the Decathlon dataset.json.
        dataroot: folder the datalist paths are relative to (default: the datalist's folder);
            a dataset.json's paths are always relative to its own folder.
        labels: allowed label values, e.g. ``--labels=0,1,2`` (background 0 is always allowed).
            Default: the ``labels`` of a dataset.json, or of a ``dataset.json`` next to the datalist
            in DATAROOT; without either, the label values found must be ``0..K-1``.
        require_foreground: every label file must contain at least one non-zero voxel
            (``--require_foreground=false`` to allow empty labels).
        max_problems: stop after this many problems.
    """
    import sys

    if isinstance(max_problems, bool) or not isinstance(max_problems, int) or max_problems < 1:
        raise InputError(f"must be an integer >= 1, got {max_problems!r}", where="--max_problems")
    info = DatasetInfo(datalist=Path(datalist), dataroot=Path(dataroot or Path(datalist).parent))
    problems: list[InputError] = []
    for problem in dataset_problems(datalist, dataroot, labels=labels, require_foreground=require_foreground,
                                    info=info, progress=True):
        problems.append(problem)
        if len(problems) >= max_problems:
            break
    if len(problems) == 1:
        raise problems[0]
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        more = f"; stopped after {max_problems}" if len(problems) >= max_problems else ""
        raise InputError(f"{len(problems)} problems found (listed above{more})", where=str(datalist))

    counts = ", ".join(f"{len(entries)} {s}" for s, entries in info.sections)
    n_labelled = sum(1 for c in info.cases if c.label_values is not None)
    summary = [f"ok: {len(info.cases)} cases ({counts}; {n_labelled} labelled)"]
    if info.cases:
        sh = np.asarray([c.shape for c in info.cases])
        sp = np.asarray([c.spacing for c in info.cases])
        summary.append("  shape: " + " x ".join(_span(lo, hi, "d") for lo, hi in zip(sh.min(axis=0), sh.max(axis=0))))
        summary.append(
            "  spacing (mm): " + " x ".join(_span(lo, hi, ".4g") for lo, hi in zip(sp.min(axis=0), sp.max(axis=0)))
        )
    if n_labelled:
        allowed = info.declared
        declared = f" (declared in {info.labels_source}: {sorted(allowed | {0})})" if allowed is not None else ""
        summary.append(f"  label values found: {sorted(info.labels_found)}{declared}")
    print("\n".join(summary))


def _span(lo: float, hi: float, fmt: str) -> str:
    a, b = format(lo, fmt), format(hi, fmt)
    return a if a == b else f"{a}-{b}"
