"""Unit tests of the bundles' own ``scripts/`` (split, inputs, progress file, refusal of bad input) and of the
bundle trial runner's command construction (proxy_bundle.hpo.bundle_runner); no training here."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import yaml
from bundle_util import BUNDLES, NAMES, REPO, load_scripts

from proxy_bundle.errors import InputError
from proxy_bundle.hpo.bundle_runner import BundleRunner, fidelity_overrides, proxy_mode
from proxy_bundle.hpo.runners import Fidelity, read_progress

SPLEEN = "spleen_ct_proxy_segmentation"

# A model-zoo bundle cannot depend on the proxy-bundle package, so each bundle carries copies of these modules
# in its scripts/; they must stay byte-identical to the package's, or the bundle's checks and proxy networks
# would drift from those of the search that tunes it.
VENDORED = {
    "errors.py": REPO / "proxy_bundle" / "errors.py",
    "validation.py": REPO / "proxy_bundle" / "validation.py",
    "scaling.py": REPO / "proxy_bundle" / "networks" / "scaling.py",
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("module", sorted(VENDORED))
def test_vendored_modules_are_the_package_modules(name, module):
    copy = BUNDLES / name / "scripts" / module
    assert copy.read_bytes() == VENDORED[module].read_bytes(), (
        f"{copy} differs from {VENDORED[module]}; copy the package module into the bundle")


def test_both_bundles_carry_the_same_scripts():
    a, b = (BUNDLES / n / "scripts" for n in NAMES)
    files = sorted(p.name for p in a.glob("*.py"))
    assert files == sorted(p.name for p in b.glob("*.py"))
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors


@pytest.fixture(scope="module")
def data():
    return load_scripts(SPLEEN).data


def _refused(capsys, fn, *args, **kwargs) -> str:
    """Call ``fn``; it must stop with exit code 2 and one ``error:`` line on stderr. Returns that line."""
    with pytest.raises(SystemExit) as stop:
        fn(*args, **kwargs)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _training(root: Path, data_mod) -> tuple[list, list]:
    listed = data_mod.datalist_file(root)
    return data_mod.listed_files(listed, root, "image"), data_mod.listed_files(listed, root, "label")


def _split(data_mod, root: Path, **kwargs) -> dict:
    images, labels = _training(root, data_mod)
    return data_mod.split_cases(images, labels, data_mod.datalist_file(root), root, **kwargs)


def _names(entries) -> list[str]:
    return sorted(Path(e["image"]).name for e in entries)


def test_split_uses_datalist_folds(data, prostate_phantom):
    listed = json.loads((prostate_phantom / "datalist.json").read_text())["training"]
    split = _split(data, prostate_phantom, fold=1)
    assert _names(split["validation"]) == sorted(Path(e["image"]).name for e in listed if e["fold"] == 1)
    assert len(split["training"]) + len(split["validation"]) == len(listed)
    assert not set(_names(split["training"])) & set(_names(split["validation"]))
    assert all(Path(e["image"]).is_absolute() and Path(e["label"]).is_file() for e in split["training"])
    assert split == _split(data, prostate_phantom, fold=1)


def test_split_honours_validation_and_testing_lists(data, spleen_phantom, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(spleen_phantom, root)
    cases = json.loads((root / "datalist.json").read_text())["training"]
    plain = [{"image": c["image"], "label": c["label"]} for c in cases]
    (root / "datalist.json").write_text(json.dumps(
        {"training": plain[:5], "validation": plain[5:6], "testing": plain[6:]}))
    split = data.split_cases([c["image"] for c in plain], [c["label"] for c in plain], str(root / "datalist.json"),
                             root, fold=3)
    assert _names(split["validation"]) == _names(plain[5:6])  # the list wins over folds
    assert _names(split["training"]) == _names(plain[:5])  # testing cases never train, even when listed in images


def test_split_without_folds_is_round_robin_by_name(data, spleen_phantom, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(spleen_phantom, root)
    (root / "datalist.json").unlink()
    assert data.datalist_file(root) == str(root / "dataset.json")
    cases = sorted(Path(e["image"]).name for e in json.loads((root / "dataset.json").read_text())["training"])
    split = _split(data, root, fold=2, num_folds=4)
    assert _names(split["validation"]) == [c for i, c in enumerate(cases) if i % 4 == 2]
    assert len(split["training"]) == len(cases) - len(split["validation"])


def test_split_with_proxy_datalist_keeps_validation(data, spleen_phantom, tmp_path):
    listed = json.loads((spleen_phantom / "datalist.json").read_text())["training"]
    val_case = next(e for e in listed if e["fold"] == 0)
    others = [e for e in listed if e["fold"] != 0][:2]
    proxy = tmp_path / "proxy.json"
    proxy.write_text(json.dumps({"training": [{"image": e["image"], "label": e["label"]} for e in others + [val_case]]}))
    full = _split(data, spleen_phantom, fold=0)
    split = _split(data, spleen_phantom, fold=0, proxy_datalist=str(proxy))
    assert _names(split["training"]) == sorted(Path(e["image"]).name for e in others)
    assert split["validation"] == full["validation"]


def test_split_refuses_bad_input_with_one_line(data, spleen_phantom, tmp_path, capsys):
    images, labels = _training(spleen_phantom, data)
    listed = data.datalist_file(spleen_phantom)
    line = _refused(capsys, data.split_cases, images, labels, listed, spleen_phantom, fold=7)
    assert line == "error: fold: fold 7 does not exist (folds: [0, 1, 2, 3, 4])"
    assert "2 labels" in _refused(capsys, data.split_cases, images, labels[:2], listed, spleen_phantom)
    missing = str(tmp_path / "missing.nii.gz")
    assert missing in _refused(capsys, data.split_cases, [missing, *images[1:]], labels, listed, spleen_phantom)
    assert "datalist.json nor dataset.json" in _refused(capsys, data.listed_files, None, tmp_path)
    broken = tmp_path / "datalist.json"
    broken.write_text('{"training": [')
    assert _refused(capsys, data.listed_files, str(broken), tmp_path).startswith(f"error: {broken}: invalid JSON")


def _write(path: Path, array: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return str(path)


def test_case_checks_before_work(data, tmp_path, capsys):
    good = _write(tmp_path / "a.nii.gz", np.ones((8, 8, 8), np.float32))
    label = _write(tmp_path / "a_seg.nii.gz", np.ones((8, 8, 8), np.uint8))
    nan = np.ones((8, 8, 8), np.float32)
    nan[0, 0, 0] = np.nan
    bad = _write(tmp_path / "nan.nii.gz", nan)
    split = {"training": [{"image": good, "label": label}], "validation": [{"image": bad, "label": label}]}
    assert "nan.nii.gz: image contains NaN/Inf" in _refused(capsys, data.check_training_cases, split, 2)
    assert data.check_training_cases(split, 2, enabled="false") == 0
    split["validation"] = [{"image": good, "label": label}]
    assert data.check_training_cases(split, 2) == 2
    assert "outside the declared labels" in _refused(capsys, data.check_training_cases, split, 1)
    truncated = tmp_path / "cut.nii.gz"
    whole = Path(good).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    assert "cut.nii.gz" in _refused(capsys, data.check_inputs, [{"image": str(truncated)}])
    assert "selects channels" in _refused(capsys, data.check_inputs, [{"image": good}], image_channels=[1])
    assert data.check_inputs([{"img": good}], "img") == 1


def test_inference_inputs(data, tmp_path, capsys):
    root = tmp_path / "msd"
    (root / "imagesTs").mkdir(parents=True)
    for name in ("b.nii.gz", "a.nii.gz"):
        _write(root / "imagesTs" / name, np.ones((8, 8, 8), np.float32))
    (root / "imagesTs" / "._a.nii.gz").write_bytes(b"resource fork")  # as in the MSD archives
    files = data.inference_inputs(root)
    assert [Path(f).name for f in files] == ["a.nii.gz", "b.nii.gz"]
    assert data.image_entries(files, "img") == [{"img": f} for f in files]
    assert [Path(e["image"]).name for e in data.image_entries(str(root / "imagesTs"))] == ["a.nii.gz", "b.nii.gz"]
    # without imagesTs: the datalist's testing list
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "datalist.json").write_text(json.dumps({"testing": [{"image": f} for f in files]}))
    assert data.inference_inputs(listed) == files
    # no input: a bundle check without data still parses, a run stops before any work
    assert data.inference_inputs(tmp_path / "empty") == [] and data.image_entries([]) == []
    assert _refused(capsys, data.check_inputs, [], dataset_dir="/d") == (
        "error: datalist: no input images (none in /d/imagesTs or the testing list of its datalist.json); "
        "set datalist to a list of image files")
    assert "input folder or datalist not found" in _refused(capsys, data.image_entries, str(tmp_path / "nowhere"))


def test_eval_cases(data, spleen_phantom, capsys):
    split = _split(data, spleen_phantom, fold=0)
    assert data.eval_cases(split, check=False) == split["validation"]
    external = data.eval_cases(split, str(spleen_phantom / "external.json"), "testing", spleen_phantom)
    assert _names(external) == sorted(p.name for p in (spleen_phantom / "imagesExt").iterdir())
    assert "has no 'nothing' entries" in _refused(capsys, data.eval_cases, split,
                                                  str(spleen_phantom / "external.json"), "nothing", spleen_phantom)


def test_flag_and_require(data, capsys):
    assert data.flag("false") is False and data.flag("True") is True and data.flag(None) is False
    assert "expected true or false" in _refused(capsys, data.flag, "maybe", where="resume")
    data.require("json", "unused", where="x")
    line = _refused(capsys, data.require, "no_such_package_here", "pip install it", where="configs/hpo.json")
    assert line == "error: configs/hpo.json: needs the no_such_package_here package: pip install it"


def test_proxy_network_refuses_bad_sizes(capsys):
    networks = load_scripts(SPLEEN).networks
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8}
    assert networks.proxy_network("segresnet", kwargs, width=0.5).init_filters == 4
    assert "ProxySpec.width" in _refused(capsys, networks.proxy_network, "segresnet", kwargs, width=-1)


def _validation(writer, epoch: int, dice: float) -> None:
    writer(SimpleNamespace(state=SimpleNamespace(epoch=epoch, metrics={"val_mean_dice": dice})))


def test_progress_writer_history_best_and_resume(tmp_path):
    progress = load_scripts(SPLEEN).progress
    path = tmp_path / "models" / "progress.yaml"
    writer = progress.ProgressWriter(path)
    for epoch, dice in [(2, 0.3), (4, 0.5), (6, 4e-06)]:
        _validation(writer, epoch, dice)
    entries = yaml.safe_load(path.read_text())
    assert entries == read_progress(path) == progress.read_progress(path)  # the search's reader agrees
    assert [(e["epoch"], e["avg_dice_score"], e["best_avg_dice_score"], e["best_epoch"]) for e in entries] == [
        (2, 0.3, 0.3, 2), (4, 0.5, 0.5, 4), (6, 4e-06, 0.5, 4)]
    assert all(isinstance(e["avg_dice_score"], float) and e["elapsed_s"] >= 0 for e in entries)
    # a run resumed from the epoch-4 checkpoint drops the later entry and keeps the best across the restart
    resumed = progress.ProgressWriter(path)
    _validation(resumed, 5, 0.45)
    entries = yaml.safe_load(path.read_text())
    assert [e["epoch"] for e in entries] == [2, 4, 5]
    assert entries[-1]["best_avg_dice_score"] == 0.5 and entries[-1]["best_epoch"] == 4
    assert entries[-1]["elapsed_s"] >= entries[-2]["elapsed_s"]
    # a fresh run starts the file anew
    _validation(progress.ProgressWriter(path), 1, 0.1)
    assert [e["epoch"] for e in yaml.safe_load(path.read_text())] == [1]
    with pytest.raises(KeyError, match="val_mean_dice"):
        writer(SimpleNamespace(state=SimpleNamespace(epoch=7, metrics={})))


def test_latest_checkpoint(tmp_path):
    progress = load_scripts(SPLEEN).progress
    assert progress.latest_checkpoint(tmp_path / "none") is None
    for n in (2, 10, 9):
        (tmp_path / f"resume_checkpoint_epoch={n}.pt").write_bytes(b"")
    (tmp_path / "model.pt").write_bytes(b"")
    assert Path(progress.latest_checkpoint(tmp_path)).name == "resume_checkpoint_epoch=10.pt"


@pytest.mark.parametrize("name", NAMES)
def test_search_passes_every_training_setting_to_trials(name):
    """hpo#trial_settings forwards every top-level setting of train.json (so a command-line override such as
    ``--num_classes 4`` reaches the trials), except what the runner sets per trial."""
    train = json.loads((BUNDLES / name / "configs/train.json").read_text())
    settings = json.loads((BUNDLES / name / "configs/hpo.json").read_text())["hpo"]["trial_settings"]
    per_trial = {"bundle_root", "ckpt_dir", "output_dir", "log_dir", "progress_file", "proxy_datalist",
                 "proxy_width", "proxy_blocks", "proxy_levels", "epochs", "resume"}
    components = {k for k, v in train.items()
                  if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict))
                  or k in ("imports", "initialize", "run")}
    derived = {"device", "amp", "network", "split", "input_check", "input_channels"}
    expected = set(train) - per_trial - components - derived
    assert expected <= set(settings), sorted(expected - set(settings))
    assert all(settings[k] == f"@{k}" for k in expected - {"check_inputs"})
    assert settings["check_inputs"] is False  # the search checks the data once, before its first trial


def test_bundle_runner_overrides_and_command(tmp_path):
    from fire.parser import DefaultParseValue

    runner = BundleRunner(BUNDLES / SPLEEN,
                          base_overrides={"dataset_dir": "/data/Task09 Spleen", "learning_rate": 1.0, "fold": 1})
    proxy = Fidelity(name="proxy", datalist=str(tmp_path / "proxy.json"), width=0.25, blocks=0.5, levels=3, epochs=7)
    over = runner.overrides({"learning_rate": 1e-3, "aug_prob_flip": 0.2}, proxy, tmp_path / "trial")
    assert over["learning_rate"] == 1e-3 and over["fold"] == 1 and over["epochs"] == 7
    assert (over["proxy_width"], over["proxy_blocks"], over["proxy_levels"]) == (0.25, 0.5, 3)
    assert over["proxy_datalist"] == str((tmp_path / "proxy.json").resolve())
    assert over["progress_file"] == str((tmp_path / "trial" / "models" / "progress.yaml").resolve())
    assert over["resume"] is False
    cmd = runner.command(over)
    assert cmd[1:4] == ["-m", "monai.bundle", "run"]
    parsed = dict(arg[2:].split("=", 1) for arg in cmd[4:])
    assert DefaultParseValue(parsed["config_file"]) == [str(BUNDLES / SPLEEN / "configs/train.json")]
    for key, value in over.items():
        assert DefaultParseValue(parsed[key]) == value, key  # python-fire reads back exactly the value sent
    with pytest.raises(InputError, match="cannot be searched"):
        runner.overrides({"ckpt_dir": "/x"}, proxy, tmp_path / "trial")
    with pytest.raises(InputError, match="not a bundle folder"):
        BundleRunner(tmp_path)


def test_fidelity_mapping():
    full = Fidelity(name="full")
    assert fidelity_overrides(full) == {"proxy_datalist": None, "proxy_width": 1.0, "proxy_blocks": 1.0,
                                        "proxy_levels": None}
    assert fidelity_overrides(Fidelity(epochs=3))["epochs"] == 3
    assert proxy_mode(Fidelity(width=0.5), full) == "network"
    assert proxy_mode(Fidelity(datalist="p.json"), full) == "data"
    assert proxy_mode(Fidelity(datalist="p.json", levels=2), full) == "both"
    assert proxy_mode(full, full) == "none"
    assert proxy_mode(Fidelity(name="proxy", epochs=2), Fidelity(name="full", epochs=8)) == "short"
