"""Write a phantom dataset in Medical Segmentation Decathlon layout (plus Auto3DSeg datalist and external set).

Output of :func:`generate_dataset` (all paths relative to ``out``, which is also the dataroot)::

    dataset.json        Decathlon description (name, modality, labels, numTraining, training)
    datalist.json       Auto3DSeg datalist: training entries with contiguous ``fold`` keys
    external.json       {"name", "site", "testing": [...]}: cases from an unseen site (only when num_external > 0)
    phantom_meta.json   per case: site, spacing, shape, atypical flag, sampled parameters
    imagesTr/ labelsTr/ imagesExt/ labelsExt/   NIfTI-1 .nii.gz

Every file is written atomically, and the index files last, so an interrupted run never leaves a
datalist that points at missing images; re-running with the same arguments reproduces every byte.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np

from proxy_bundle.atomic import ensure_dir, write_bytes, write_json
from proxy_bundle.errors import InputError
from proxy_bundle.options import PhantomTask
from proxy_bundle.phantoms import prostate_mr, spleen_ct
from proxy_bundle.phantoms.case import PhantomCase
from proxy_bundle.phantoms.grid import Grid
from proxy_bundle.phantoms.sites import (
    PROSTATE_ATYPICAL,
    PROSTATE_EXTERNAL,
    PROSTATE_SITES,
    SPLEEN_ATYPICAL,
    SPLEEN_EXTERNAL,
    SPLEEN_SITES,
    Site,
    assign_atypical,
    assign_sites,
)

__all__ = ["TASKS", "TaskSpec", "generate_dataset", "phantoms", "nifti_gz_bytes"]

#: Bump when the rendering changes, so stale datasets can be recognised from phantom_meta.json.
GENERATOR_VERSION = 1
MAX_SIZE = 512
MAX_FOLDS = 5


@dataclass(frozen=True)
class TaskSpec:
    """What distinguishes the two phantom tasks."""

    key: int  # part of every case's random seed
    name: str
    prefix: str
    description: str
    modality: dict[str, str]
    labels: dict[str, str]
    sites: tuple[Site, ...]
    external: Site
    atypical: tuple[str, ...]
    render: Callable[[np.random.Generator, Site, int, str | None], PhantomCase]


TASKS: dict[str, TaskSpec] = {
    "spleen_ct": TaskSpec(
        1, "SpleenPhantom", "spleen",
        "Synthetic multi-site abdominal CT with spleen labels (Hounsfield-calibrated), standing in for MSD Task09",
        {"0": "CT"}, {"0": "background", "1": "spleen"},
        SPLEEN_SITES, SPLEEN_EXTERNAL, SPLEEN_ATYPICAL, spleen_ct.render,
    ),
    "prostate_mr": TaskSpec(
        2, "ProstatePhantom", "prostate",
        "Synthetic multi-site T2-weighted prostate MR with zonal labels, standing in for MSD Task05 (single modality)",
        {"0": "T2"}, {"0": "background", "1": "peripheral zone", "2": "transition zone"},
        PROSTATE_SITES, PROSTATE_EXTERNAL, PROSTATE_ATYPICAL, prostate_mr.render,
    ),
}


def nifti_gz_bytes(array: np.ndarray, grid: Grid, description: str = "") -> bytes:
    """A gzipped NIfTI-1 file as bytes, identical for identical input (no timestamp or file name in gzip)."""
    img = nib.Nifti1Image(array, grid.affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(grid.affine, code=1)
    img.set_sform(grid.affine, code=1)
    img.header["descrip"] = description[:79].encode()
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _check_args(task: Any, num_cases: Any, num_external: Any, size: Any, seed: Any, n_jobs: Any = 1) -> TaskSpec:
    if not isinstance(task, str) or task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}", where="--task")
    for name, value, lo, hi in (
        ("num_cases", num_cases, 2, 100_000),
        ("num_external", num_external, 0, 100_000),
        ("size", size, 16, MAX_SIZE),
        ("seed", seed, 0, 2**63 - 1),
        ("n_jobs", n_jobs, 1, 256),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"must be an integer, got {value!r}", where=f"--{name}")
        if not lo <= value <= hi:
            raise InputError(f"must be between {lo} and {hi}, got {value}", where=f"--{name}")
    return TASKS[task]


def _case_rng(seed: int, spec: TaskSpec, split: int, index: int) -> np.random.Generator:
    # One independent stream per case: case i does not change when more cases are requested.
    return np.random.default_rng([seed, spec.key, split, index])


def _write_case(out: Path, sub: str, case_id: str, case: PhantomCase, task: str, site: str) -> tuple[str, str]:
    image_rel, label_rel = f"images{sub}/{case_id}.nii.gz", f"labels{sub}/{case_id}.nii.gz"
    write_bytes(out / image_rel, nifti_gz_bytes(case.image, case.grid, f"proxy-bundle phantom {task} {site}"))
    write_bytes(out / label_rel, nifti_gz_bytes(case.label, case.grid, f"proxy-bundle phantom {task} label"))
    return image_rel, label_rel


def _case_meta(case: PhantomCase, site: Site, split: str, image: str, label: str, kind: str | None) -> dict[str, Any]:
    return {
        "image": image,
        "label": label,
        "split": split,
        "site": site.name,
        "spacing": [round(s, 6) for s in case.grid.spacing],
        "shape": list(case.grid.shape),
        "dtype": str(case.image.dtype),
        "atypical": kind is not None,
        "atypical_kind": kind,
        **case.meta,
    }


def _folds(sites: list[Site], k: int) -> list[int]:
    """Contiguous fold ids 0..k-1, balanced per site (cases of a site are dealt round-robin)."""
    order = sorted(range(len(sites)), key=lambda i: (sites[i].name, i))
    folds = [0] * len(sites)
    for rank, i in enumerate(order):
        folds[i] = rank % k
    return folds


@dataclass(frozen=True)
class _Job:
    task: str
    seed: int
    root: str
    split: str  # "training" | "external"
    index: int
    case_id: str
    site: Site
    kind: str | None
    size: int


def _make_case(job: _Job) -> dict[str, Any]:
    """Render and write one case (runs in a worker process when ``n_jobs > 1``); returns its metadata."""
    spec = TASKS[job.task]
    rng = _case_rng(job.seed, spec, 1 if job.split == "training" else 2, job.index)
    case = spec.render(rng, job.site, job.size, job.kind)
    sub = "Tr" if job.split == "training" else "Ext"
    image_rel, label_rel = _write_case(Path(job.root), sub, job.case_id, case, job.task, job.site.name)
    return _case_meta(case, job.site, job.split, image_rel, label_rel, job.kind)


def generate_dataset(
    task: str,
    out: str | Path,
    num_cases: int = 32,
    num_external: int = 8,
    size: int = 96,
    seed: int = 0,
    *,
    n_jobs: int = 1,
) -> Path:
    """Generate a phantom dataset for ``task`` ("spleen_ct" or "prostate_mr") under ``out``; returns ``out``.

    ``num_cases`` training cases spread over three acquisition sites (about one in six atypical),
    ``num_external`` cases from a fourth, unseen site, on grids of about ``size`` voxels per axis.
    The same arguments give byte-identical files, whatever ``n_jobs`` (processes rendering cases in
    parallel). Raises :class:`InputError` for bad arguments or when ``out`` is an existing file.
    """
    spec = _check_args(task, num_cases, num_external, size, seed, n_jobs)
    root = ensure_dir(out)
    assign_rng = np.random.default_rng([seed, spec.key, 0, num_cases])
    sites = assign_sites(spec.sites, num_cases, assign_rng)
    kinds = assign_atypical(spec.atypical, num_cases, assign_rng)
    k = max(2, min(MAX_FOLDS, num_cases))
    folds = _folds(sites, k)

    jobs = [_Job(task, seed, str(root), "training", i, f"{spec.prefix}_{i:03d}", site, kind, size)
            for i, (site, kind) in enumerate(zip(sites, kinds))]
    jobs += [_Job(task, seed, str(root), "external", i, f"{spec.prefix}_ext_{i:03d}", spec.external, None, size)
             for i in range(num_external)]
    if n_jobs > 1 and len(jobs) > 1:
        # Fresh worker processes: forking a parent that runs BLAS/OpenMP threads (torch) can deadlock.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs)), mp_context=ctx) as pool:
            results = list(pool.map(_make_case, jobs))
    else:
        results = [_make_case(job) for job in jobs]

    meta_cases: dict[str, dict[str, Any]] = {}
    training, dlist, external = [], [], []
    for job, meta in zip(jobs, results):
        if job.split == "training":
            fold = folds[job.index]
            training.append({"image": f"./{meta['image']}", "label": f"./{meta['label']}"})
            dlist.append({"image": meta["image"], "label": meta["label"], "fold": fold})
            meta = {**meta, "fold": fold}
        else:
            external.append({"image": meta["image"], "label": meta["label"]})
        meta_cases[job.case_id] = meta

    write_json(root / "dataset.json", {
        "name": spec.name,
        "description": spec.description,
        "reference": "proxy-bundle synthetic phantom (no patient data)",
        "licence": "CC0-1.0",
        "release": f"generator {GENERATOR_VERSION}",
        "tensorImageSize": "3D",
        "modality": spec.modality,
        "labels": spec.labels,
        "numTraining": num_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    })
    write_json(root / "datalist.json", {"training": dlist})
    if external:  # no external.json at all rather than an empty held-out set, which every reader would refuse
        write_json(root / "external.json", {
            "name": f"{spec.name}External",
            "site": spec.external.name,
            "description": spec.external.description,
            "testing": external,
        })
    write_json(root / "phantom_meta.json", {
        "task": task,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "num_cases": num_cases,
        "num_external": num_external,
        "num_folds": k,
        "sites": {s.name: s.to_json() for s in spec.sites},
        "external_site": spec.external.to_json(),
        "cases": meta_cases,
    })
    return root


def phantoms(
    task: PhantomTask, out: str, num_cases: int = 32, num_external: int = 8, size: int = 96, seed: int = 0, n_jobs: int = 1
) -> None:
    """Generate a multi-site phantom dataset in Medical Segmentation Decathlon layout.

    Writes dataset.json, datalist.json (Auto3DSeg, with folds), external.json (unseen site),
    phantom_meta.json and NIfTI images/labels under OUT.

    Args:
        task: "spleen_ct" (abdominal CT, label 1 spleen) or "prostate_mr" (T2 MR, labels 1 PZ, 2 TZ).
        out: output directory (created; existing phantom files in it are overwritten).
        num_cases: number of training cases (>= 2), spread over three acquisition sites.
        num_external: number of cases from the unseen external site (>= 0).
        size: approximate voxels per axis (16-512; thick-slice cases have fewer slices).
        seed: random seed; the same arguments give byte-identical files.
        n_jobs: processes rendering cases in parallel (the files do not depend on it).
    """
    start = time.perf_counter()
    root = generate_dataset(task, out, num_cases=num_cases, num_external=num_external, size=size, seed=seed,
                            n_jobs=n_jobs)
    meta = json.loads((root / "phantom_meta.json").read_text())
    cases = [c for c in meta["cases"].values() if c["split"] == "training"]
    n_sites = len({c["site"] for c in cases})
    n_atyp = sum(c["atypical"] for c in cases)
    print(
        f"phantoms: {task}: {num_cases} training cases ({n_sites} sites, {n_atyp} atypical, "
        f"{meta['num_folds']} folds) + {num_external} external ({meta['external_site']['name']}) "
        f"at size {size} -> {root} in {time.perf_counter() - start:.1f} s"
    )
