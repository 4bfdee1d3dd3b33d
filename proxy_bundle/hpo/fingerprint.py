"""What identifies a search: every setting that changes its results, and the refusal of a changed one.

A search stored under a study name is resumed (or joined by another worker) only by a command that would
produce the same results: the same data (the input fingerprint of :mod:`proxy_bundle.inputs`), validation
fold, algorithm template (its files as installed in the work dir), fixed template overrides (including
DataLoader workers, which change MONAI's per-worker augmentation random streams), search space, fidelities,
seed, sampler and pruner (``n_trials``/``top_k`` may grow: that extends the search). Overrides that only say
*where* things are (cache and checkpoint folders) are left out. Anything else stops with one line naming the
changed flag and how to start a new search, instead of silently reporting the old result as the answer to the
new command.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from proxy_bundle.errors import InputError

__all__ = ["check_known_settings", "check_unchanged", "first_difference", "search_identity", "stored_settings",
           "template_identity"]

# Overrides that name a location, not a setting: they never change a result.
LOCATION_OVERRIDES = frozenset({"cache_dir", "ckpt_path", "output_path", "data_list_file_path", "dataroot",
                                "bundle_root"})

# fingerprint key (or key prefix) -> the flag(s) that set it, for the refusal message
FLAGS: dict[str, str] = {
    "data": "--input (the datalist or its files)",
    "fold": "--fold",
    "template": "--algo/--templates (template files)",
    "overrides.num_workers": "--num_workers",
    "overrides": "--overrides",
    "space": "--search_space",
    "proxy.name": "--proxy",
    "proxy.datalist": "the proxy data (--data_fraction/--similarity/--mode/--strategy)",
    "proxy.width": "--width",
    "proxy.blocks": "--blocks",
    "proxy.levels": "--levels",
    "proxy.epochs": "--proxy_epochs",
    "proxy": "--proxy",
    "full.epochs": "--epochs",
    "full": "--epochs",
    "n_trials": "--n_trials",
    "top_k": "--top_k",
    "seed": "--seed",
    "sampler": "--sampler",
    "pruner": "--pruner",
    "n_startup_trials": "--n_startup_trials",
}


def template_identity(template_dir: str | os.PathLike) -> str:
    """SHA-256 over the relative paths and content of a template's files (byte-code caches left out)."""
    root = Path(template_dir)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and "__pycache__" not in q.parts):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def search_identity(*, data: str, fold: int | None, template: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The settings besides the search's own (space, fidelities, budget, seed) that change its results."""
    kept = {str(k): v for k, v in sorted(overrides.items()) if str(k) not in LOCATION_OVERRIDES}
    return json.loads(json.dumps({"data": data, "fold": fold, "template": template, "overrides": kept},
                                 default=str))


def _walk(have: Any, want: Any, path: str) -> Iterable[tuple[str, Any, Any]]:
    if isinstance(have, dict) and isinstance(want, dict):
        for key in sorted(set(have) | set(want), key=str):
            yield from _walk(have.get(key), want.get(key), f"{path}.{key}" if path else str(key))
    elif have != want:
        yield path, have, want


def first_difference(have: Mapping[str, Any], want: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """(dotted key, stored value, requested value) of the first setting that differs, in the order of
    :data:`FLAGS` (data, fold, template, ... before the search's own settings); ``None`` when equal."""
    diffs = list(_walk(dict(have), dict(want), ""))
    if not diffs:
        return None
    order = list(FLAGS)

    def rank(item: tuple[str, Any, Any]) -> int:
        top = item[0].split(".")[0]
        return order.index(top) if top in order else len(order)

    return sorted(diffs, key=rank)[0]


def _flag(key: str) -> str:
    for prefix in sorted(FLAGS, key=len, reverse=True):
        if key == prefix or key.startswith(prefix + "."):
            if prefix == "overrides" and key != "overrides":
                return f"--overrides {key.split('.', 1)[1]}"
            return FLAGS[prefix]
    return key


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a content digest
    return text if len(text) <= 60 else text[:57] + "..."


def check_unchanged(study_name: str, have: Mapping[str, Any] | None, want: Mapping[str, Any], where: str) -> None:
    """Refuse to resume ``study_name`` (stored settings ``have``) with different settings ``want``.

    Raises:
        InputError: one line naming the first changed setting as its flag, the stored and the requested
            value, and how to start a new search instead.
    """
    if have is None:
        return
    diff = first_difference(have, want)
    if diff is None:
        return
    key, old, new = diff
    flag = _flag(key)
    if old is None:
        change = f"{flag} is new in this command ({_short(new)}) but the study has no record of it"
    elif new is None:
        change = f"{flag} was {_short(old)} and is not given now"
    else:
        change = f"{flag} was {_short(old)}, now {_short(new)}"
    raise InputError(f"study {study_name!r} was started with other settings: {change}; re-run with the original "
                     f"settings to resume it, or start a new search with --study_name NAME (or another --work_dir)",
                     where=where)


def stored_settings(storage: Any, study_name: str, key: str = "config") -> dict[str, Any] | None:
    """The settings a study was started with (its ``key`` user attribute), or ``None`` when the study does not
    exist yet or predates the record. ``storage`` is an Optuna storage (``hpo.storage.open_storage``)."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return None
    attrs = storage.get_study_user_attrs(study_id)
    value = attrs.get(key)
    return dict(value) if isinstance(value, Mapping) else None


def check_known_settings(study_name: str, have: Mapping[str, Any] | None, known: Mapping[str, Any],
                         where: str) -> None:
    """:func:`check_unchanged` on the settings known before any work (``known`` holds a subset of the keys):
    a command that changes the data, fold or overrides is refused before the data analysis and the proxy
    selection run, not only when the search starts.

    Raises:
        InputError: as :func:`check_unchanged`.
    """
    if have is None:
        return
    check_unchanged(study_name, {k: have.get(k) for k in known}, dict(known), where)
