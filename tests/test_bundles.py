"""The MONAI bundles in bundles/: schema-valid metadata, training through the ``monai.bundle`` CLI, inference
geometry, evaluation, TorchScript export and a two-trial proxy search, on the tiny phantoms (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from proxy_bundle.selection.strategies import subset_size

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
# An offline copy of the model-zoo schema that metadata.json cites (the tests never download).
SCHEMA = REPO / "tests" / "data" / "meta_schema_20240725.json"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"

# Per bundle: phantom fixture, patch size for the tiny phantoms, number of classes.
CASES = {
    "spleen_ct_proxy": ("spleen_phantom", [32, 32, 32], 2),
    "prostate_mr_proxy": ("prostate_phantom", [32, 32, 16], 3),
}
REQUIRED_FILES = ["configs/metadata.json", "configs/train.json", "configs/inference.json", "configs/evaluate.json",
                  "configs/hpo.json", "configs/multi_gpu_train.json", "configs/logging.conf", "LICENSE",
                  "docs/README.md", "large_files.yml"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _tiny(roi: list[int]) -> list[str]:
    """Overrides that make a run take seconds on the 32^3 phantoms."""
    return ["--num_workers", "0", "--roi_size", json.dumps(roi), "--num_samples", "1", "--batch_size", "2",
            "--sw_batch_size", "2", "--val_interval", "1", "--max_epochs", "1"]


def _bundle_cli(bundle: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=bundle, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module", params=sorted(CASES))
def bundle(request, tmp_path_factory) -> dict:
    """A working copy of one bundle (runs write models/, eval/, hpo/ into it) and its phantom."""
    name = request.param
    fixture, roi, classes = CASES[name]
    phantom = request.getfixturevalue(fixture)
    work = tmp_path_factory.mktemp(name) / name
    shutil.copytree(BUNDLES / name, work, ignore=shutil.ignore_patterns("models", "eval", "eval_external", "hpo", "logs"))
    return {"name": name, "dir": work, "data": phantom, "roi": roi, "classes": classes}


@pytest.fixture(scope="module")
def trained(bundle) -> dict:
    """One epoch of training through ``python -m monai.bundle run`` in a subprocess."""
    proc = _bundle_cli(bundle["dir"], "run", "--config_file", "configs/train.json", "--dataset_dir",
                       str(bundle["data"]), *_tiny(bundle["roi"]))
    return {**bundle, "log": proc.stdout + proc.stderr}


# ------------------------------------------------------------------------------------------------ layout

@pytest.mark.parametrize("name", sorted(CASES))
def test_bundle_layout_and_metadata_schema(name):
    from monai.bundle import verify_metadata

    root = BUNDLES / name
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    assert not missing, f"{name} lacks {missing}"
    assert not list(root.rglob("*.pt")) and not list(root.rglob("*.ts")), "weights must not be committed"
    assert SCHEMA.is_file(), f"offline schema copy missing: {SCHEMA}"
    meta_file = root / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA))  # raises on a schema violation
    meta = json.loads(meta_file.read_text())
    assert meta["schema"] == SCHEMA_URL
    assert meta["version"] in meta["changelog"]
    for pkg in ("proxy-bundle", "monai", "nibabel", "optuna"):
        assert pkg in meta["required_packages_version"]
    assert any("Power of Proxy Data and Proxy Networks" in r and "MICCAI 2021" in r for r in meta["references"])
    classes = CASES[name][2]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == classes
    assert "Apache License" in (root / "LICENSE").read_text()
    large = yaml.safe_load((root / "large_files.yml").read_text())
    assert any(f["path"] == "models/model.pt" for f in large["large_files"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_network_matches_metadata_and_scales(name):
    """``verify_net_in_out`` against metadata, and ``--proxy_width`` really shrinks the network."""
    from monai.bundle import ConfigParser, verify_net_in_out

    root = BUNDLES / name
    verify_net_in_out(net_id="network_def", meta_file=str(root / "configs/metadata.json"),
                      config_file=str(root / "configs/inference.json"), n=2, any=2, device="cpu")
    sizes = {}
    for width in (1.0, 0.25):
        parser = ConfigParser()
        parser.read_config(str(root / "configs/train.json"))
        parser["proxy_width"] = width
        net = parser.get_parsed_content("network_def")
        sizes[width] = sum(p.numel() for p in net.parameters())
    assert sizes[0.25] < sizes[1.0] / 4
    # a proxy that also drops blocks and a level still exports to TorchScript
    parser = ConfigParser()
    parser.read_config(str(root / "configs/inference.json"))
    parser.update({"proxy_width": 0.5, "proxy_blocks": 0.5, "proxy_levels": 3})
    net = parser.get_parsed_content("network_def").eval()
    x = torch.rand(1, 1, 16, 16, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_configs_satisfy_monai_workflow_properties(name, request, tmp_path):
    """MONAI's train/inference property checks (bundle_root, device, dataset_dir, train#trainer, ...) pass."""
    from monai.bundle import ConfigWorkflow

    data = request.getfixturevalue(CASES[name][0])
    root = BUNDLES / name / "configs"
    for config, kind in (("train.json", "train"), ("inference.json", "infer"), ("evaluate.json", "infer")):
        workflow = ConfigWorkflow(config_file=str(root / config), meta_file=str(root / "metadata.json"),
                                  logging_file=False, workflow_type=kind, bundle_root=str(tmp_path),
                                  dataset_dir=str(data), input_dir=str(data / "imagesExt"),
                                  output_dir=str(tmp_path), num_workers=0, cache_rate=0.0)
        workflow.initialize()
        assert workflow.check_properties() == [], f"{config} misses MONAI {kind} properties"


# ------------------------------------------------------------------------------------------------ train

def test_train_one_epoch_cli(trained):
    root = trained["dir"]
    assert (root / "models" / "model.pt").is_file()
    assert list((root / "logs").glob("events.out.tfevents.*")), "no TensorBoard events written"
    progress = yaml.safe_load((root / "models" / "progress.yaml").read_text())
    assert [e["epoch"] for e in progress] == [1]
    assert 0.0 <= progress[0]["avg_dice_score"] <= 1.0
    assert progress[0]["best_avg_dice_score"] == progress[0]["avg_dice_score"]
    # the bundle's logging.conf passed MONAI's allowlist and was applied
    assert "Setting logging properties based on config" in trained["log"]


def test_inference_masks_keep_input_geometry(trained):
    from monai.bundle import run

    out = trained["dir"] / "eval_test"
    run(config_file=str(trained["dir"] / "configs/inference.json"), logging_file=False,
        bundle_root=str(trained["dir"]), dataset_dir=str(trained["data"]),
        input_dir=str(trained["data"] / "imagesExt"), output_dir=str(out), num_workers=0,
        roi_size=trained["roi"], sw_batch_size=2)
    inputs = sorted((trained["data"] / "imagesExt").glob("*.nii.gz"))
    assert inputs
    for image in inputs:
        mask_path = out / image.name.replace(".nii.gz", "_seg.nii.gz")
        assert mask_path.is_file(), f"no mask for {image.name}"
        src, mask = nib.load(str(image)), nib.load(str(mask_path))
        assert mask.shape == src.shape[:3]
        np.testing.assert_allclose(mask.affine, src.affine, atol=1e-4)
        values = np.unique(np.asanyarray(mask.dataobj))
        assert set(values.tolist()) <= set(range(trained["classes"]))


def test_evaluate_external_set(trained):
    from monai.bundle import run

    out = trained["dir"] / "eval_external_test"
    run(config_file=str(trained["dir"] / "configs/evaluate.json"), logging_file=False,
        bundle_root=str(trained["dir"]), dataset_dir=str(trained["data"]), output_dir=str(out),
        num_workers=0, roi_size=trained["roi"], sw_batch_size=2)
    metrics = dict(line.split(",") for line in (out / "metrics.csv").read_text().split("\n") if line.strip())
    assert 0.0 <= float(metrics["mean_dice"]) <= 1.0
    raw = (out / "mean_dice_raw.csv").read_text().strip().splitlines()
    external = json.loads((trained["data"] / "external.json").read_text())["testing"]
    assert len(raw) == 1 + len(external)  # header + one row per case


def test_ckpt_export_roundtrip(trained, tmp_path):
    from monai.bundle import ConfigParser, ckpt_export

    root = trained["dir"]
    ts_file = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_file), ckpt_file=str(root / "models/model.pt"),
                meta_file=str(root / "configs/metadata.json"), config_file=str(root / "configs/inference.json"),
                bundle_root=str(root))
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts_file), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"]
    assert "network_def" in json.loads(extra["inference.json"])
    parser = ConfigParser()
    parser.read_config(str(root / "configs/inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(str(root / "models/model.pt"), map_location="cpu", weights_only=True))
    net.eval()
    x = torch.rand(1, 1, *trained["roi"])
    with torch.no_grad():
        y = scripted(x)
        ref = net(x)
    assert y.shape == (1, trained["classes"], *trained["roi"])
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ search

def test_hpo_two_trials(bundle):
    root = bundle["dir"]
    proc = _bundle_cli(root, "run", "--config_file", "['configs/train.json','configs/hpo.json']",
                       "--dataset_dir", str(bundle["data"]), *_tiny(bundle["roi"]),
                       "--hpo#n_trials", "2", "--hpo#top_k", "1", "--hpo#plots", "False")
    assert "best full-fidelity Dice" in proc.stdout
    study = root / "hpo" / bundle["name"]
    results = json.loads((study / "results.json").read_text())
    trials = results["trials"]
    phase1 = [t for t in trials if t["phase"] == 1]
    phase2 = [t for t in trials if t["phase"] == 2]
    # the median pruner may stop the second trial after its first reported epoch
    assert len(phase1) == 2 and phase1[0]["state"] == "COMPLETE" and phase1[1]["state"] in ("COMPLETE", "PRUNED")
    assert [t["state"] for t in phase2] == ["COMPLETE"]
    for t in phase1 + phase2:
        assert [s["epoch"] for s in t["scores"]] == [1], "per-epoch Dice not reported"
        assert 0.0 <= t["scores"][0]["dice"] <= 1.0
    space = json.loads((BUNDLES / bundle["name"] / "configs/hpo.json").read_text())["hpo"]["space"]
    assert set(results["best"]["params"]) == set(space)
    # phase 1 trained the proxy network, phase 2 the bundle's own network
    over1 = yaml.safe_load((Path(phase1[0]["trial_dir"]) / "overrides.yaml").read_text())
    over2 = yaml.safe_load((Path(phase2[0]["trial_dir"]) / "overrides.yaml").read_text())
    assert over1["proxy_width"] < 1.0 and over2["proxy_width"] == 1.0
    # ... on proxy data: a subset of the split's training cases, validated on the untouched fold 0
    assert over2["proxy_datalist"] is None
    proxy = json.loads(Path(over1["proxy_datalist"]).read_text())
    folds = json.loads((bundle["data"] / "datalist.json").read_text())["training"]
    n_train = sum(1 for e in folds if e["fold"] != 0)
    assert len(proxy["training"]) == subset_size(n_train, fraction=0.5) < n_train
    assert sorted(Path(e["image"]).name for e in proxy["validation"]) == sorted(
        Path(e["image"]).name for e in folds if e["fold"] == 0)
    n1 = sum(v.numel() for v in torch.load(Path(phase1[0]["trial_dir"]) / "models/model.pt",
                                            weights_only=True).values())
    n2 = sum(v.numel() for v in torch.load(Path(phase2[0]["trial_dir"]) / "models/model.pt",
                                            weights_only=True).values())
    assert n1 < n2
    # the winning settings merge straight into the train config
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(root / "configs/train.json"), str(root / "hpo/best_params.yaml")])
    for key, value in results["best"]["params"].items():
        assert parser[key] == pytest.approx(value)


def test_bundle_runner_prunes_a_running_trial(spleen_phantom, tmp_path):
    """The runner reports each validation as it happens and kills the training when the search prunes."""
    from proxy_bundle.hpo.bundle_runner import BundleRunner
    from proxy_bundle.hpo.runners import Fidelity

    roi = CASES["spleen_ct_proxy"][1]
    runner = BundleRunner(BUNDLES / "spleen_ct_proxy", env=_env(), poll_s=0.2,
                          base_overrides={"dataset_dir": str(spleen_phantom), "num_workers": 0, "roi_size": roi,
                                          "num_samples": 1, "val_interval": 1})
    reports = []

    def report(epoch: int, dice: float) -> bool:
        reports.append((epoch, dice))
        return True  # prune at the first validation

    result = runner.run({"learning_rate": 1e-3}, Fidelity(name="proxy", width=0.5, epochs=20), tmp_path / "trial",
                        report)
    assert result.pruned and reports[0][0] == 1 and 0.0 <= reports[0][1] <= 1.0
    progress = yaml.safe_load((tmp_path / "trial" / "models" / "progress.yaml").read_text())
    assert progress[-1]["epoch"] < 20, "training ran to the end although the trial was pruned"
