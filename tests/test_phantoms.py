"""Phantom datasets: MSD layout, NIfTI geometry, tissue intensities, site heterogeneity, determinism, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from proxy_bundle.errors import InputError
from proxy_bundle.phantoms import spleen_ct
from proxy_bundle.phantoms.generate import generate_dataset
from proxy_bundle.phantoms.sites import PROSTATE_ATYPICAL, SPLEEN_ATYPICAL, SPLEEN_SITES
from proxy_bundle.phantoms.spleen_ct import PHASE_HU

REPO = Path(__file__).resolve().parents[1]
TASKS = ("spleen_ct", "prostate_mr")


@pytest.fixture(params=TASKS)
def phantom(request: pytest.FixtureRequest) -> tuple[str, Path]:
    fixture = {"spleen_ct": "spleen_phantom", "prostate_mr": "prostate_phantom"}[request.param]
    return request.param, request.getfixturevalue(fixture)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _cases(root: Path) -> dict[str, dict]:
    return _json(root / "phantom_meta.json")["cases"]


def _load(root: Path, rel: str) -> nib.Nifti1Image:
    return nib.load(str(root / rel))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_json_schema(phantom: tuple[str, Path]) -> None:
    task, root = phantom
    ds = _json(root / "dataset.json")
    for key in ("name", "description", "modality", "labels", "numTraining", "training"):
        assert key in ds, key
    assert ds["modality"] == ({"0": "CT"} if task == "spleen_ct" else {"0": "T2"})
    assert ds["labels"] == (
        {"0": "background", "1": "spleen"}
        if task == "spleen_ct"
        else {"0": "background", "1": "peripheral zone", "2": "transition zone"}
    )
    assert ds["numTraining"] == len(ds["training"]) == 8
    for e in ds["training"]:
        assert e["image"].startswith("./imagesTr/") and e["label"].startswith("./labelsTr/")
        assert (root / e["image"]).is_file() and (root / e["label"]).is_file()

    dl = _json(root / "datalist.json")
    assert [e["image"] for e in dl["training"]] == [e["image"][2:] for e in ds["training"]]
    folds = [e["fold"] for e in dl["training"]]
    assert all(isinstance(f, int) for f in folds)
    assert sorted(set(folds)) == list(range(5))
    for e in dl["training"]:
        assert not os.path.isabs(e["image"]) and (root / e["image"]).is_file() and (root / e["label"]).is_file()

    ext = _json(root / "external.json")
    assert set(ext) >= {"name", "site", "testing"} and len(ext["testing"]) == 2
    for e in ext["testing"]:
        assert e["image"].startswith("imagesExt/") and e["label"].startswith("labelsExt/")
        assert (root / e["image"]).is_file() and (root / e["label"]).is_file()

    meta = _json(root / "phantom_meta.json")
    assert meta["task"] == task and meta["seed"] == 0 and meta["size"] == 32
    cases = meta["cases"]
    assert len(cases) == 10
    for c in cases.values():
        assert {"image", "label", "split", "site", "spacing", "shape", "atypical"} <= set(c)
    assert {c["image"] for c in cases.values() if c["split"] == "training"} == {e["image"] for e in dl["training"]}
    assert {c["site"] for c in cases.values() if c["split"] == "external"} == {ext["site"]}
    assert not list(root.rglob(".*tmp*")), "temporary files left behind"


def test_nifti_geometry_dtypes_and_labels(phantom: tuple[str, Path]) -> None:
    task, root = phantom
    declared = {int(k) for k in _json(root / "dataset.json")["labels"]}
    for name, c in _cases(root).items():
        img, lab = _load(root, c["image"]), _load(root, c["label"])
        for im in (img, lab):
            assert np.allclose(im.affine[:3, :3], np.diag(c["spacing"]), atol=1e-5), name
            assert nib.aff2axcodes(im.affine) == ("R", "A", "S")
            assert list(im.shape) == c["shape"] and im.header.get_xyzt_units()[0] == "mm"
        assert np.allclose(img.header.get_zooms(), c["spacing"], atol=1e-5)
        assert np.allclose(img.affine, lab.affine)
        assert lab.get_data_dtype() == np.uint8
        assert img.get_data_dtype() == (np.int16 if task == "spleen_ct" else np.dtype(c["dtype"]))
        values = set(np.unique(np.asarray(lab.dataobj)).tolist())
        assert values == declared, f"{name}: label values {values}"
        # Every case is a plausible small volume: about 32 voxels in-plane, fewer slices when thick.
        assert 20 <= c["shape"][0] <= 48 and c["shape"][0] == c["shape"][1] and 8 <= c["shape"][2] <= 40


def test_ct_hounsfield_ranges(spleen_phantom: Path) -> None:
    for name, c in _cases(spleen_phantom).items():
        hu = np.asarray(_load(spleen_phantom, c["image"]).dataobj).astype(float)
        lab = np.asarray(_load(spleen_phantom, c["label"]).dataobj) > 0
        assert -1024 <= hu.min() and hu.max() <= 3071
        corners = hu[:2, :2, :].ravel()
        assert abs(np.median(corners) + 1000) < 40, f"{name}: air {np.median(corners)}"
        fat = ((hu > -160) & (hu < -40)).mean()
        assert fat > 0.03, f"{name}: too little fat ({fat:.3f})"
        assert hu.max() > 400, f"{name}: no bone"
        soft = ((hu > 20) & (hu < 60)).mean()
        assert soft > 0.01, f"{name}: no soft tissue"
        # The rendered spleen matches its calibrated value (its rim is pulled down by partial volume).
        spleen, target = np.percentile(hu[lab], 75), c["hu"]["spleen"]
        assert target - 30 < spleen < target + 30, f"{name}: spleen {spleen} HU, calibrated {target}"
        if c.get("atypical_kind") == "non_contrast":
            assert 30 < target < 70, f"{name}: non-contrast spleen {target}"
        else:
            assert 80 < target < 170, f"{name}: contrast-enhanced spleen {target}"
            assert c["hu"]["spleen"] > PHASE_HU["native"]["spleen"] + 25
        # Not separable by intensity alone: plenty of non-spleen voxels share the spleen's HU window.
        window = (hu > np.percentile(hu[lab], 25)) & (hu < np.percentile(hu[lab], 75))
        assert (window & ~lab).sum() > (window & lab).sum(), name


def test_mr_contrast_and_scale(prostate_phantom: Path) -> None:
    medians = {}
    for name, c in _cases(prostate_phantom).items():
        img = np.asarray(_load(prostate_phantom, c["image"]).dataobj).astype(float)
        lab = np.asarray(_load(prostate_phantom, c["label"]).dataobj)
        assert img.min() >= 0 and np.isfinite(img).all()
        if c.get("atypical_kind") != "low_contrast":
            assert np.median(img[lab == 1]) > np.median(img[lab == 2]), f"{name}: PZ not brighter than TZ on T2"
        medians.setdefault(c["site"], []).append(np.median(img))
        assert 0.5 <= c["spacing"][0] <= 0.8 and 3.0 <= c["spacing"][2] <= 4.0
    scale = sorted(np.median(v) for v in medians.values())
    assert scale[-1] / scale[0] > 100, "sites should not share an intensity scale"


def test_sites_are_heterogeneous(spleen_phantom: Path) -> None:
    cases = [c for c in _cases(spleen_phantom).values() if c["split"] == "training"]
    by_site: dict[str, list[dict]] = {}
    for c in cases:
        by_site.setdefault(c["site"], []).append(c)
    assert len(by_site) >= 3
    # Resolution: slice thickness ranges of the sites do not overlap.
    spans = sorted((min(c["spacing"][2] for c in v), max(c["spacing"][2] for c in v)) for v in by_site.values())
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
    # Noise: measured in air outside the body, sites differ clearly.
    noise = {}
    for site, v in by_site.items():
        hu = np.asarray(_load(spleen_phantom, v[0]["image"]).dataobj).astype(float)
        noise[site] = hu[:3, :3, :][hu[:3, :3, :] > -1024].std()
    assert max(noise.values()) > 1.8 * min(noise.values()), noise


def test_external_site_is_shifted(spleen_phantom: Path, prostate_phantom: Path) -> None:
    for root in (spleen_phantom, prostate_phantom):
        cases = _cases(root).values()
        train = [c for c in cases if c["split"] == "training"]
        ext = [c for c in cases if c["split"] == "external"]
        assert ext and not {c["site"] for c in ext} & {c["site"] for c in train}
        assert min(c["spacing"][0] for c in ext) > max(c["spacing"][0] for c in train) or min(
            c["spacing"][0] for c in train
        ) > max(c["spacing"][0] for c in ext)
    ext = [c for c in _cases(prostate_phantom).values() if c["split"] == "external"]
    img = np.asarray(_load(prostate_phantom, ext[0]["image"]).dataobj)
    assert img.dtype == np.float32 and np.median(img) > 1000


def test_atypical_cases() -> None:
    from proxy_bundle.phantoms.generate import TASKS as SPECS
    from proxy_bundle.phantoms.sites import assign_atypical

    kinds = assign_atypical(SPLEEN_ATYPICAL, 32, np.random.default_rng(0))
    assert 4 <= sum(k is not None for k in kinds) <= 8 and len({k for k in kinds if k}) >= 4
    assert set(SPECS["prostate_mr"].atypical) == set(PROSTATE_ATYPICAL)
    normal = spleen_ct.render(np.random.default_rng(7), SPLEEN_SITES[0], 32)
    tiny = spleen_ct.render(np.random.default_rng(7), SPLEEN_SITES[0], 32, "tiny_spleen")
    assert 0 < tiny.label.sum() < 0.4 * normal.label.sum()
    native = spleen_ct.render(np.random.default_rng(7), SPLEEN_SITES[0], 32, "non_contrast")
    assert np.median(native.image[native.label > 0]) < np.median(normal.image[normal.label > 0]) - 40


def test_deterministic_byte_identical(spleen_phantom: Path, tmp_path: Path) -> None:
    again = generate_dataset("spleen_ct", tmp_path / "again", num_cases=8, num_external=2, size=32, seed=0)
    assert _digest(again) == _digest(spleen_phantom)
    a = generate_dataset("prostate_mr", tmp_path / "a", num_cases=2, num_external=1, size=16, seed=3)
    b = generate_dataset("prostate_mr", tmp_path / "b", num_cases=2, num_external=1, size=16, seed=3)
    c = generate_dataset("prostate_mr", tmp_path / "c", num_cases=2, num_external=1, size=16, seed=4)
    assert _digest(a) == _digest(b)
    parallel = generate_dataset("prostate_mr", tmp_path / "p", num_cases=2, num_external=1, size=16, seed=3, n_jobs=2)
    assert _digest(parallel) == _digest(a)
    assert _digest(a)["imagesTr/prostate_000.nii.gz"] != _digest(c)["imagesTr/prostate_000.nii.gz"]


def test_monai_data_analyzer_runs(spleen_phantom: Path, prostate_phantom: Path, tmp_path: Path) -> None:
    from monai.apps.auto3dseg import DataAnalyzer

    for root, labels in ((spleen_phantom, [0, 1]), (prostate_phantom, [0, 1, 2])):
        out = tmp_path / f"{root.name}_datastats.yaml"
        da = DataAnalyzer(str(root / "datalist.json"), str(root), output_path=str(out), device="cpu", worker=0)
        stats = da.get_all_case_stats()
        assert out.is_file()
        summary = stats["stats_summary"]
        assert summary["n_cases"] == 8
        assert summary["label_stats"]["labels"] == labels


@pytest.mark.parametrize(
    "kwargs, where",
    [
        ({"task": "liver_ct"}, "--task"),
        ({"task": 3}, "--task"),
        ({"num_cases": 1}, "--num_cases"),
        ({"num_external": -1}, "--num_external"),
        ({"size": 8}, "--size"),
        ({"size": "big"}, "--size"),
        ({"seed": True}, "--seed"),
        ({"n_jobs": 0}, "--n_jobs"),
    ],
)
def test_bad_arguments(kwargs: dict, where: str, tmp_path: Path) -> None:
    args = {"task": "spleen_ct", "out": tmp_path / "out", "num_cases": 2, "num_external": 0, "size": 16, **kwargs}
    with pytest.raises(InputError, match=f"^{where}: "):
        generate_dataset(**args)
    assert not (tmp_path / "out").exists()


def test_out_is_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.write_text("x")
    with pytest.raises(InputError, match="existing file"):
        generate_dataset("spleen_ct", target, num_cases=2, num_external=0, size=16)


def test_no_external_site_writes_no_external_json(tmp_path: Path) -> None:
    """An empty held-out list would be refused by every reader: without external cases there is no file."""
    root = generate_dataset("spleen_ct", tmp_path / "d", num_cases=2, num_external=0, size=16)
    assert (root / "datalist.json").is_file() and not (root / "external.json").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "proxy_bundle", "phantoms", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    r = _cli("--task", "prostate_mr", "--out", str(out), "--num_cases", "3", "--num_external", "1", "--size", "16")
    assert r.returncode == 0, r.stderr
    assert "prostate_mr: 3 training cases" in r.stdout
    assert len(_json(out / "datalist.json")["training"]) == 3
    assert sorted({e["fold"] for e in _json(out / "datalist.json")["training"]}) == [0, 1, 2]

    h = _cli("--help")
    assert h.returncode == 0 and "num_external" in h.stdout + h.stderr

    bad = _cli("--task", "liver_ct", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --task: invalid value 'liver_ct'") and "Traceback" not in bad.stderr
