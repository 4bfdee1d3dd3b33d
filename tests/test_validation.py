"""Input validation: one test per kind of bad input, on tiny synthetic NIfTI files (8^3)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from proxy_bundle import atomic
from proxy_bundle.errors import InputError
from proxy_bundle.validation import (
    CaseInfo,
    check_case,
    declared_labels,
    load_datalist,
    load_decathlon,
    read_json,
    resolve,
    validate,
)

REPO = Path(__file__).resolve().parents[1]
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def _image(shape=(8, 8, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(40.0, 10.0, shape).astype(np.float32)


def _label(shape=(8, 8, 8), value=1) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    lab[2:6, 2:6, 2:6] = value
    return lab


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _dataset(root: Path, n: int = 4, folds: int = 2) -> Path:
    """An MSD-layout dataset with an Auto3DSeg datalist.json and a dataset.json; returns the datalist."""
    training = []
    for i in range(n):
        name = f"case_{i:03d}.nii.gz"
        _save(root / "imagesTr" / name, _image(seed=i))
        _save(root / "labelsTr" / name, _label())
        training.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}", "fold": i % folds})
    (root / "datalist.json").write_text(json.dumps({"training": training}, indent=2))
    decathlon = {
        "name": "Synthetic",
        "description": "",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "organ"},
        "numTraining": n,
        "training": [{"image": "./" + e["image"], "label": "./" + e["label"]} for e in training],
    }
    (root / "dataset.json").write_text(json.dumps(decathlon, indent=2))
    return root / "datalist.json"


def _edit(path: Path, fn) -> Path:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def case(tmp_path: Path) -> tuple[Path, Path]:
    return _save(tmp_path / "img.nii.gz", _image()), _save(tmp_path / "lab.nii.gz", _label())


# ---------------------------------------------------------------------------------------- valid input


def test_valid_case_reports_geometry_and_labels(case):
    img, lab = case
    info = check_case(img, lab, labels=[0, 1], require_foreground=True)
    assert isinstance(info, CaseInfo)
    assert info.case == "img.nii.gz"
    assert info.shape == (8, 8, 8) and info.channels == 1
    assert info.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert info.label_values == (0, 1)
    np.testing.assert_allclose(info.affine, AFFINE)


def test_valid_datalist_and_decathlon_are_returned_unchanged(tmp_path):
    dl = _dataset(tmp_path)
    data = load_datalist(dl, require_folds=True)
    assert data == json.loads(dl.read_text())
    assert data["training"][0]["image"] == "imagesTr/case_000.nii.gz"  # not rewritten
    ds = load_decathlon(tmp_path / "dataset.json")
    assert declared_labels(ds) == [0, 1]


def test_resolve_joins_relative_and_keeps_absolute(tmp_path):
    assert resolve("imagesTr/a.nii.gz", tmp_path) == tmp_path / "imagesTr" / "a.nii.gz"
    assert resolve(str(tmp_path / "x.nii.gz"), "/elsewhere") == tmp_path / "x.nii.gz"


def test_explicit_dataroot(tmp_path):
    _dataset(tmp_path / "data")
    moved = tmp_path / "lists" / "dl.json"
    moved.parent.mkdir()
    moved.write_text((tmp_path / "data" / "datalist.json").read_text())
    with pytest.raises(InputError, match="not found"):
        load_datalist(moved)  # relative to the datalist's own folder by default
    assert len(load_datalist(moved, tmp_path / "data")["training"]) == 4


# ---------------------------------------------------------------------------------------- JSON files


def test_missing_json_file(tmp_path):
    with pytest.raises(InputError, match="file not found") as err:
        read_json(tmp_path / "nope.json")
    assert err.value.where == str(tmp_path / "nope.json")


def test_json_syntax_error_names_line_and_column(tmp_path):
    p = tmp_path / "datalist.json"
    p.write_text('{\n  "training": [\n    {"image": "a.nii.gz" "label": "b.nii.gz"}\n  ]\n}\n')
    with pytest.raises(InputError, match=r"invalid JSON at line 3:26") as err:
        load_datalist(p)
    assert str(p) in str(err.value)


def test_missing_training_key(tmp_path):
    dl = _edit(_dataset(tmp_path), lambda d: d.update(train=d.pop("training")))
    with pytest.raises(InputError, match="missing key 'training'"):
        load_datalist(dl)


def test_missing_label_key(tmp_path):
    dl = _edit(_dataset(tmp_path), lambda d: d["training"][2].pop("label"))
    with pytest.raises(InputError, match=r"training\[2\] is missing key 'label'"):
        load_datalist(dl)
    assert load_datalist(dl, require_labels=False)["training"][2].get("label") is None


def test_missing_image_key(tmp_path):
    dl = _edit(_dataset(tmp_path), lambda d: d["training"][1].pop("image"))
    with pytest.raises(InputError, match=r"training\[1\] is missing key 'image'"):
        load_datalist(dl)


def test_decathlon_missing_key_and_count_mismatch(tmp_path):
    _dataset(tmp_path)
    ds = _edit(tmp_path / "dataset.json", lambda d: d.pop("modality"))
    with pytest.raises(InputError, match="missing key 'modality'"):
        load_decathlon(ds)
    _edit(ds, lambda d: d.update(modality={"0": "CT"}, numTraining=5))
    with pytest.raises(InputError, match="numTraining is 5 but 'training' lists 4 entries"):
        load_decathlon(ds)


def test_missing_file_in_datalist(tmp_path):
    dl = _dataset(tmp_path)
    (tmp_path / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"training\[1\] label file not found: labelsTr/case_001.nii.gz"):
        load_datalist(dl)
    load_datalist(dl, check_files=False)
    with pytest.raises(InputError, match="label file not found"):
        load_decathlon(tmp_path / "dataset.json")


def test_missing_image_file_in_check_case(tmp_path):
    with pytest.raises(InputError, match="image file not found") as err:
        check_case(tmp_path / "gone.nii.gz", case="imagesTr/gone.nii.gz")
    assert err.value.where == "imagesTr/gone.nii.gz"


def test_duplicate_entries(tmp_path):
    # The same file spelled differently ("./x" vs "x") is still a duplicate.
    again = {"image": "./imagesTr/case_000.nii.gz", "label": "labelsTr/case_001.nii.gz", "fold": 1}
    dl = _edit(_dataset(tmp_path), lambda d: d["training"].append(again))
    with pytest.raises(InputError, match=r"duplicate entry: training\[4\] and training\[0\]"):
        load_datalist(dl)


def test_duplicate_across_training_and_testing(tmp_path):
    dl = _edit(_dataset(tmp_path), lambda d: d.update(testing=[{"image": "imagesTr/case_003.nii.gz"}]))
    with pytest.raises(InputError, match=r"duplicate entry: testing\[0\] and training\[3\]"):
        load_datalist(dl)


def test_non_contiguous_folds(tmp_path):
    dl = _edit(_dataset(tmp_path, folds=2), lambda d: [e.update(fold=2 * e["fold"]) for e in d["training"]])
    with pytest.raises(InputError, match=r"folds are not contiguous: found \[0, 2\].*missing \[1\]"):
        load_datalist(dl)


def test_folds_on_some_entries_only(tmp_path):
    dl = _edit(_dataset(tmp_path), lambda d: d["training"][3].pop("fold"))
    with pytest.raises(InputError, match=r"training\[3\] has no 'fold' key"):
        load_datalist(dl)


def test_required_folds_absent(tmp_path):
    dl = _edit(_dataset(tmp_path), lambda d: [e.pop("fold") for e in d["training"]])
    assert load_datalist(dl)  # folds are optional by default
    with pytest.raises(InputError, match="no 'fold' key"):
        load_datalist(dl, require_folds=True)


# ---------------------------------------------------------------------------------------- NIfTI files


def test_shape_mismatch(tmp_path):
    img = _save(tmp_path / "img.nii.gz", _image())
    lab = _save(tmp_path / "lab.nii.gz", _label(shape=(8, 8, 6)))
    with pytest.raises(InputError, match=r"image/label shape mismatch: image \(8, 8, 8\), label \(8, 8, 6\)") as err:
        check_case(img, lab, case="imagesTr/case_007.nii.gz")
    assert str(err.value).startswith("imagesTr/case_007.nii.gz: ")


def test_affine_mismatch(tmp_path):
    img = _save(tmp_path / "img.nii.gz", _image())
    shifted = AFFINE.copy()
    shifted[0, 3] = 1.5
    lab = _save(tmp_path / "lab.nii.gz", _label(), shifted)
    with pytest.raises(InputError, match=r"image/label affine mismatch \(max difference 1.5"):
        check_case(img, lab)
    # float32 round-off between tools is not a misalignment
    nudged = AFFINE.copy()
    nudged[0, 0] += 1e-6
    assert check_case(img, _save(tmp_path / "lab2.nii.gz", _label(), nudged)).label_values == (0, 1)


def test_non_integer_label_values(tmp_path):
    img = _save(tmp_path / "img.nii.gz", _image())
    lab = _label().astype(np.float32)
    lab[3, 3, 3] = 0.5
    with pytest.raises(InputError, match=r"label has non-integer values \(e.g. 0.5 in float32\)"):
        check_case(img, _save(tmp_path / "lab.nii.gz", lab))
    # integer-valued floats are fine (many tools save labels as float32)
    assert check_case(img, _save(tmp_path / "ok.nii.gz", _label().astype(np.float32))).label_values == (0, 1)


def test_labels_outside_declared_set(tmp_path):
    img = _save(tmp_path / "img.nii.gz", _image())
    lab = _label()
    lab[0, 0, 0] = 3
    path = _save(tmp_path / "lab.nii.gz", lab)
    with pytest.raises(InputError, match=r"label values \[3\] are outside the declared labels \[0, 1, 2\]"):
        check_case(img, path, labels=[1, 2])
    assert check_case(img, path, labels="0,1,2,3").label_values == (0, 1, 3)


def test_negative_label_values(tmp_path):
    img = _save(tmp_path / "img.nii.gz", _image())
    lab = _label().astype(np.int16)
    lab[0, 0, 0] = -1
    with pytest.raises(InputError, match="negative values"):
        check_case(img, _save(tmp_path / "lab.nii.gz", lab))


def test_empty_foreground(tmp_path):
    img = _save(tmp_path / "img.nii.gz", _image())
    lab = _save(tmp_path / "lab.nii.gz", np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(InputError, match="label has no foreground"):
        check_case(img, lab, require_foreground=True)
    assert check_case(img, lab).label_values == (0,)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_intensities(tmp_path, bad):
    arr = _image()
    arr[1, 2, 3] = bad
    img = _save(tmp_path / "img.nii.gz", arr)
    with pytest.raises(InputError, match=r"image contains NaN/Inf intensities \(1 voxels\)") as err:
        check_case(img, case="imagesTr/case_003.nii.gz")
    assert str(err.value) == "imagesTr/case_003.nii.gz: image contains NaN/Inf intensities (1 voxels)"


def test_4d_image(tmp_path):
    img = _save(tmp_path / "img.nii.gz", _image(shape=(8, 8, 8, 3)))
    with pytest.raises(InputError, match=r"image is 4D with shape \(8, 8, 8, 3\), expected 3D"):
        check_case(img)
    # a trailing singleton dimension is a 3D volume; a multi-modal image is fine when channels are expected
    assert check_case(_save(tmp_path / "one.nii.gz", _image(shape=(8, 8, 8, 1)))).shape == (8, 8, 8)
    assert check_case(img, channels=3).channels == 3
    with pytest.raises(InputError, match="expected 3D or 4D with 2 channels"):
        check_case(img, channels=2)


def test_2d_image(tmp_path):
    with pytest.raises(InputError, match="image is 2D"):
        check_case(_save(tmp_path / "img.nii.gz", _image(shape=(8, 8))))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "plain_truncated"])
def test_corrupt_nifti(tmp_path, damage):
    good = _save(tmp_path / "good.nii.gz", _image()).read_bytes()
    if damage == "truncated":
        bad = tmp_path / "bad.nii.gz"
        bad.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        bad = tmp_path / "bad.nii.gz"
        bad.write_bytes(b"not a nifti file at all" * 10)
    else:
        bad = tmp_path / "bad.nii"
        bad.write_bytes(gzip.decompress(good)[:400])
    with pytest.raises(InputError, match=r"cannot read image bad\.nii") as err:
        check_case(bad, case="imagesTr/bad")
    assert "\n" not in str(err.value)
    assert err.value.where == "imagesTr/bad"


def test_corrupt_label(tmp_path, case):
    img, _ = case
    bad = tmp_path / "badlab.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\x00" * 50)
    with pytest.raises(InputError, match=r"cannot read label badlab\.nii\.gz"):
        check_case(img, bad)


# ---------------------------------------------------------------------------------------- outputs


def test_output_directory_is_an_existing_file(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a directory")
    with pytest.raises(InputError, match="output directory is an existing file") as err:
        atomic.ensure_dir(blocker)
    assert err.value.where == str(blocker)
    with pytest.raises(InputError, match="existing file"):
        atomic.write_json(blocker / "summary.json", {"a": 1})


def test_atomic_write_leaves_no_partial_file(tmp_path):
    dest = tmp_path / "out" / "scores.json"
    atomic.write_json(dest, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(dest) as tmp:
            tmp.write_text('{"version": 2, "sco')  # half of the new content ...
            raise RuntimeError("writer died midway")  # ... then the writer fails
    assert json.loads(dest.read_text()) == {"version": 1}  # old file intact
    assert sorted(p.name for p in dest.parent.iterdir()) == ["scores.json"]  # no temp file left

    fresh = tmp_path / "out" / "new.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(fresh) as tmp:
            assert tmp.name.endswith(".nii.gz")  # same suffixes, so writers pick the right format
            raise RuntimeError("boom")
    assert not fresh.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["scores.json"]


# ---------------------------------------------------------------------------------------- validate()


def test_validate_datalist_uses_sibling_dataset_labels(tmp_path, capsys):
    dl = _dataset(tmp_path)
    validate(str(dl))
    out = capsys.readouterr().out
    assert out.startswith("ok: 4 cases (4 training; 4 labelled)")
    assert "label values found: [0, 1]" in out and "dataset.json" in out
    # labels declared by the dataset.json apply to the datalist's cases
    _save(tmp_path / "labelsTr" / "case_002.nii.gz", _label(value=2))
    with pytest.raises(InputError, match=r"^imagesTr/case_002\.nii\.gz: label values \[2\] are outside"):
        validate(str(dl))
    validate(str(dl), labels="0,1,2")


def test_validate_decathlon_and_testing_only_lists(tmp_path, capsys):
    _dataset(tmp_path)
    validate(str(tmp_path / "dataset.json"))
    assert capsys.readouterr().out.startswith("ok: 4 cases")
    ext = tmp_path / "external.json"
    entry = {"image": "imagesTr/case_000.nii.gz", "label": "labelsTr/case_000.nii.gz"}
    ext.write_text(json.dumps({"name": "x", "site": "y", "testing": [entry]}))
    validate(str(ext))
    assert capsys.readouterr().out.startswith("ok: 1 cases (1 testing; 1 labelled)")


def test_validate_empty_foreground_switch(tmp_path):
    dl = _dataset(tmp_path)
    _save(tmp_path / "labelsTr" / "case_001.nii.gz", np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(InputError, match=r"^imagesTr/case_001\.nii\.gz: label has no foreground"):
        validate(str(dl))
    validate(str(dl), require_foreground=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "proxy_bundle", "validate", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def test_cli_ok_and_bad_case(tmp_path):
    dl = _dataset(tmp_path)
    ok = _cli("--datalist", str(dl))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: 4 cases")

    arr = _image(seed=3)
    arr[0, 0, 0] = np.nan
    _save(tmp_path / "imagesTr" / "case_003.nii.gz", arr)
    bad = _cli("--datalist", str(dl))
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "error: imagesTr/case_003.nii.gz: image contains NaN/Inf intensities (1 voxels)"
    ]


def test_cli_json_syntax_error(tmp_path):
    p = tmp_path / "datalist.json"
    p.write_text('{"training": [}')
    res = _cli("--datalist", str(p))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {p}: invalid JSON at line 1:15")


def test_multichannel_entries(tmp_path, capsys):
    # Auto3DSeg allows one file per channel; each must be 3D and share the first channel's geometry.
    for c in ("t2", "adc"):
        _save(tmp_path / f"{c}.nii.gz", _image())
    _save(tmp_path / "lab.nii.gz", _label())
    entry = {"image": ["t2.nii.gz", "adc.nii.gz"], "label": "lab.nii.gz"}
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"training": [entry]}))
    validate(str(dl))
    assert capsys.readouterr().out.startswith("ok: 1 cases")
    info = check_case([tmp_path / "t2.nii.gz", tmp_path / "adc.nii.gz"], tmp_path / "lab.nii.gz")
    assert info.channels == 2 and info.case == "t2.nii.gz"
    _save(tmp_path / "adc.nii.gz", _image(shape=(8, 8, 7)))
    with pytest.raises(InputError, match=r"^t2\.nii\.gz: channel file adc\.nii\.gz does not match"):
        validate(str(dl))


def test_validation_section_is_checked(tmp_path):
    dl = _dataset(tmp_path)
    # an image in both training and validation is a validation case, as in AutoRunner
    _edit(dl, lambda d: d.update(validation=[{"image": "imagesTr/case_001.nii.gz", "label": "labelsTr/case_001.nii.gz"}]))
    load_datalist(dl)
    _edit(dl, lambda d: d["validation"].append(dict(d["validation"][0])))
    with pytest.raises(InputError, match=r"duplicate entry: validation\[1\] and validation\[0\]"):
        load_datalist(dl)
    _edit(dl, lambda d: d["validation"].pop())
    _edit(dl, lambda d: d.update(validation=[d["training"].pop(1)]) or d["validation"][0].pop("label"))
    with pytest.raises(InputError, match=r"validation\[0\] is missing key 'label'"):
        load_datalist(dl)


def test_validate_rejects_non_object_json(tmp_path):
    p = tmp_path / "datalist.json"
    p.write_text("[1, 2]")
    with pytest.raises(InputError, match="a datalist must be a JSON object, got list"):
        validate(str(p))
