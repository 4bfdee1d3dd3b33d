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
- :func:`validate` - the ``validate`` CLI command: all of the above for a whole dataset.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from proxy_bundle.errors import InputError

__all__ = [
    "CaseInfo",
    "check_case",
    "declared_labels",
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
        if "image" not in entry:
            raise InputError(f"{section}[{i}] is missing key 'image'", where=where)
        if _entry_files(entry["image"]) is None:
            raise InputError(f"{section}[{i}] 'image' must be a path or a list of paths", where=where)
        if require_label and "label" not in entry:
            raise InputError(f"{section}[{i}] is missing key 'label'", where=where)
        if "label" in entry and _entry_files(entry["label"]) is None:
            raise InputError(f"{section}[{i}] 'label' must be a path", where=where)


def _check_duplicates(sections: Sequence[tuple[str, list[dict]]], dataroot: Path, where: str) -> None:
    # Normalise so that "./imagesTr/a.nii.gz" and "imagesTr/a.nii.gz" count as the same file; an
    # image listed twice (or in both training and testing) silently biases folds and leaks test data.
    seen: dict[str, str] = {}
    for section, entries in sections:
        for i, entry in enumerate(entries):
            key = os.path.normpath(os.fspath(resolve(_entry_files(entry["image"])[0], dataroot)))
            here = f"{section}[{i}]"
            if key in seen:
                raise InputError(
                    f"duplicate entry: {here} and {seen[key]} both use image {_entry_files(entry['image'])[0]}", where=where
                )
            seen[key] = here


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
    training/validation entry when ``require_labels``; no image listed twice (within or across
    sections, so no case leaks between training and validation/testing); ``fold`` on all training
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


def _load_array(path: Path, what: str, case: str) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of a NIfTI file, or an InputError for a missing/unreadable one."""
    import nibabel as nib

    if not path.is_file():
        raise InputError(f"{what} file not found: {path}", where=case)
    try:
        img = nib.load(os.fspath(path))
        # dataobj applies scl_slope/inter but keeps the stored dtype otherwise (get_fdata would
        # make a float64 copy of every volume).
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except _read_errors() as err:
        raise InputError(f"cannot read {what} {path.name} ({type(err).__name__}: {_one_line(err)})", where=case) from None
    return data, affine


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
    raise InputError(f"{what} is {len(shape)}D with shape {shape}, expected {expected}", where=case)


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
    for p in paths:
        data, aff = _load_array(p, "image", name)
        per_file_channels = channels if len(paths) == 1 else 1
        sp, c = _spatial(data, "image", name, per_file_channels)
        if data.dtype.kind not in "fcbiu":
            raise InputError(f"image has a non-numeric data type {data.dtype}", where=name)
        if data.dtype.kind in "fc" and not np.isfinite(data).all():
            bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            raise InputError(f"image contains NaN/Inf intensities ({bad} voxels)", where=name)
        if shape is None:
            shape, affine = sp, aff
        elif sp != shape or not np.allclose(aff, affine, rtol=0, atol=affine_atol):
            raise InputError(f"channel file {p.name} does not match the first channel's shape/affine", where=name)
        n_channels += c
        del data
    assert shape is not None and affine is not None
    if len(paths) > 1 and channels not in (1, n_channels):
        raise InputError(f"image has {n_channels} channel files, expected {channels}", where=name)

    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
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
    if not np.allclose(aff, affine, rtol=0, atol=atol):
        diff = float(np.abs(aff - affine).max())
        raise InputError(f"image/label affine mismatch (max difference {diff:.4g} > {atol:g})", where=name)
    if data.dtype.kind not in "fbiu":
        raise InputError(f"label has a non-numeric data type {data.dtype}", where=name)
    values = np.unique(data)
    if data.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise InputError("label contains NaN/Inf values", where=name)
        frac = values[values != np.round(values)]
        if frac.size:
            raise InputError(f"label has non-integer values (e.g. {float(frac[0]):g}); labels must be class ids", where=name)
    ints = tuple(int(v) for v in values)
    if ints and ints[0] < 0:
        raise InputError(f"label has negative values (e.g. {ints[0]}); labels must be class ids >= 0", where=name)
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


def _cases(sections: Iterable[tuple[str, list[dict]]]) -> Iterator[tuple[str, dict]]:
    for section, entries in sections:
        for entry in entries:
            yield section, entry


def validate(
    datalist: str,
    dataroot: str | None = None,
    labels: Any = None,
    require_foreground: bool = True,
) -> None:
    """Check a dataset before using it: the list file and every image/label pair.

    Accepts an Auto3DSeg datalist (``training`` / ``testing`` entries with paths relative to
    DATAROOT) or a Decathlon ``dataset.json`` (recognised by its ``numTraining`` / ``modality`` keys;
    paths relative to its folder). Prints ``ok: N cases ...`` when everything passes; the first
    problem found is reported as one line naming the file or case, with exit code 2.

    Args:
        datalist: path to the datalist JSON or the Decathlon dataset.json.
        dataroot: folder the datalist paths are relative to (default: the datalist's folder);
            a dataset.json's paths are always relative to its own folder.
        labels: allowed label values, e.g. ``--labels=0,1,2`` (background 0 is always allowed).
            Default: the ``labels`` of a dataset.json, or of a ``dataset.json`` next to the datalist
            in DATAROOT; without either, only integer-valued labels are required.
        require_foreground: every label file must contain at least one non-zero voxel
            (``--norequire_foreground`` to allow empty labels).
    """
    from tqdm import tqdm

    path = Path(datalist)
    data = read_json(path)
    channels = 1
    labels_source = "--labels" if labels is not None else None
    if _is_decathlon(data):
        ds = load_decathlon(path)
        root = path.parent
        sections: list[tuple[str, list[dict]]] = [("training", ds["training"])]
        if labels is None:
            labels, labels_source = declared_labels(ds), path.name
        channels = len(ds["modality"])
    else:
        # A list with only "testing" (an external evaluation set) is a valid input on its own.
        other_only = isinstance(data, dict) and "training" not in data and bool({"validation", "testing"} & set(data))
        dl = load_datalist(path, dataroot, require_labels=True, require_training=not other_only)
        root = Path(dataroot) if dataroot is not None else path.parent
        sections = [(s, dl[s]) for s in ("training", "validation", "testing") if s in dl]
        sibling = root / "dataset.json"
        if labels is None and sibling.is_file():
            ds = read_json(sibling)
            if _is_decathlon(ds) and isinstance(ds.get("labels"), dict) and all(map(_is_int_string, ds["labels"])):
                labels, labels_source = declared_labels(ds), str(sibling)
                if isinstance(ds.get("modality"), dict) and ds["modality"]:
                    channels = len(ds["modality"])
    allowed = _normalise_labels(labels)

    cases = list(_cases(sections))
    n_labelled = 0
    shapes: list[tuple[int, int, int]] = []
    spacings: list[tuple[float, float, float]] = []
    found: set[int] = set()
    for _section, entry in tqdm(cases, desc="validate", unit="case", disable=None, leave=False):
        images = _entry_files(entry["image"]) or []
        label_files = _entry_files(entry.get("label"))
        if label_files is not None and len(label_files) != 1:
            raise InputError("an entry must have exactly one label file", where=images[0])
        info = check_case(
            [resolve(x, root) for x in images] if len(images) > 1 else resolve(images[0], root),
            resolve(label_files[0], root) if label_files else None,
            labels=allowed,
            require_foreground=require_foreground,
            case=images[0],
            channels=channels,
        )
        shapes.append(info.shape)
        spacings.append(info.spacing)
        if info.label_values is not None:
            n_labelled += 1
            found.update(info.label_values)

    counts = ", ".join(f"{len(entries)} {s}" for s, entries in sections)
    sp = np.asarray(spacings)
    summary = [f"ok: {len(cases)} cases ({counts}; {n_labelled} labelled)"]
    if shapes:
        sh = np.asarray(shapes)
        summary.append("  shape: " + " x ".join(_span(lo, hi, "d") for lo, hi in zip(sh.min(axis=0), sh.max(axis=0))))
        summary.append(
            "  spacing (mm): "
            + " x ".join(_span(lo, hi, ".2f") for lo, hi in zip(sp.min(axis=0), sp.max(axis=0)))
        )
    if n_labelled:
        declared = f" (declared in {labels_source}: {sorted(allowed | {0})})" if allowed is not None else ""
        summary.append(f"  label values found: {sorted(found)}{declared}")
    print("\n".join(summary))


def _span(lo: float, hi: float, fmt: str) -> str:
    a, b = format(lo, fmt), format(hi, fmt)
    return a if a == b else f"{a}-{b}"
