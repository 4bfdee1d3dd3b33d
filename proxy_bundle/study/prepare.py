"""Everything a study needs before its first run: the dataset, MONAI data analysis, proxy subsets, the algo.

Each step writes its outputs into the study's work dir and is skipped when they are already there (and belong
to the same inputs), so a resumed study does not redo them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from proxy_bundle.atomic import ensure_dir, write_json, write_yaml
from proxy_bundle.errors import InputError

# Auto3DSeg accepts "CT" or "MRI"; MSD dataset.json names the MR sequence instead (T2, ADC, ...).
_MODALITY = {"ct": "CT"}


@dataclass(frozen=True)
class StudyData:
    """Paths of a prepared dataset (all absolute)."""

    dataroot: Path
    datalist: Path
    external: Path | None  # None: no held-out set, agreement is measured on the validation fold only
    modality: str
    input_yaml: Path
    datastats: Path


def ensure_phantoms(task: str, out: Path, num_cases: int, num_external: int, size: int, seed: int) -> Path:
    """Generate the phantom dataset into ``out`` unless a dataset with the same arguments is already there."""
    meta = out / "phantom_meta.json"
    wanted = {"task": task, "num_cases": num_cases, "num_external": num_external, "size": size, "seed": seed}
    try:
        have = json.loads(meta.read_text())
        if all(have.get(k) == v for k, v in wanted.items()) and (num_external == 0 or (out / "external.json").is_file()):
            return out
    except (OSError, ValueError):
        pass
    from proxy_bundle.phantoms.generate import generate_dataset

    return Path(generate_dataset(task, out, num_cases=num_cases, num_external=num_external, size=size, seed=seed))


def gate_dataset(dataroot: Path, record_dir: Path | None = None) -> None:
    """The validation gate for a study's dataset: ``datalist.json`` (with folds) and ``dataset.json`` exist, and
    every case of ``datalist.json`` and, when there is one, ``external.json`` passes
    :func:`proxy_bundle.validation.gate` (a passed check is recorded in ``record_dir`` and not repeated for the
    same files)."""
    dataroot = Path(dataroot).resolve()
    for name in ("datalist.json", "dataset.json"):
        if not (dataroot / name).is_file():
            raise InputError(f"{name} not found (a study needs datalist.json with folds and dataset.json, "
                             "optionally external.json; see the phantoms command)", where=str(dataroot))
    from proxy_bundle.validation import gate, load_datalist

    load_datalist(dataroot / "datalist.json", dataroot, require_folds=True, check_files=False)
    for name in ("datalist.json", "external.json"):
        if (dataroot / name).is_file():
            gate(dataroot / name, dataroot, require_foreground=False, record_dir=record_dir)


def dataset_paths(dataroot: Path, analysis_dir: Path) -> StudyData:
    """Check an MSD-layout dataset (datalist.json with folds, dataset.json, optional external.json) and name its
    parts. Without ``external.json`` the study measures agreement on the validation fold only."""
    dataroot = Path(dataroot).resolve()
    gate_dataset(dataroot, Path(analysis_dir) / ".validated")
    from proxy_bundle.validation import read_json

    ds = read_json(dataroot / "dataset.json")
    modality = str(next(iter((ds.get("modality") or {"0": "CT"}).values()), "CT"))
    modality = _MODALITY.get(modality.lower(), "MRI")
    analysis_dir = ensure_dir(Path(analysis_dir).resolve())
    return StudyData(
        dataroot=dataroot,
        datalist=dataroot / "datalist.json",
        external=dataroot / "external.json" if (dataroot / "external.json").is_file() else None,
        modality=modality,
        input_yaml=analysis_dir / "input.yaml",
        datastats=analysis_dir / "datastats.yaml",
    )


def ensure_analysis(data: StudyData) -> StudyData:
    """Write the Auto3DSeg data source config and run MONAI's ``DataAnalyzer`` once (``datastats.yaml``)."""
    src = {"modality": data.modality, "dataroot": str(data.dataroot), "datalist": str(data.datalist)}
    stamp = data.datastats.with_suffix(".source.json")
    fresh = data.datastats.is_file() and stamp.is_file() and _read(stamp) == {**src, **_mtime(data.datalist)}
    write_yaml(data.input_yaml, src)
    if not fresh:
        from monai.apps.auto3dseg import DataAnalyzer

        DataAnalyzer(str(data.datalist), str(data.dataroot), output_path=str(data.datastats), device="cpu",
                     worker=0).get_all_case_stats()
        write_json(stamp, {**src, **_mtime(data.datalist)})
    return data


def ensure_subsets(data: StudyData, out_dir: Path, keys: Mapping[str, Mapping[str, Any]], fraction: float,
                   fold: int, mode: str = "roi") -> dict[str, str]:
    """One proxy datalist per subset key (``{key: {"metric", "strategy", "seed"}}``), selected by
    :func:`proxy_bundle.selection.run_selection` from the training cases outside the validation ``fold``."""
    from proxy_bundle.selection import run_selection, write_selection

    out_dir = ensure_dir(out_dir)
    paths: dict[str, str] = {}
    for key, how in keys.items():
        path = out_dir / f"{key}.json"
        settings = {"fraction": fraction, "fold": fold, "mode": mode, **dict(how), **_mtime(data.datalist)}
        stamp = out_dir / f"{key}.settings.json"
        if not (path.is_file() and stamp.is_file() and _read(stamp) == settings):
            selection = run_selection(
                str(data.datalist), str(data.dataroot), fraction=fraction, metric=how["metric"],
                strategy=how["strategy"], seed=int(how.get("seed", 0)), fold=fold, mode=mode, progress=False,
            )
            write_selection(selection, path)
            write_json(stamp, settings)
        paths[key] = str(path)
    return paths


def _mtime(path: Path) -> dict[str, Any]:
    # Keyed to the input: the datalist's content and every listed file's size and time.
    from proxy_bundle.validation import input_fingerprint

    return {"input_fingerprint": input_fingerprint(path, Path(path).parent)}


def _read(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def content_hash(*paths: str | Path, patterns: tuple[str, ...] = ("*",)) -> str:
    """SHA-256 (16 hex digits) of the contents of files and of folders' files matching ``patterns``.

    Names are hashed relative to each given path, so the same content at another place on another machine
    has the same hash (what lets a committed table be reused elsewhere); ``__pycache__`` is skipped.
    """
    import hashlib

    h = hashlib.sha256()
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(
            p for pat in patterns for p in root.rglob(pat) if p.is_file() and "__pycache__" not in p.parts)
        for f in files:
            h.update(str(f.relative_to(root) if f != root else f.name).encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def template_hash(template_dir: str | Path) -> str:
    """Content hash of an algorithm template as far as it decides a study run's result.

    The scripts (``*.py``) and the parsed configuration files, without their ``proxy`` block: every study run
    sets that block through its fidelity, so changing the template's own proxy defaults (or a comment) keeps
    a committed table valid, while any change to training code or to another setting starts a new table.
    """
    import hashlib

    import yaml

    root = Path(template_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = str(f.relative_to(root))
        if f.suffix == ".py":
            h.update(rel.encode() + hashlib.sha256(f.read_bytes()).digest())
        elif f.suffix in (".yaml", ".yml", ".json"):
            cfg = yaml.safe_load(f.read_text())
            if isinstance(cfg, dict):
                cfg.pop("proxy", None)
            h.update(rel.encode() + json.dumps(cfg, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
