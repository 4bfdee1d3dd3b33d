"""Unit tests of the pieces the bundles call (proxy_bundle.bundle_support) and of the bundle trial runner's
command construction (proxy_bundle.hpo.bundle_runner); no training here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from proxy_bundle.bundle_support import (ProgressWriter, flag, image_datalist, latest_checkpoint, load_datalist,
                                         split_dataset)
from proxy_bundle.errors import InputError
from proxy_bundle.hpo.bundle_runner import BundleRunner, fidelity_overrides, proxy_mode
from proxy_bundle.hpo.runners import Fidelity

REPO = Path(__file__).resolve().parents[1]


def _images(entries):
    return [e["image"] for e in entries]


def test_split_uses_datalist_folds(prostate_phantom):
    datalist = json.loads((prostate_phantom / "datalist.json").read_text())["training"]
    split = split_dataset(prostate_phantom, fold=1)
    want_val = sorted(str((prostate_phantom / e["image"]).resolve()) for e in datalist if e["fold"] == 1)
    assert sorted(_images(split["validation"])) == want_val
    assert len(split["training"]) + len(split["validation"]) == len(datalist)
    assert not set(_images(split["training"])) & set(want_val)
    assert all(Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in split["training"])
    assert split == split_dataset(prostate_phantom, fold=1)


def test_split_without_datalist_is_round_robin_by_name(spleen_phantom, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(spleen_phantom, root)
    (root / "datalist.json").unlink()
    cases = sorted(e["image"] for e in json.loads((root / "dataset.json").read_text())["training"])
    split = split_dataset(root, fold=2, num_folds=4)
    expected = [str((root / c).resolve()) for i, c in enumerate(cases) if i % 4 == 2]
    assert _images(split["validation"]) == expected
    assert len(split["training"]) == len(cases) - len(expected)


def test_split_with_proxy_datalist_keeps_validation(spleen_phantom, tmp_path):
    datalist = json.loads((spleen_phantom / "datalist.json").read_text())["training"]
    val_case = next(e for e in datalist if e["fold"] == 0)
    others = [e for e in datalist if e["fold"] != 0][:2]
    proxy = tmp_path / "proxy.json"
    proxy.write_text(json.dumps({"training": [{"image": e["image"], "label": e["label"]} for e in others + [val_case]]}))
    full = split_dataset(spleen_phantom, fold=0)
    split = split_dataset(spleen_phantom, fold=0, proxy_datalist=proxy)
    assert sorted(_images(split["training"])) == sorted(str((spleen_phantom / e["image"]).resolve()) for e in others)
    assert split["validation"] == full["validation"]


@pytest.mark.parametrize("kwargs, message", [
    ({"fold": 9}, "fold 9 does not exist"),
    ({"num_folds": 1}, "num_folds must be an integer >= 2"),
])
def test_split_errors(spleen_phantom, kwargs, message):
    with pytest.raises(InputError, match=message):
        split_dataset(spleen_phantom, **kwargs)


def test_split_errors_name_the_file(spleen_phantom, tmp_path):
    with pytest.raises(InputError, match="dataset directory not found"):
        split_dataset(tmp_path / "nowhere")
    proxy = tmp_path / "proxy.json"
    proxy.write_text(json.dumps({"training": [{"image": "imagesTr/missing.nii.gz", "label": "labelsTr/missing.nii.gz"}]}))
    with pytest.raises(InputError) as err:
        split_dataset(spleen_phantom, proxy_datalist=proxy)
    assert str(proxy) in str(err.value) and "missing.nii.gz" in str(err.value)


def test_image_datalist(spleen_phantom, tmp_path):
    folder = image_datalist(spleen_phantom / "imagesExt")
    assert [Path(e["image"]).name for e in folder] == sorted(p.name for p in (spleen_phantom / "imagesExt").iterdir())
    listed = image_datalist(spleen_phantom / "external.json", base_dir=spleen_phantom)
    assert [e["image"] for e in listed] == [e["image"] for e in folder] and all("label" in e for e in listed)
    unlabelled = tmp_path / "unlabelled.json"
    unlabelled.write_text(json.dumps({"testing": [{"image": e["image"]} for e in listed]}))
    with pytest.raises(InputError, match=r"testing\[0\] needs 'image' and 'label'"):
        load_datalist(unlabelled, key="testing")
    assert len(load_datalist(unlabelled, key="testing", require_label=False)) == len(listed)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no NIfTI images"):
        image_datalist(tmp_path / "empty")


def _validation(writer: ProgressWriter, epoch: int, dice: float) -> None:
    writer(SimpleNamespace(state=SimpleNamespace(epoch=epoch, metrics={"val_mean_dice": dice})))


def test_progress_writer_history_best_and_resume(tmp_path):
    path = tmp_path / "models" / "progress.yaml"
    writer = ProgressWriter(path)
    for epoch, dice in [(2, 0.3), (4, 0.5), (6, 0.4)]:
        _validation(writer, epoch, dice)
    entries = yaml.safe_load(path.read_text())
    assert [(e["epoch"], e["avg_dice_score"], e["best_avg_dice_score"], e["best_epoch"]) for e in entries] == [
        (2, 0.3, 0.3, 2), (4, 0.5, 0.5, 4), (6, 0.4, 0.5, 4)]
    assert all(e["elapsed_s"] >= 0 for e in entries)
    # a run resumed from the epoch-4 checkpoint drops the later entry and keeps the best across the restart
    resumed = ProgressWriter(path)
    _validation(resumed, 5, 0.45)
    entries = yaml.safe_load(path.read_text())
    assert [e["epoch"] for e in entries] == [2, 4, 5]
    assert entries[-1]["best_avg_dice_score"] == 0.5 and entries[-1]["best_epoch"] == 4
    assert entries[-1]["elapsed_s"] >= entries[-2]["elapsed_s"]
    # a fresh run starts the file anew
    _validation(ProgressWriter(path), 1, 0.1)
    assert [e["epoch"] for e in yaml.safe_load(path.read_text())] == [1]
    with pytest.raises(KeyError, match="val_mean_dice"):
        writer(SimpleNamespace(state=SimpleNamespace(epoch=7, metrics={})))


def test_latest_checkpoint_and_flag(tmp_path):
    assert latest_checkpoint(tmp_path / "none") is None
    for n in (2, 10, 9):
        (tmp_path / f"resume_checkpoint_epoch={n}.pt").write_bytes(b"")
    (tmp_path / "model.pt").write_bytes(b"")
    assert Path(latest_checkpoint(tmp_path)).name == "resume_checkpoint_epoch=10.pt"
    assert flag("false") is False and flag("True") is True and flag(True) is True and flag(None) is False
    with pytest.raises(InputError, match="expected true or false"):
        flag("maybe", where="resume")


def test_bundle_runner_overrides_and_command(tmp_path):
    from fire.parser import DefaultParseValue

    runner = BundleRunner(REPO / "bundles" / "spleen_ct_proxy",
                          base_overrides={"dataset_dir": "/data/Task09 Spleen", "learning_rate": 1.0, "fold": 1})
    proxy = Fidelity(name="proxy", datalist=str(tmp_path / "proxy.json"), width=0.25, blocks=0.5, levels=3, epochs=7)
    over = runner.overrides({"learning_rate": 1e-3, "aug_prob_flip": 0.2}, proxy, tmp_path / "trial")
    assert over["learning_rate"] == 1e-3 and over["fold"] == 1 and over["max_epochs"] == 7
    assert (over["proxy_width"], over["proxy_blocks"], over["proxy_levels"]) == (0.25, 0.5, 3)
    assert over["proxy_datalist"] == str((tmp_path / "proxy.json").resolve())
    assert over["progress_file"] == str((tmp_path / "trial" / "models" / "progress.yaml").resolve())
    assert over["resume"] is False
    cmd = runner.command(over)
    assert cmd[1:4] == ["-m", "monai.bundle", "run"]
    parsed = dict(arg[2:].split("=", 1) for arg in cmd[4:])
    assert DefaultParseValue(parsed["config_file"]) == [str(REPO / "bundles/spleen_ct_proxy/configs/train.json")]
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
    assert proxy_mode(Fidelity(width=0.5), full) == "network"
    assert proxy_mode(Fidelity(datalist="p.json"), full) == "data"
    assert proxy_mode(Fidelity(datalist="p.json", levels=2), full) == "both"
    assert proxy_mode(full, full) == "none"
