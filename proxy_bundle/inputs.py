"""A command's data source, checked and keyed: the validation gate, AutoRunner's folds and the input fingerprint.

``analyze`` and ``hpo`` take the data source AutoRunner takes (``dataroot``, ``datalist``, ``modality``). Before
any work, :func:`prepare_source`

1. runs :func:`proxy_bundle.validation.gate` on the user's datalist (every file read once; a passed check is
   recorded under ``W/.validated`` and not repeated for the same files);
2. computes the datalist AutoRunner would train on (:func:`proxy_bundle.validation.auto3dseg_folds`: a
   ``validation`` list becomes fold 0) and writes it as ``W/datalist.json`` (the user's file is never
   rewritten, unlike AutoRunner, which rewrites it in place);
3. fingerprints the inputs (datalist content, dataroot, modality, every file's size and time).

Every product derived from the data (``datastats.yaml``, proxy datalists, searches) records that fingerprint
and is reused only under the same one: an edited datalist or a replaced image is recomputed, never served stale.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from proxy_bundle.errors import InputError

__all__ = ["Source", "prepare_source", "FINGERPRINT_KEY", "datastats_fingerprint"]

#: Key under which ``datastats.yaml`` (and proxy-data provenance) records the input fingerprint.
FINGERPRINT_KEY = "input_fingerprint"


@dataclass(frozen=True)
class Source:
    """A checked data source.

    Attributes:
        config: the data source config to hand to Auto3DSeg (``datalist`` is the fold-form copy in the work dir,
            ``source_datalist`` the user's file; absolute paths).
        datalist: the fold-form datalist file (``W/datalist.json``).
        fingerprint: SHA-256 of the inputs (see :func:`proxy_bundle.validation.input_fingerprint`).
        n_training: training entries in the fold-form datalist (validation cases included), i.e. the cases
            MONAI's DataAnalyzer analyses.
    """

    config: dict
    datalist: Path
    fingerprint: str
    n_training: int


def prepare_source(cfg: Mapping[str, Any], work_dir: str | os.PathLike, *, progress: bool = False) -> Source:
    """Gate the data source ``cfg`` (absolute ``dataroot``/``datalist``, ``modality``) and key it.

    Nothing is written when the data fail the gate. On success ``W/datalist.json`` holds the fold-form datalist
    (rewritten only when its content changes).

    Raises:
        InputError: the first problem of the dataset (``error: <file or case>: <problem>``).
    """
    from proxy_bundle.atomic import write_json
    from proxy_bundle.validation import auto3dseg_folds, gate, input_fingerprint, load_datalist

    work = Path(work_dir)
    src = dict(cfg)
    source_datalist = Path(str(src.get("source_datalist") or src["datalist"]))
    dataroot = Path(str(src["dataroot"]))
    # Empty labels are allowed, as in AutoRunner (`validate` reports them).
    gate(source_datalist, dataroot, require_foreground=False, record_dir=work / ".validated", progress=progress)
    data = load_datalist(source_datalist, dataroot)
    num_fold = src.get("num_fold", 5)  # AutoRunner's input key for folds it has to deal itself
    try:
        num_fold = int(num_fold)
    except (TypeError, ValueError):
        raise InputError(f"'num_fold' must be an integer, got {num_fold!r}", where="input") from None
    folds = auto3dseg_folds(data, num_fold)
    out = work / "datalist.json"
    if out.resolve() == source_datalist.resolve():
        raise InputError("the datalist must not be inside the work dir as datalist.json", where=str(out))
    current = None
    if out.is_file():
        try:
            current = json.loads(out.read_text())
        except (OSError, ValueError):
            current = None
    if current != folds:
        write_json(out, folds)
    fingerprint = input_fingerprint(folds, dataroot, modality=src.get("modality"))
    config = {**src, "datalist": str(out.resolve()), "source_datalist": str(source_datalist.resolve()),
              "dataroot": str(dataroot.resolve())}
    return Source(config=config, datalist=out.resolve(), fingerprint=fingerprint,
                  n_training=len(folds.get("training") or []))


def datastats_fingerprint(datastats: str | os.PathLike) -> str | None:
    """The input fingerprint recorded in a ``datastats.yaml`` (``None`` when absent or unreadable)."""
    import yaml

    try:
        doc = yaml.safe_load(Path(datastats).read_text())
    except (OSError, yaml.YAMLError):
        return None
    value = doc.get(FINGERPRINT_KEY) if isinstance(doc, dict) else None
    return str(value) if value else None
