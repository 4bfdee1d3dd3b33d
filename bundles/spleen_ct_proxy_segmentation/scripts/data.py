"""Cases of this bundle: the train/validation split, evaluation cases and inference inputs, checked before any work.

Every function the configs call here stops a bad input the same way: one line ``error: <file or case>: <problem>``
on stderr and exit code 2 (``SystemExit``, which MONAI's config evaluation passes through untouched), before a
dataset is cached or a network is built. The checks themselves are :mod:`scripts.validation`.

Where the cases come from (``configs/train.json``):

* ``images`` / ``labels``: lists of files, by default the ``training`` cases of ``datalist_file``;
* ``datalist_file``: ``dataset_dir/datalist.json`` (Auto3DSeg: ``training`` entries with optional ``fold`` keys,
  optional ``validation`` and ``testing`` lists) when it exists, else ``dataset_dir/dataset.json`` (Medical
  Segmentation Decathlon). Relative paths are relative to ``dataset_dir``.
"""

from __future__ import annotations

import functools
import glob
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from .validation import InputError, check_case, load_datalist, load_decathlon, read_json, resolve

__all__ = [
    "EXIT_BAD_INPUT",
    "check_inputs",
    "check_training_cases",
    "datalist_file",
    "eval_cases",
    "flag",
    "image_entries",
    "inference_inputs",
    "listed_files",
    "modalities",
    "refuse",
    "refusing",
    "require",
    "split_cases",
]

#: Exit code of a run stopped for bad input (the proxy-bundle command line uses the same).
EXIT_BAD_INPUT = 2

_NIFTI = ("*.nii.gz", "*.nii")
_F = TypeVar("_F", bound=Callable[..., Any])


def refuse(err: Exception) -> None:
    """Print ``error: <err>`` as one line on stderr and exit with :data:`EXIT_BAD_INPUT`."""
    print("error: " + " ".join(str(err).split()), file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


def refusing(fn: _F) -> _F:
    """Decorate ``fn`` so that an InputError it raises stops the run as :func:`refuse` does."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError as err:
            refuse(err)

    return wrapper  # type: ignore[return-value]


def _first(value: str | Sequence[str]) -> str:
    return value if isinstance(value, (str, os.PathLike)) else value[0]


def _absolute(value: Any, root: Path) -> Any:
    """An image/label value with its path(s) made absolute (per-channel lists kept)."""
    if isinstance(value, (list, tuple)):
        return [str(resolve(v, root).resolve()) for v in value]
    return str(resolve(value, root).resolve())


def _key(value: Any) -> str:
    return os.path.normpath(_first(value))


def _check_files(values: Sequence[Any], what: str) -> None:
    for i, value in enumerate(values):
        for path in [value] if isinstance(value, (str, os.PathLike)) else list(value):
            if not Path(path).is_file():
                raise InputError(f"{what}[{i}] file not found: {path}", where=what)


@refusing
def flag(value: Any, where: str = "flag") -> bool:
    """A config switch as a bool: ``true``/``false`` given on the command line arrive as strings (python-fire)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off", "none", ""):
            return False
    elif value is None or isinstance(value, (bool, int)):
        return bool(value)
    raise InputError(f"expected true or false, got {value!r}", where=where)


def datalist_file(dataset_dir: str | os.PathLike) -> str | None:
    """``dataset_dir/datalist.json`` if it exists, else ``dataset_dir/dataset.json`` if it exists, else None."""
    for name in ("datalist.json", "dataset.json"):
        path = Path(dataset_dir) / name
        if path.is_file():
            return str(path)
    return None


def _is_decathlon(data: Any) -> bool:
    return isinstance(data, dict) and "numTraining" in data and "modality" in data


def _sections(path: str | os.PathLike, dataset_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """``training`` / ``validation`` / ``testing`` entries of a datalist or dataset.json, paths absolute."""
    path = Path(path)
    if _is_decathlon(read_json(path)):
        data = load_decathlon(path)
        # A Decathlon "test" list holds bare image paths.
        sections = {"training": data["training"], "testing": [{"image": t} for t in data.get("test", [])]}
        root = path.parent
    else:
        root = Path(dataset_dir)
        data = load_datalist(path, root, require_training=False)
        sections = {k: data[k] for k in ("training", "validation", "testing") if k in data}
    out: dict[str, list[dict]] = {}
    for name, entries in sections.items():
        out[name] = [{**e, **{k: _absolute(e[k], root) for k in ("image", "label") if k in e}} for e in entries]
    return out


@refusing
def listed_files(datalist: str | os.PathLike | None, dataset_dir: str | os.PathLike, key: str = "image") -> list:
    """Absolute ``key`` ("image" or "label") paths of the ``training`` cases of ``datalist``, in listed order.

    Raises (as exit 2): no datalist (``dataset_dir`` has neither ``datalist.json`` nor ``dataset.json``), a
    datalist that fails :func:`scripts.validation.load_datalist` / ``load_decathlon``, or no training cases.
    """
    if datalist is None:
        raise InputError("has neither datalist.json nor dataset.json; give one, or set images and labels",
                         where=str(dataset_dir))
    training = _sections(datalist, dataset_dir).get("training", [])
    if not training:
        raise InputError("has no training cases", where=str(datalist))
    return [e[key] for e in training]


@refusing
def split_cases(images: Sequence[Any], labels: Sequence[Any], datalist: str | os.PathLike | None = None,
                dataset_dir: str | os.PathLike = ".", fold: int = 0, num_folds: int = 5,
                proxy_datalist: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """Deterministic train/validation split: ``{"training": [{image, label}], "validation": [...]}``.

    ``images[i]`` pairs with ``labels[i]`` (relative paths are relative to ``dataset_dir``). What ``datalist``
    says about these cases decides the split, in this order:

    1. a ``validation`` list: those cases validate, every other case trains;
    2. ``fold`` keys: fold ``fold`` validates;
    3. otherwise the cases, sorted by image path, are dealt round-robin into ``num_folds`` folds, so the split
       never depends on file-system order.

    Cases of the datalist's ``testing`` list never train or validate. ``proxy_datalist`` (a datalist whose
    ``training`` entries are a subset of these cases) replaces the training cases by that subset, minus any
    validation case; a ``validation`` list in it replaces the validation cases.

    Raises (as exit 2): unequal or empty lists, a missing file, an unknown fold, a split without training or
    validation cases.
    """
    root = Path(dataset_dir)
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} labels", where="images/labels")
    if not images:
        raise InputError("no training images", where="images")
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise InputError(f"must be an integer >= 2, got {num_folds!r}", where="num_folds")
    cases = [{"image": _absolute(i, root), "label": _absolute(lab, root)} for i, lab in zip(images, labels)]
    _check_files([c["image"] for c in cases], "images")
    _check_files([c["label"] for c in cases], "labels")
    listed = _sections(datalist, root) if datalist is not None else {}
    testing = {_key(e["image"]) for e in listed.get("testing", [])}
    cases = [c for c in cases if _key(c["image"]) not in testing]
    if "validation" in listed:
        val_keys = {_key(e["image"]) for e in listed["validation"]}
        val = [e for e in listed["validation"]]
        train = [c for c in cases if _key(c["image"]) not in val_keys]
    else:
        folds = {_key(e["image"]): e["fold"] for e in listed.get("training", []) if "fold" in e}
        if cases and all(_key(c["image"]) in folds for c in cases):
            fold_of = {_key(c["image"]): int(folds[_key(c["image"])]) for c in cases}
        else:
            order = sorted(_key(c["image"]) for c in cases)
            fold_of = {k: i % num_folds for i, k in enumerate(order)}
        if fold not in set(fold_of.values()):
            raise InputError(f"fold {fold} does not exist (folds: {sorted(set(fold_of.values()))})", where="fold")
        val = [c for c in cases if fold_of[_key(c["image"])] == fold]
        train = [c for c in cases if fold_of[_key(c["image"])] != fold]
    if proxy_datalist:
        proxy = _sections(proxy_datalist, root)
        val_keys = {_key(c["image"]) for c in val}
        train = [{"image": e["image"], "label": e["label"]} for e in proxy.get("training", [])
                 if "label" in e and _key(e["image"]) not in val_keys]
        if "validation" in proxy:
            val = proxy["validation"]
        if not train:
            raise InputError(f"no proxy case is outside the {len(val)} validation cases", where=str(proxy_datalist))
    if not train or not val:
        raise InputError(f"the split leaves {len(train)} training and {len(val)} validation cases; need at least one "
                         "of each", where=str(datalist or "images"))
    keep = ("image", "label")
    return {"training": [{k: c[k] for k in keep} for c in train],
            "validation": [{k: c[k] for k in keep if k in c} for c in val]}


def modalities(dataset_dir: str | os.PathLike, default: int = 1) -> int:
    """Image channels the dataset declares (``modality`` of ``dataset_dir/dataset.json``), else ``default``."""
    path = Path(dataset_dir) / "dataset.json"
    try:
        data = read_json(path)
    except InputError:
        return default
    return len(data["modality"]) if _is_decathlon(data) and isinstance(data["modality"], dict) else default


def _check_channels(image_channels: Sequence[int] | None, channels: int) -> None:
    if image_channels is None:
        return
    if not image_channels or max(image_channels) >= channels or min(image_channels) < 0:
        raise InputError(f"{list(image_channels)} selects channels the images do not have (they have {channels})",
                         where="image_channels")


@refusing
def check_training_cases(split: dict[str, list[dict]], num_classes: int, channels: int = 1,
                         image_channels: Sequence[int] | None = None, enabled: Any = True) -> int:
    """Read every training and validation case once and check it (:func:`scripts.validation.check_case`).

    Labels must hold class ids below ``num_classes``; images must have ``channels`` channels (3D, or 4D with
    ``channels`` last) from which ``image_channels`` selects. Intensities may be <= 0 everywhere (a rule of
    MONAI's DataAnalyzer, which this bundle does not run). ``enabled`` false skips the reading (a search
    checks the data once, not in every trial). Returns the number of cases checked.
    """
    if not flag(enabled, where="check_inputs"):
        return 0
    _check_channels(image_channels, channels)
    n = 0
    for section in ("training", "validation"):
        for entry in split[section]:
            check_case(entry["image"], entry.get("label"), labels=range(int(num_classes)),
                       case=_first(entry["image"]), channels=channels, require_positive=False)
            n += 1
    return n


def inference_inputs(dataset_dir: str | os.PathLike) -> list:
    """Default inference input: the NIfTI images in ``dataset_dir/imagesTs`` (MSD layout), else the ``testing``
    images of ``dataset_dir/datalist.json``, else none (:func:`check_inputs` stops a run without input; a bundle
    check without data still parses)."""
    folder = Path(dataset_dir) / "imagesTs"
    if folder.is_dir():
        # glob skips dot-files, such as the "._*" resource forks inside the MSD archives.
        files = sorted({f for pattern in _NIFTI for f in glob.glob(str(folder / pattern))})
        if files:
            return files
    listed = datalist_file(dataset_dir)
    if listed is not None:
        try:
            testing = _sections(listed, dataset_dir).get("testing", [])
        except InputError:
            return []
        return [e["image"] for e in testing]
    return []


@refusing
def image_entries(datalist: Any, image_key: str = "image") -> list[dict]:
    """Inference inputs as ``[{image_key: path}]``: ``datalist`` is a list of image files, a folder of NIfTI
    files or a datalist JSON (its ``testing`` images). Raises (as exit 2) for a folder or file that is not there."""
    if isinstance(datalist, (str, os.PathLike)):
        source = Path(datalist)
        if source.is_dir():
            files: list = sorted({f for pattern in _NIFTI for f in glob.glob(str(source / pattern))})
        elif source.is_file():
            files = [e["image"] for e in _sections(source, source.parent).get("testing", [])]
        else:
            raise InputError("input folder or datalist not found", where=str(source))
    else:
        files = list(datalist or [])
    return [{image_key: f} for f in files]


@refusing
def check_inputs(entries: Sequence[dict], image_key: str = "image", channels: int = 1,
                 image_channels: Sequence[int] | None = None, enabled: Any = True,
                 dataset_dir: str | os.PathLike | None = None) -> int:
    """Before inference: there is input, every file exists, and (``enabled``) every image reads as a finite
    3D volume with ``channels`` channels from which ``image_channels`` selects. Returns the number of inputs."""
    files = [e[image_key] for e in entries]
    if not files:
        hint = f" (none in {dataset_dir}/imagesTs or the testing list of its datalist.json)" if dataset_dir else ""
        raise InputError(f"no input images{hint}; set datalist to a list of image files", where="datalist")
    _check_files(files, "datalist")
    if flag(enabled, where="check_inputs"):
        _check_channels(image_channels, channels)
        for f in files:
            check_case(f, case=_first(f), channels=channels, require_positive=False)
    return len(files)


@refusing
def eval_cases(split: dict[str, list[dict]] | None, eval_datalist: str | os.PathLike | None = None,
               eval_key: str = "testing", dataset_dir: str | os.PathLike = ".", num_classes: int = 2,
               channels: int = 1, image_channels: Sequence[int] | None = None, check: Any = True) -> list[dict]:
    """Labelled cases to evaluate: the validation cases of ``split``, or the ``eval_key`` entries of
    ``eval_datalist`` (paths relative to ``dataset_dir``), each checked like a training case."""
    if eval_datalist:
        entries = _sections(eval_datalist, dataset_dir).get(eval_key, [])
        if not entries:
            raise InputError(f"has no {eval_key!r} entries", where=str(eval_datalist))
        unlabelled = [i for i, e in enumerate(entries) if "label" not in e]
        if unlabelled:
            raise InputError(f"{eval_key}[{unlabelled[0]}] has no label to evaluate against", where=str(eval_datalist))
    else:
        entries = list(split["validation"]) if split else []
    cases = [{"image": e["image"], "label": e["label"]} for e in entries]
    if flag(check, where="check_inputs"):
        check_training_cases({"training": [], "validation": cases}, num_classes, channels, image_channels)
    return cases


def require(module: str, install: str, where: str) -> None:
    """Stop with one line when ``module`` cannot be imported (``install`` says how to get it)."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        refuse(InputError(f"needs the {module} package: {install}", where=where))
