"""MONAI's own Auto3DSeg templates end to end on a 32^3 phantom (CPU, 1 epoch): `hpo --proxy both`, the final result
on the main Optuna study, `export`, and AutoRunner's ensemble on the exported work dir.

MONAI's templates are read from the offline copy next to the repository (../shared/monai/algorithm_templates);
the tests skip when it is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
import yaml

from proxy_bundle.cli import main

REPO = Path(__file__).resolve().parents[1]
MONAI_TEMPLATES = Path(os.environ.get("PROXY_BUNDLE_MONAI_TEMPLATES",
                                      REPO.parent / "shared" / "monai" / "algorithm_templates"))
pytestmark = pytest.mark.skipif(not (MONAI_TEMPLATES / "segresnet" / "scripts" / "algo.py").is_file(),
                                reason=f"MONAI's algorithm templates not found at {MONAI_TEMPLATES}")

# One patch covers the phantom; no re-validation at original resolution; no worker processes (2 cores).
SEGRESNET = {"roi_size": [32, 32, 32], "num_epochs_per_validation": 1, "num_workers": 0,
             "validate_final_original_res": False}
# swinunetr: persistent DataLoader workers (at least one each); its encoder halves the patch five times (ROI >= 64);
# a 24-feature full network keeps the full-fidelity trial small (the proxy at width 0.5 has 12, the minimum).
SWINUNETR = {"roi_size": [64, 64, 64], "network#feature_size": 24, "num_epochs_per_validation": 1, "num_workers": 1,
             "num_workers_validation": 1, "num_cache_workers": 1, "adapt_valid_mode": False,
             "num_images_per_batch": 1, "num_crops_per_image": 1, "num_patches_per_iter": 1,
             "valid_at_orig_resolution_at_last": False}


def _hpo(data: Path, work: Path, algo: str, overrides: dict, width: float) -> dict:
    main(["hpo", "--input", str(data), "--work_dir", str(work), "--algo", algo, "--templates", str(MONAI_TEMPLATES),
          "--proxy", "both", "--n_trials", "1", "--top_k", "1", "--epochs", "1", "--data_fraction", "0.34",
          "--width", str(width), "--seed", "0", "--overrides", json.dumps(overrides), "--progress", "False",
          "--default_trial", "False"])
    return json.loads((work / "hpo" / "results.json").read_text())


@pytest.fixture(scope="module")
def segresnet_search(spleen_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("segresnet_work")
    return work, _hpo(spleen_phantom, work, "segresnet", SEGRESNET, 0.5)


def test_segresnet_proxy_search_trains_each_fidelity(segresnet_search):
    work, res = segresnet_search
    p1 = [t for t in res["trials"] if t["phase"] == 1]
    p2 = [t for t in res["trials"] if t["phase"] == 2]
    assert [t["state"] for t in p1 + p2] == ["COMPLETE", "COMPLETE"]
    # held-out scoring rebuilds proxyseg's pipeline: a MONAI template's winner is reported as not scored
    assert res["assessment"]["unscored"] == ["best"]
    stats = yaml.safe_load((work / "datastats.yaml").read_text())
    proxy_cfg = yaml.safe_load((Path(p1[0]["trial_dir"]) / "segresnet" / "configs" / "hyper_parameters.yaml")
                               .read_text())
    full_cfg = yaml.safe_load((Path(p2[0]["trial_dir"]) / "segresnet" / "configs" / "hyper_parameters.yaml")
                              .read_text())
    # Proxy data: the template's datalist key points at the proxy datalist; proxy network: half its filters.
    assert proxy_cfg["data_list_file_path"] == stats["proxy_data"]["datalist"]
    assert full_cfg["data_list_file_path"] != stats["proxy_data"]["datalist"]
    assert proxy_cfg["network"]["init_filters"] * 2 == full_cfg["network"]["init_filters"]
    # Per-epoch Dice reached Optuna from the template's accuracy_history.csv.
    assert [s["epoch"] for s in p1[0]["scores"]] == [1]
    assert set(p1[0]["params"]) == {"learning_rate", "optimizer#weight_decay"}
    assert full_cfg["learning_rate"] == pytest.approx(p2[0]["params"]["learning_rate"])
    # --proxy short (hpo's default) reads the template's own epoch count when --epochs is not given
    from proxy_bundle.hpo.runners import AlgoRunner

    runner = AlgoRunner.from_templates(work / "algorithm_templates", "segresnet", work, work / "datastats.yaml",
                                       work / "input.yaml")
    epochs = runner.default_epochs(work / "scratch")
    assert isinstance(epochs, int) and epochs > 1 and not (work / "scratch").exists()


def test_final_result_is_on_the_main_study(segresnet_search):
    work, res = segresnet_search
    url = f"sqlite:///{work / 'hpo' / 'study.db'}"
    main_study = optuna.load_study(study_name="segresnet-both", storage=url)
    final = main_study.user_attrs["final_result"]
    assert final["study"] == "segresnet-both-phase2" and main_study.user_attrs["phase2_study"] == final["study"]
    assert final["value"] == pytest.approx(res["best"]["score"]) and final["params"] == res["best"]["params"]
    phase2 = optuna.load_study(study_name=final["study"], storage=url)
    assert phase2.best_trial.value == pytest.approx(final["value"])
    assert phase2.user_attrs["phase1_study"] == "segresnet-both"


def test_export_then_autorunner_ensembles_in_input_geometry(segresnet_search, spleen_phantom: Path):
    import nibabel as nib
    import numpy as np
    from monai.apps.auto3dseg import AutoRunner

    work, res = segresnet_search
    main(["export", "--work_dir", str(work)])
    folds = sorted({c["fold"] for c in json.loads((spleen_phantom / "datalist.json").read_text())["training"]})
    for fold in folds:
        record = json.loads((work / f"segresnet_{fold}" / "algo_object.json").read_text())
        assert (record.get("best_metric") is not None) == (fold == 0)
    hp = yaml.safe_load((work / "segresnet_0" / "configs" / "hyper_parameters.yaml").read_text())
    assert hp["learning_rate"] == pytest.approx(res["best"]["params"]["learning_rate"]) and hp["fold"] == 0
    assert (work / "segresnet_0" / "model" / "model.pt").is_file()
    assert not (work / "segresnet_1" / "model" / "model.pt").exists()

    # Ensemble one external case through AutoRunner (no analysis, no generation, no training).
    datalist = json.loads((spleen_phantom / "datalist.json").read_text())
    external = json.loads((spleen_phantom / "external.json").read_text())
    case = next(c for key in ("testing", "training") for c in external.get(key, []))
    datalist["testing"] = [{"image": case["image"]}]
    (work / "ensemble_datalist.json").write_text(json.dumps(datalist))
    (work / "ensemble_input.yaml").write_text(yaml.safe_dump(
        {"name": "spleen", "dataroot": str(spleen_phantom), "datalist": str(work / "ensemble_datalist.json"),
         "modality": "CT"}))
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    runner = AutoRunner(work_dir=str(work), input=str(work / "ensemble_input.yaml"), analyze=False,
                        algo_gen=False, train=False)
    runner.set_ensemble_method("AlgoEnsembleBestN", n_best=1)
    runner.run()
    (mask_file,) = (work / "ensemble_output").rglob(Path(case["image"]).name.replace(".nii.gz", "") + "*")
    image, mask = nib.load(str(spleen_phantom / case["image"])), nib.load(str(mask_file))
    assert mask.shape == image.shape
    assert np.allclose(mask.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}


# About 50 s on two quiet CPU cores (SwinUNETR needs 64^3 patches).
def test_swinunetr_proxy_search_finishes_on_cpu(spleen_phantom: Path, tmp_path: Path):
    res = _hpo(spleen_phantom, tmp_path, "swinunetr", SWINUNETR, 0.5)
    assert [t["state"] for t in res["trials"]] == ["COMPLETE", "COMPLETE"]
    p1 = next(t for t in res["trials"] if t["phase"] == 1)
    net = yaml.safe_load((Path(p1["trial_dir"]) / "swinunetr" / "configs" / "network.yaml").read_text())
    assert net["network"]["feature_size"] == 12  # 24 x 0.5, a multiple of 12
    assert [s["epoch"] for s in p1["scores"]] == [1]
