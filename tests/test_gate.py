"""The validation gate through the commands: one kind of bad input per test, on tiny 16^3 data.

Each test runs the real CLI entry point in-process (``proxy_bundle.cli.main``) and asserts the exact one-line
message, exit code 2 and that no output was created; a few run as subprocesses to see the whole console.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from proxy_bundle.cli import main
from proxy_bundle.validation import auto3dseg_folds, check_case, input_fingerprint

REPO = Path(__file__).resolve().parents[1]
N = 16
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(20.0, 5.0, (N, N, N)).astype(np.float32)
    img[_ball()] += 60.0
    return img


def _ball(radius: float = 4.0) -> np.ndarray:
    z, y, x = np.mgrid[:N, :N, :N]
    return (z - N / 2) ** 2 + (y - N / 2) ** 2 + (x - N / 2) ** 2 <= radius**2


def _label(value: float = 1, dtype=np.uint8) -> np.ndarray:
    lab = np.zeros((N, N, N), dtype=dtype)
    lab[_ball()] = value
    return lab


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def make_dataset(root: Path, n: int = 6, *, decathlon: bool = False, form: str = "folds",
                 affine: np.ndarray = AFFINE) -> Path:
    """MSD layout with ``datalist.json`` in one of AutoRunner's forms: ``folds`` | ``validation``; returns it."""
    entries = []
    for i in range(n):
        name = f"case_{i:03d}.nii.gz"
        _save(root / "imagesTr" / name, _image(i), affine)
        _save(root / "labelsTr" / name, _label(), affine)
        entries.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    if form == "folds":
        datalist = {"training": [dict(e, fold=i % 2) for i, e in enumerate(entries)]}
    else:
        datalist = {"training": entries[2:], "validation": entries[:2]}
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    _save(root / "imagesTs" / "ext_000.nii.gz", _image(99), affine)
    _save(root / "labelsTs" / "ext_000.nii.gz", _label(), affine)
    (root / "external.json").write_text(json.dumps(
        {"testing": [{"image": "imagesTs/ext_000.nii.gz", "label": "labelsTs/ext_000.nii.gz"}]}))
    if decathlon:
        (root / "dataset.json").write_text(json.dumps({
            "name": "tiny", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"},
            "numTraining": n, "training": entries}, indent=1))
    return root / "datalist.json"


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def input_yaml(root: Path, dest: Path) -> Path:
    dest.write_text(yaml.safe_dump({"modality": "CT", "dataroot": str(root), "datalist": str(root / "datalist.json")}))
    return dest


def commands(root: Path, tmp: Path) -> dict[str, tuple[list, Path]]:
    """Every command on the dataset at ``root``: (arguments, the output that must not appear)."""
    dl = root / "datalist.json"
    cfg = input_yaml(root, tmp / "input.yaml")
    return {
        "validate": (["validate", "--datalist", dl], tmp / "nothing"),
        "select": (["select", "--datalist", dl, "--count", "2", "--grid", "8", "--out", tmp / "proxy.json",
                    "--progress", "false"], tmp / "proxy.json"),
        "analyze": (["analyze", "--input", cfg, "--work_dir", tmp / "w_analyze", "--count", "2", "--grid", "8",
                     "--progress", "false"], tmp / "w_analyze"),
        "hpo": (["hpo", "--input", root, "--work_dir", tmp / "w_hpo", "--n_trials", "1", "--top_k", "1",
                 "--progress", "false"], tmp / "w_hpo"),
        "study": (["study", "--dataset", root, "--work_dir", tmp / "w_study", "--n_configs", "3",
                   "--progress", "false"], tmp / "w_study"),
    }


def assert_refused(root: Path, tmp: Path, capsys, expected: str, only: tuple[str, ...] | None = None) -> None:
    for name, (args, output) in commands(root, tmp).items():
        if only is not None and name not in only:
            continue
        if name == "study" and not (root / "dataset.json").is_file():
            continue  # a study needs a dataset.json
        code, out, err = cli(args, capsys)
        assert (code, err) == (2, expected + "\n"), (name, out, err)
        assert not output.exists(), name


# ------------------------------------------------------------------------------------------------ kinds
@pytest.mark.parametrize("value,dtype,shown", [(0.9882, np.float32, "0.9882 in float32"),
                                               (0.99999994, np.float32, "0.99999994 in float32"),
                                               (0.9999, np.float64, "0.9999 in float64")])
def test_float_labels_refused_by_every_command(tmp_path, capsys, value, dtype, shown):
    root = tmp_path / "data"
    make_dataset(root, decathlon=True)
    _save(root / "labelsTr" / "case_001.nii.gz", _label(value, dtype))
    expected = (f"error: imagesTr/case_001.nii.gz: label has non-integer values (e.g. {shown}); labels must be "
                "integer class ids: round them and save the label as an integer type (e.g. uint8)")
    only = None if value == 0.9882 else ("validate", "hpo")
    assert_refused(root, tmp_path, capsys, expected, only)


def test_nan_voxels_name_the_case(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root)
    img = _image(2)
    img[3, 4, 5] = np.nan
    _save(root / "imagesTr" / "case_002.nii.gz", img)
    assert_refused(root, tmp_path, capsys,
                   "error: imagesTr/case_002.nii.gz: image contains NaN/Inf intensities (1 voxels)",
                   ("validate", "select", "analyze", "hpo"))


@pytest.mark.parametrize("values,message", [
    ((255,), "label values [0, 255] are not contiguous class ids 0..1 (a network would get 256 output classes): "
             "remap them to 0..1 (255 -> 1)"),
    ((1, 2, 100, 200), "label values [0, 1, 2, 100, 200] are not contiguous class ids 0..4 (a network would get "
                       "201 output classes): remap them to 0..4 (100 -> 3, 200 -> 4)"),
])
def test_non_contiguous_label_set(tmp_path, capsys, values, message):
    root = tmp_path / "data"
    dl = make_dataset(root)
    for i in range(6):
        _save(root / "labelsTr" / f"case_{i:03d}.nii.gz", _label(values[i % len(values)]))
    expected = (f"error: {dl}: {message}, or declare the full label set in the 'labels' of a dataset.json next "
                "to the datalist")
    assert_refused(root, tmp_path, capsys, expected, ("validate", "select", "analyze", "hpo"))


def test_undeclared_label_value(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root, decathlon=True)
    _save(root / "labelsTr" / "case_004.nii.gz", _label(255))
    assert_refused(root, tmp_path, capsys,
                   "error: imagesTr/case_004.nii.gz: label values [255] are outside the declared labels [0, 1]",
                   ("validate", "hpo"))


def test_negative_labels(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root)
    lab = _label().astype(np.int16)
    lab[lab == 0] = -1024
    _save(root / "labelsTr" / "case_000.nii.gz", lab)
    assert_refused(root, tmp_path, capsys,
                   "error: imagesTr/case_000.nii.gz: label has negative values (e.g. -1024); labels must be class "
                   "ids 0..K-1 (is this an image file?)", ("validate", "analyze", "hpo"))


def test_all_intensities_not_positive(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root)
    img = _image(0)
    img[...] = -5.25 - np.abs(img)  # every voxel < 0: DataAnalyzer's foreground (> 0) is empty
    img[0, 0, 0] = 0.0
    _save(root / "imagesTr" / "case_000.nii.gz", img)
    assert_refused(root, tmp_path, capsys,
                   "error: imagesTr/case_000.nii.gz: image has no intensity > 0 (maximum 0); MONAI's "
                   "DataAnalyzer cannot analyse such a case: shift the intensities so that the body is > 0",
                   ("validate", "analyze", "hpo"))


def test_2d_image(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root, decathlon=True)
    _save(root / "imagesTr" / "case_003.nii.gz", _image(3)[:, :, 0])
    assert_refused(root, tmp_path, capsys,
                   "error: imagesTr/case_003.nii.gz: image is 2D with shape (16, 16), expected 3D (2D data are "
                   "not supported: the networks are 3D)", ("validate", "select", "analyze", "hpo", "study"))


def test_4d_label(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root)
    _save(root / "labelsTr" / "case_003.nii.gz", np.stack([_label(), _label()], axis=-1))
    assert_refused(root, tmp_path, capsys,
                   "error: imagesTr/case_003.nii.gz: label is 4D with shape (16, 16, 16, 2), expected 3D",
                   ("validate", "hpo"))


def _patch_header(path: Path, edit) -> None:
    """Edit a written NIfTI header in place (nibabel refuses to write such headers): a broken writer's output."""
    raw = gzip.decompress(path.read_bytes())
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    edit(hdr)
    path.write_bytes(gzip.compress(hdr.binaryblock + raw[len(hdr.binaryblock):]))


def _zero_column(hdr) -> None:
    sform = AFFINE.copy()
    sform[:, 0] = 0.0
    hdr.set_sform(sform, code=2)


def _nan_sform(hdr) -> None:
    sform = AFFINE.copy()
    sform[2, 3] = np.nan
    hdr.set_sform(sform, code=2)


def _nan_pixdim(hdr) -> None:
    hdr["pixdim"][2] = np.nan


@pytest.mark.parametrize("edit,message", [
    (_zero_column, "image affine is singular (voxel size (0.0, 1.5, 2.0) mm)"),
    (_nan_sform, "image affine has non-finite entries (NaN/Inf)"),
    (_nan_pixdim, "image has voxel spacing (1.5, nan, 2) in its header; spacing must be finite and > 0 mm"),
])
def test_bad_spacing(tmp_path, capsys, edit, message):
    root = tmp_path / "data"
    make_dataset(root)
    _patch_header(root / "imagesTr" / "case_001.nii.gz", edit)
    assert_refused(root, tmp_path, capsys, f"error: imagesTr/case_001.nii.gz: {message}", ("validate", "select", "hpo"))


def test_label_on_a_coarser_grid(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root)
    _save(root / "labelsTr" / "case_005.nii.gz", _label()[::2, ::2, ::2], np.diag([3.0, 3.0, 4.0, 1.0]))
    assert_refused(root, tmp_path, capsys,
                   "error: imagesTr/case_005.nii.gz: image/label shape mismatch: image (16, 16, 16), label (8, 8, 8)",
                   ("validate", "analyze", "hpo"))


def test_label_affine_differs(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root)
    shifted = AFFINE.copy()
    shifted[0, 3] = 3.0
    _save(root / "labelsTr" / "case_005.nii.gz", _label(), shifted)
    assert_refused(root, tmp_path, capsys,
                   "error: imagesTr/case_005.nii.gz: image/label affine mismatch (max difference 3 > 0.001)",
                   ("validate", "analyze", "hpo"))


def test_qform_sform_disagree(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root)
    img = nib.Nifti1Image(_image(4), AFFINE)
    sform = AFFINE.copy()
    sform[1, 3] = 5.0
    img.set_qform(AFFINE, code=1)
    img.set_sform(sform, code=1)
    nib.save(img, str(root / "imagesTr" / "case_004.nii.gz"))
    assert_refused(root, tmp_path, capsys,
                   "error: imagesTr/case_004.nii.gz: image qform and sform disagree (max difference 5 > 0.001); "
                   "readers differ on where this volume lies: rewrite the header with one orientation (e.g. set "
                   "qform = sform)", ("validate", "select", "hpo"))


def test_unreadable_file(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root, decathlon=True)
    (root / "imagesTr" / "case_002.nii.gz").write_bytes(b"not a nifti file at all" * 20)
    assert_refused(root, tmp_path, capsys,
                   "error: imagesTr/case_002.nii.gz: cannot read image case_002.nii.gz (ImageFileError: File "
                   f"{root / 'imagesTr' / 'case_002.nii.gz'} is not a gzip file)",
                   ("validate", "select", "analyze", "hpo", "study"))


@pytest.mark.parametrize("bad,good,where", [("fold:", "fold", "training[2] has key 'fold:'"),
                                             ("Label", "label", "training[2] has key 'Label'")])
def test_misspelt_entry_key(tmp_path, capsys, bad, good, where):
    root = tmp_path / "data"
    dl = make_dataset(root, decathlon=True)
    data = json.loads(dl.read_text())
    data["training"][2][bad] = data["training"][2].pop(good)
    dl.write_text(json.dumps(data))
    assert_refused(root, tmp_path, capsys, f"error: {dl}: {where}: did you mean '{good}'?",
                   ("validate", "select", "analyze", "hpo", "study"))


def test_misspelt_top_level_key(tmp_path, capsys):
    root = tmp_path / "data"
    dl = make_dataset(root, form="validation")
    data = json.loads(dl.read_text())
    data["validaton"] = data.pop("validation")
    dl.write_text(json.dumps(data))
    assert_refused(root, tmp_path, capsys, f"error: {dl}: top-level key 'validaton': did you mean 'validation'?",
                   ("validate", "select", "hpo"))


# ------------------------------------------------------------------------------------------------ valid inputs
def test_sub_millimetre_spacing_works(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root, affine=np.diag([0.001, 0.001, 0.001, 1.0]))
    code, out, err = cli(["validate", "--datalist", root / "datalist.json"], capsys)
    assert code == 0 and "spacing (mm): 0.001 x 0.001 x 0.001" in out, err
    code, out, err = cli(["select", "--datalist", root / "datalist.json", "--count", "2", "--grid", "8", "--out",
                          tmp_path / "p.json", "--progress", "false"], capsys)
    assert code == 0, err
    scores = json.loads((tmp_path / "p_scores.json").read_text())
    assert scores["provenance"]["spacing"] == [0.001, 0.001, 0.001]


def test_select_on_dataset_json_keeps_num_training_consistent(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root, decathlon=True)
    code, _, err = cli(["select", "--datalist", root / "dataset.json", "--count", "2", "--grid", "8", "--out",
                        root / "p.json",
                        "--progress", "false"], capsys)
    assert code == 0, err
    out = json.loads((root / "p.json").read_text())
    assert out["numTraining"] == len(out["training"]) == 2
    code, out_text, err = cli(["validate", "--datalist", root / "p.json"], capsys)
    assert code == 0, err


def test_validate_lists_every_problem(tmp_path, capsys):
    root = tmp_path / "data"
    dl = make_dataset(root)
    _save(root / "labelsTr" / "case_001.nii.gz", _label(0.5, np.float32))
    img = _image(3)
    img[0, 0, 0] = np.inf
    _save(root / "imagesTr" / "case_003.nii.gz", img)
    code, out, err = cli(["validate", "--datalist", dl], capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "error: imagesTr/case_001.nii.gz: label has non-integer values (e.g. 0.5 in float32); labels must be "
        "integer class ids: round them and save the label as an integer type (e.g. uint8)",
        "error: imagesTr/case_003.nii.gz: image contains NaN/Inf intensities (1 voxels)",
        f"error: {dl}: 2 problems found (listed above)",
    ]
    code, out, err = cli(["validate", "--datalist", dl, "--max_problems", "1"], capsys)
    assert code == 2 and len(err.splitlines()) == 1


def test_testing_may_reuse_validation_images(tmp_path, capsys):
    root = tmp_path / "data"
    dl = make_dataset(root, form="validation")
    data = json.loads(dl.read_text())
    data["testing"] = [{"image": data["validation"][0]["image"]}]
    dl.write_text(json.dumps(data))
    code, out, err = cli(["validate", "--datalist", dl], capsys)
    assert code == 0, err
    # ... but not images that are trained on
    data["testing"] = [{"image": data["training"][0]["image"]}]
    dl.write_text(json.dumps(data))
    code, out, err = cli(["validate", "--datalist", dl], capsys)
    assert code == 2 and "a testing case must not be trained on" in err


def test_auto3dseg_folds_follow_autorunner():
    train = [{"image": f"i{k}", "label": f"l{k}"} for k in range(4)]
    val = [{"image": "i9", "label": "l9"}, {"image": "i1", "label": "l1"}]
    out = auto3dseg_folds({"training": train, "validation": val})
    # AutoRunner.inspect_datalist_folds: training fold 1, validation fold 0 appended; a shared label is fold 0 once
    assert [(e["image"], e["fold"]) for e in out["training"]] == [("i0", 1), ("i1", 0), ("i2", 1), ("i3", 1),
                                                                   ("i9", 0)]
    # no folds, no validation: KFold(5, shuffle=True, random_state=0) as scikit-learn deals them
    folds = [e["fold"] for e in auto3dseg_folds({"training": [{"image": f"i{k}"} for k in range(10)]})["training"]]
    # (RandomState(0) permutes 0..9 to [2 8 4 9 1 6 7 3 0 5]; consecutive pairs are folds 0..4)
    assert folds == [4, 2, 0, 3, 1, 4, 2, 3, 0, 1]
    with pytest.raises(Exception, match="folds cannot be dealt"):
        auto3dseg_folds({"training": [{"image": "a"}]})


def test_fingerprint_follows_files(tmp_path):
    root = tmp_path / "data"
    dl = make_dataset(root)
    before = input_fingerprint(dl, root)
    assert input_fingerprint(dl, root) == before
    _save(root / "labelsTr" / "case_000.nii.gz", _label(1)[::-1].copy())
    os.utime(root / "labelsTr" / "case_000.nii.gz", ns=(1, 1))
    assert input_fingerprint(dl, root) != before


def test_check_case_keeps_full_precision_spacing(tmp_path):
    p = _save(tmp_path / "a.nii.gz", _image(0), np.diag([0.001, 0.0012345, 0.002, 1.0]))
    info = check_case(p)
    assert info.spacing == pytest.approx((0.001, 0.0012345, 0.002), rel=1e-6)


# ------------------------------------------------------------------------------------------------ keyed reuse
def test_analyze_is_keyed_to_its_input(tmp_path, capsys):
    root = tmp_path / "data"
    make_dataset(root, form="validation")
    cfg = input_yaml(root, tmp_path / "input.yaml")
    work = tmp_path / "w"
    args = ["analyze", "--input", cfg, "--work_dir", work, "--count", "2", "--grid", "8", "--progress", "false"]
    code, out, err = cli(args, capsys)
    assert code == 0, err
    stats = yaml.safe_load((work / "datastats.yaml").read_text())
    # the validation list is analysed too, as AutoRunner analyses it (training + validation = 6 cases)
    assert stats["stats_summary"]["n_cases"] == 6 and stats["input_fingerprint"]
    folds = json.loads((work / "datalist.json").read_text())
    assert sorted(e["fold"] for e in folds["training"]) == [0, 0, 1, 1, 1, 1]
    code, out, err = cli(args, capsys)
    assert code == 0 and "reusing" in out
    # A changed input is analysed again; a bad one leaves no datastats.yaml behind.
    _save(root / "labelsTr" / "case_003.nii.gz", _label(0.5, np.float32))
    code, out, err = cli(args, capsys)
    assert code == 2
    assert (work / "datastats.yaml").is_file()  # the old one is untouched by a refused run ...
    _save(root / "labelsTr" / "case_003.nii.gz", _label())
    os.utime(root / "labelsTr" / "case_003.nii.gz", ns=(5, 5))
    code, out, err = cli(args, capsys)
    assert code == 0 and "running MONAI DataAnalyzer" in out, err
    assert yaml.safe_load((work / "datastats.yaml").read_text())["input_fingerprint"] != stats["input_fingerprint"]


def test_failed_analysis_leaves_nothing(tmp_path, capsys, monkeypatch):
    from proxy_bundle.selection import analyzer

    root = tmp_path / "data"
    make_dataset(root)
    cfg = input_yaml(root, tmp_path / "input.yaml")
    work = tmp_path / "w"
    args = ["analyze", "--input", cfg, "--work_dir", work, "--count", "2", "--grid", "8", "--progress", "false"]
    assert cli(args, capsys)[0] == 0
    _save(root / "imagesTr" / "case_000.nii.gz", _image(7))  # a changed input

    def broken(*a, **k):
        from proxy_bundle.errors import InputError

        raise InputError("selection failed", where="x")

    monkeypatch.setattr("proxy_bundle.selection.subset.run_selection", broken)
    code, out, err = cli(args, capsys)
    # (MONAI's own log handler may also write here; the last line is the error)
    assert code == 2 and err.splitlines()[-1] == "error: x: selection failed"
    # the stale analysis was removed and the new one was never installed
    assert not (work / "datastats.yaml").exists() and not (work / "datastats_by_case.yaml").exists()
    assert not list(work.glob(".datastats.*"))
    assert analyzer  # imported for the patch target's module


# ------------------------------------------------------------------------------------------------ subprocesses
def test_subprocess_one_line_and_exit_2(tmp_path):
    root = tmp_path / "data"
    make_dataset(root)
    _save(root / "labelsTr" / "case_001.nii.gz", _label(0.9882, np.float32))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "proxy_bundle", "select", "--datalist", str(root / "datalist.json"),
                           "--count", "2", "--out", str(tmp_path / "p.json")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: imagesTr/case_001.nii.gz: label has non-integer values (e.g. 0.9882 in float32); labels must be "
        "integer class ids: round them and save the label as an integer type (e.g. uint8)"]
    assert not (tmp_path / "p.json").exists()


def _bundle(root: Path, tmp: Path) -> Path:
    """The proxyseg template exported for fold 0 of the dataset at ``root`` (Auto3DSeg's way: datastats first)."""
    from monai.apps.auto3dseg import DataAnalyzer

    stats = tmp / "datastats.yaml"
    DataAnalyzer(str(root / "datalist.json"), str(root), output_path=str(stats), device="cpu",
                 worker=0).get_all_case_stats()
    templates = REPO / "algorithm_templates"
    if str(templates) not in sys.path:
        sys.path.insert(0, str(templates))
    from proxyseg.scripts import algo as algo_module

    algo = algo_module.ProxysegAlgo(str(templates))
    algo.name = "proxyseg"
    algo.set_data_stats(str(stats))
    algo.set_data_source(str(input_yaml(root, tmp / "input.yaml")))
    algo.export_to_disk(str(tmp / "algos"), "proxyseg_0", fold=0)
    return tmp / "algos" / "proxyseg_0"


def test_template_train_refuses_bad_data_with_one_last_line(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, form="validation")
    bundle = _bundle(root, tmp_path)
    lab = _label()
    lab[lab == 1] = 2  # datastats said 2 classes (0, 1): this case has a class the network does not have
    _save(root / "labelsTr" / "case_003.nii.gz", lab)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(bundle / "scripts" / "train.py"), "run",
                           f"--config_file={bundle / 'configs' / 'hyper_parameters.yaml'}"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"error: {root / 'imagesTr' / 'case_003.nii.gz'}: label values [2] are outside the declared "
                    "labels [0, 1]")
    assert "Traceback" not in proc.stderr
    assert not (bundle / "model").exists()  # nothing written: no checkpoint folder


def test_last_error_line_of_a_trial_log(tmp_path):
    from proxy_bundle.hpo.runners import last_error_line

    log = tmp_path / "train.log"
    log.write_text("2026 proxyseg INFO starting\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "RuntimeError: CUDA out of memory\n\n")
    assert last_error_line(log) == "RuntimeError: CUDA out of memory"
    log.write_text("loading\nerror: imagesTr/a.nii.gz: label has negative values (e.g. -1)\n")
    assert last_error_line(log) == "error: imagesTr/a.nii.gz: label has negative values (e.g. -1)"
    log.write_text("just a line\n")
    assert last_error_line(log) == "just a line"
    assert last_error_line(tmp_path / "missing.log") is None


def test_study_is_keyed_to_its_input(tmp_path, capsys):
    import optuna

    from proxy_bundle.errors import InputError
    from proxy_bundle.hpo.inputs import INPUT_ATTR, check_study_input

    url = f"sqlite:///{tmp_path / 'study.db'}"
    check_study_input(url, "s", "aaa")
    study = optuna.load_study(study_name="s", storage=url)
    assert study.user_attrs[INPUT_ATTR] == "aaa"
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    check_study_input(url, "s", "aaa")  # same input: resumed as it is
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 1
    optuna.create_study(study_name="s-phase2-plan-0123456789abcdef", storage=url)  # the search's phase-2 plan lock
    check_study_input(url, "s", "bbb")  # changed input, nothing finished: starts afresh
    study = optuna.load_study(study_name="s", storage=url)
    assert study.trials == [] and study.user_attrs[INPUT_ATTR] == "bbb"
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["s"]
    assert "starting it afresh" in capsys.readouterr().out
    study.tell(study.ask(), 0.5)
    with pytest.raises(InputError, match=r"^study 's': this study holds 1 finished trial\(s\) made from other input"):
        check_study_input(url, "s", "ccc")


def test_hpo_end_to_end_on_a_validation_list_datalist(tmp_path, capsys, monkeypatch):
    """A datalist with a ``validation`` list and no folds (as AutoRunner accepts) runs the whole search."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    root = tmp_path / "data"
    make_dataset(root, form="validation")
    work = tmp_path / "w"
    tiny = {"roi_size": [16, 16, 16], "batch_size": 1, "network#init_filters": 4, "num_workers": 0,
            "sw_batch_size": 1}
    code, out, err = cli(["hpo", "--input", root, "--work_dir", work, "--n_trials", "1", "--top_k", "1",
                          "--proxy", "data", "--data_fraction", "0.5", "--epochs", "1", "--overrides",
                          json.dumps(tiny), "--progress", "false"], capsys)
    assert code == 0, err
    res = json.loads((work / "hpo" / "results.json").read_text())
    assert [t["state"] for t in res["trials"]] == ["COMPLETE", "COMPLETE"]
    folds = json.loads((work / "datalist.json").read_text())["training"]
    val = sorted(e["image"] for e in folds if e["fold"] == 0)
    assert val == ["imagesTr/case_000.nii.gz", "imagesTr/case_001.nii.gz"]  # the validation list
    stats = yaml.safe_load((work / "datastats.yaml").read_text())
    assert stats["stats_summary"]["n_cases"] == 6  # training + validation, as AutoRunner analyses
    proxy = json.loads(Path(stats["proxy_data"]["datalist"]).read_text())
    assert [e for e in proxy["training"] if e["fold"] == 0] == [e for e in folds if e["fold"] == 0]
    # The same cases are validated at both fidelities.
    assert "best score" in out
    # A re-run after the data changed (a fixed label) re-analyses and keeps the finished study out of reach.
    _save(root / "labelsTr" / "case_004.nii.gz", _label())
    os.utime(root / "labelsTr" / "case_004.nii.gz", ns=(7, 7))
    code, out, err = cli(["hpo", "--input", root, "--work_dir", work, "--n_trials", "1", "--top_k", "1",
                          "--proxy", "data", "--data_fraction", "0.5", "--epochs", "1", "--overrides",
                          json.dumps(tiny), "--progress", "false"], capsys)
    assert code == 2 and err.splitlines()[-1].startswith("error: study 'proxyseg-data': this study holds 2 finished")


def test_other_formats_are_read_by_monai_reader(tmp_path):
    from proxy_bundle.errors import InputError

    # .npy: MONAI's NumpyReader reads it (identity affine), so it passes as training will read it
    np.save(tmp_path / "case.npy", _image(0))
    assert check_case(tmp_path / "case.npy").shape == (N, N, N)
    # a file no installed reader can read: the reader's own reason, one line
    (tmp_path / "case.mha").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"^case\.mha: cannot read image case\.mha \(\w+: "):
        check_case(tmp_path / "case.mha")
