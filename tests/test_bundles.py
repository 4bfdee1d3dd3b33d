"""The MONAI bundles in bundles/, checked the way the MONAI Model Zoo checks a contribution, on tiny CPU data.

* the zoo's unit-test pattern: ``ConfigWorkflow`` + ``check_properties`` for training, evaluation as
  ``[train.json, evaluate.json]`` with ``workflow_type="train"`` and inference, with the zoo's overrides
  (``images``, ``labels``, ``epochs``, ``datalist`` as a list of files, ``handlers#0#_disabled_``, ...);
* multi-GPU evaluation (``torchrun`` + ``multi_gpu_evaluate.json``) over two CPU processes with gloo;
* training, evaluation and inference with ``proxy_bundle`` unimportable, and ``configs/hpo.json`` refusing to
  run without it;
* the zoo's bundle verification (files, version, metadata schema, app properties, network shapes, TorchScript),
  with stand-in weights as its CI makes them, and its pre-commit JSON format;
* the proxy search of ``configs/hpo.json`` on the phantoms.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from bundle_util import BUNDLES, NAMES, REPO, bundle_importable

from proxy_bundle.selection.strategies import subset_size

# An offline copy of the model-zoo schema that metadata.json cites (the tests never download).
SCHEMA = REPO / "tests" / "data" / "meta_schema_20240725.json"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"

# Per bundle: phantom fixture, classes, the patch size that fits the tiny data.
CASES = {
    "spleen_ct_proxy_segmentation": ("spleen_phantom", 2, [32, 32, 32]),
    "prostate_mri_proxy_segmentation": ("prostate_phantom", 3, [32, 32, 16]),
}
# The model zoo's own files plus this project's.
REQUIRED_FILES = ["configs/metadata.json", "configs/train.json", "configs/inference.json", "configs/evaluate.json",
                  "configs/multi_gpu_train.json", "configs/multi_gpu_evaluate.json", "configs/hpo.json",
                  "configs/logging.conf", "LICENSE", "docs/README.md", "docs/data_license.txt",
                  "scripts/__init__.py"]
README_SECTIONS = ["Authors", "Tags", "Model Description", "Data", "Input and output", "Performance",
                   "System Configuration", "Limitations", "Citation Info", "References", "License"]
# numpy 2.2 is the last line with wheels for Python 3.10, the model zoo CI's Python.
NUMPY_FOR_PY310 = (2, 2)


def _env(hide_proxy_bundle: Path | None = None) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    if hide_proxy_bundle is not None:
        env["PYTHONPATH"] = str(hide_proxy_bundle)  # only the shadowing package, not the repository
    else:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.fixture(scope="session")
def no_proxy_bundle(tmp_path_factory) -> Path:
    """A PYTHONPATH entry whose ``proxy_bundle`` cannot be imported, shadowing any installed one."""
    root = tmp_path_factory.mktemp("no_proxy_bundle")
    (root / "proxy_bundle").mkdir()
    (root / "proxy_bundle" / "__init__.py").write_text("raise ImportError('proxy_bundle is not installed')\n")
    return root


def _bundle_cli(bundle: Path, *args: str, env: dict, expect: int = 0,
                launcher: tuple[str, ...] = ("-m", "monai.bundle")) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *launcher, *args], cwd=bundle, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="session")
def zoo_data(tmp_path_factory) -> Path:
    """Data as the zoo's unit tests make it: random 0/1 images and labels, ``image_*.nii.gz`` / ``label_*``."""
    root = tmp_path_factory.mktemp("zoo_data")
    rng = np.random.default_rng(0)
    for s in range(4):
        for kind in ("image", "label"):
            array = rng.integers(0, 2, size=(24, 24, 24)).astype(np.int8)
            nib.save(nib.Nifti1Image(array, np.eye(4)), str(root / f"{kind}_{s}.nii.gz"))
    return root


def _zoo_train_overrides(data: Path, roi: list[int]) -> dict:
    """The overrides of the zoo's train/evaluate unit test, plus this bundle's patch size for speed."""
    return {
        "dataset_dir": str(data),
        "images": "$list(sorted(glob.glob(@dataset_dir + '/image_*.nii.gz')))",
        "labels": "$list(sorted(glob.glob(@dataset_dir + '/label_*.nii.gz')))",
        "epochs": 1,
        "train#dataset#cache_rate": 0.0,
        "validate#dataset#cache_rate": 0.0,
        "train#dataloader#num_workers": 0,
        "validate#dataloader#num_workers": 0,
        "train#random_transforms#0#spatial_size": roi,
        "roi_size": roi,
        "num_workers": 0,
        "num_samples": 1,
        "sw_batch_size": 1,
    }


def _cli_args(overrides: dict) -> list[str]:
    return [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]


@pytest.fixture(scope="module", params=NAMES)
def bundle(request, tmp_path_factory, zoo_data) -> dict:
    """A working copy of one bundle (runs write models/, eval/, logs/ into it, as in the model zoo)."""
    name = request.param
    work = tmp_path_factory.mktemp(name) / name
    shutil.copytree(BUNDLES / name, work, ignore=shutil.ignore_patterns("models", "eval", "logs", "hpo", "__pycache__"))
    fixture, classes, roi = CASES[name]
    return {"name": name, "dir": work, "classes": classes, "roi": roi, "zoo": _zoo_train_overrides(zoo_data, roi),
            "fixture": fixture}


@pytest.fixture(scope="module")
def trained(bundle, no_proxy_bundle) -> dict:
    """One epoch of training with the zoo's overrides through ``python -m monai.bundle run``, without proxy_bundle."""
    proc = _bundle_cli(bundle["dir"], "run", "--config_file", "configs/train.json", *_cli_args(bundle["zoo"]),
                       env=_env(no_proxy_bundle))
    return {**bundle, "log": proc.stdout + proc.stderr}


# ------------------------------------------------------------------------------------------------ layout

@pytest.mark.parametrize("name", NAMES)
def test_bundle_layout(name):
    root = BUNDLES / name
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    assert not missing, f"{name} lacks {missing}"
    assert not list(root.rglob("*.pt")) and not list(root.rglob("*.ts")), "weights must not be committed"
    assert not list(root.glob("large_files.*")), "no weights are published, so no large_files file either"
    assert re.fullmatch(r"[a-z]+_(ct|mri)_proxy_segmentation", name), "zoo naming: <organ>_<modality>_..._<task>"
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["schema"] == SCHEMA_URL and meta["version"] in meta["changelog"]
    assert "eval_metrics" in meta and meta["supported_apps"]
    pins = {**meta["required_packages_version"], **meta.get("optional_packages_version", {})}
    assert "proxy-bundle" not in pins and "monai" not in pins  # monai is pinned once, by monai_version
    assert tuple(int(x) for x in meta["numpy_version"].split(".")[:2]) <= NUMPY_FOR_PY310
    assert any("Power of Proxy Data and Proxy Networks" in r and "MICCAI 2021" in r for r in meta["references"])
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == CASES[name][1]
    readme = (root / "docs" / "README.md").read_text()
    headings = re.findall(r"^#+ \**(.+?)\**$", readme, flags=re.M)
    assert [s for s in README_SECTIONS if s not in headings] == []
    assert name in readme and "Apache License" in (root / "LICENSE").read_text()
    for config in (root / "configs").glob("*.json"):
        if config.name != "hpo.json":
            assert "proxy_bundle" not in config.read_text(), f"{config.name} must run with MONAI alone"


@pytest.mark.parametrize("name", NAMES)
def test_json_is_pretty_formatted(name):
    """What the zoo's pre-commit ``pretty-format-json --no-sort-keys --indent=4`` and end-of-file hooks accept."""
    for path in sorted((BUNDLES / name).rglob("*.json")):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{path} is not formatted with indent 4"
    for path in sorted(p for p in (BUNDLES / name).rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        text = path.read_text()
        assert text.endswith("\n") and not text.endswith("\n\n"), f"{path}: end-of-file-fixer"
        assert not re.search(r"[ \t]$", text, flags=re.M), f"{path}: trailing whitespace"


@pytest.mark.parametrize("name", NAMES)
def test_network_matches_metadata_and_scales(name):
    """``verify_net_in_out`` against metadata, and ``--proxy_width`` really shrinks the network."""
    from monai.bundle import ConfigParser, verify_net_in_out

    root = BUNDLES / name
    with bundle_importable(root):
        verify_net_in_out(net_id="network_def", meta_file=str(root / "configs/metadata.json"),
                          config_file=str(root / "configs/inference.json"), n=2, any=2, device="cpu")
        sizes = {}
        for width in (1.0, 0.25):
            parser = ConfigParser()
            parser.read_config(str(root / "configs/train.json"))
            parser["proxy_width"] = width
            sizes[width] = sum(p.numel() for p in parser.get_parsed_content("network_def").parameters())
        assert sizes[0.25] < sizes[1.0] / 4
        # a proxy that also drops blocks and a level still exports to TorchScript
        parser = ConfigParser()
        parser.read_config(str(root / "configs/inference.json"))
        parser.update({"proxy_width": 0.5, "proxy_blocks": 0.5, "proxy_levels": 3})
        net = parser.get_parsed_content("network_def").eval()
    x = torch.rand(1, 1, 16, 16, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), net(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ the zoo's checks

def _stand_in_weights(root: Path) -> None:
    """``models/model.pt`` from the freshly built network, as the zoo CI's ``_produce_fake_weights`` does."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(root / "configs/inference.json"))
    parser.read_meta(str(root / "configs/metadata.json"))
    (root / "models").mkdir(exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")


def _verify_bundle(models: Path, name: str, mode: str) -> list[str]:
    """The model zoo's bundle verification (``ci/verify_bundle.py``), offline against the local schema.

    ``min``: necessary and preferred files, version listed in the changelog, metadata schema. ``full`` adds:
    for every app in ``supported_apps`` the app's inference and metadata properties, the network's input and
    output shapes against the metadata, and the TorchScript export of ``models/model.pt``. Returns the checks run.
    """
    from monai.bundle import ckpt_export, create_workflow, verify_metadata, verify_net_in_out

    root = models / name
    done = []
    for f in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
        assert (root / f).is_file(), f"necessary file {f} is missing"
    done.append("files")
    meta = json.loads((root / "configs/metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    done.append("version")
    verify_metadata(meta_file=str(root / "configs/metadata.json"), filepath=str(root / "eval/schema.json"))
    done.append("metadata")
    if mode == "min":
        return done
    with bundle_importable(root):
        for app in meta["supported_apps"]:
            props = models.parent / app / "bundle_properties.py"  # where the zoo CI finds an app's properties
            namespace: dict = {}
            exec(props.read_text(), namespace)
            workflow = create_workflow(workflow_type="inference", bundle_root=str(root),
                                       config_file=str(root / "configs/inference.json"),
                                       logging_file=str(root / "configs/logging.conf"),
                                       meta_file=str(root / "configs/metadata.json"))
            workflow.properties = {**namespace["MetaProperties"], **namespace["InferProperties"]}
            assert workflow.check_properties() == [], f"{app} properties missing"
            done.append(f"properties:{app}")
        verify_net_in_out(net_id="network_def", meta_file=str(root / "configs/metadata.json"),
                          config_file=str(root / "configs/inference.json"), bundle_root=str(root))
        done.append("shapes")
        ckpt_export(net_id="network_def", filepath=str(root / "models/verify_model.ts"),
                    ckpt_file=str(root / "models/model.pt"), meta_file=str(root / "configs/metadata.json"),
                    config_file=str(root / "configs/inference.json"), bundle_root=str(root))
    torch.jit.load(str(root / "models/verify_model.ts"))
    done.append("torchscript")
    return done


@pytest.mark.parametrize("name", NAMES)
def test_verify_bundle_min_and_full(name, tmp_path):
    models = tmp_path / "zoo" / "models"
    root = models / name
    shutil.copytree(BUNDLES / name, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "eval").mkdir()
    shutil.copy(SCHEMA, root / "eval" / "schema.json")  # what the zoo CI's prepare_schema step puts there
    meta = json.loads((root / "configs/metadata.json").read_text())
    for app in meta["supported_apps"]:
        # No app's own properties file is available offline: MONAI's inference and metadata properties stand in.
        (tmp_path / "zoo" / app).mkdir()
        (tmp_path / "zoo" / app / "bundle_properties.py").write_text(
            "from monai.bundle.properties import InferProperties, MetaProperties\n")
    with bundle_importable(root):
        _stand_in_weights(root)
    assert _verify_bundle(models, name, "min") == ["files", "version", "metadata"]
    done = _verify_bundle(models, name, "full")
    assert done[-2:] == ["shapes", "torchscript"] and any(d.startswith("properties:") for d in done)


# ------------------------------------------------------------------------------------------------ zoo unit tests

def test_train_with_zoo_overrides_without_proxy_bundle(trained):
    root = trained["dir"]
    assert (root / "models" / "model.pt").is_file()
    assert "Epoch[1] Complete" in trained["log"] and "Epoch: 2/" not in trained["log"]  # `epochs` took effect
    assert list((root / "logs").glob("events.out.tfevents.*")), "no TensorBoard events written"
    progress = yaml.safe_load((root / "models" / "progress.yaml").read_text())
    assert [e["epoch"] for e in progress] == [1] and 0.0 <= progress[0]["avg_dice_score"] <= 1.0
    assert "Setting logging properties based on config" in trained["log"]  # logging.conf passed MONAI's allowlist


def test_zoo_workflows_in_process(trained, zoo_data):
    """``ConfigWorkflow`` + ``check_properties`` for train, ``[train, evaluate]`` (workflow_type "train") and
    inference with the zoo's inference overrides (``datalist`` as files, ``handlers#0#_disabled_``)."""
    from monai.bundle import ConfigWorkflow

    root = trained["dir"]
    configs = root / "configs"
    common = {"logging_file": str(configs / "logging.conf"), "meta_file": str(configs / "metadata.json"),
              "bundle_root": str(root)}
    with bundle_importable(root):
        trainer = ConfigWorkflow(workflow_type="train", config_file=str(configs / "train.json"), **common,
                                 **trained["zoo"])
        trainer.initialize()
        assert trainer.check_properties() == []
        assert trainer.max_epochs == 1 and len(trainer.train_dataset_data) == 3  # images/labels took effect

        out = root / "eval_zoo"
        evaluator = ConfigWorkflow(workflow_type="train", config_file=[str(configs / "train.json"),
                                                                        str(configs / "evaluate.json")],
                                   **common, **trained["zoo"], output_dir=str(out))
        evaluator.initialize()
        assert evaluator.check_properties() == []
        evaluator.run()
        evaluator.finalize()
        metrics = dict(line.split(",") for line in (out / "metrics.csv").read_text().splitlines() if line.strip())
        assert 0.0 <= float(metrics["val_mean_dice"]) <= 1.0
        assert len((out / "val_mean_dice_raw.csv").read_text().strip().splitlines()) == 1 + 1  # header + 1 case

        images = sorted(str(p) for p in zoo_data.glob("image_*.nii.gz"))[:2]
        masks = root / "infer_zoo"
        inferer = ConfigWorkflow(workflow_type="infer", config_file=str(configs / "inference.json"), **common,
                                 dataset_dir=str(zoo_data), datalist=images, output_dir=str(masks),
                                 **{"handlers#0#_disabled_": True, "inferer#roi_size": trained["roi"],
                                    "num_workers": 0})
        inferer.initialize()
        assert inferer.check_properties() == []
        inferer.run()
        inferer.finalize()
    for image in images:
        mask_path = masks / Path(image).name.replace(".nii.gz", "_seg.nii.gz")
        src, mask = nib.load(image), nib.load(str(mask_path))
        assert mask.shape == src.shape[:3] and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(mask.affine, src.affine, atol=1e-4)
        assert set(np.unique(np.asanyarray(mask.dataobj)).tolist()) <= set(range(trained["classes"]))


def test_evaluate_inference_and_hpo_without_proxy_bundle(trained, no_proxy_bundle, zoo_data):
    root = trained["dir"]
    env = _env(no_proxy_bundle)
    evaluate = _bundle_cli(root, "run", "--config_file", "['configs/train.json','configs/evaluate.json']",
                           *_cli_args(trained["zoo"]), "--output_dir=eval_cli", env=env)
    assert "val_mean_dice" in (root / "eval_cli" / "metrics.csv").read_text(), evaluate.stdout[-2000:]
    # inference from an MSD-layout folder: imagesTs by default
    msd = root.parent / "msd"
    (msd / "imagesTs").mkdir(parents=True)
    shutil.copy(zoo_data / "image_0.nii.gz", msd / "imagesTs" / "case_0.nii.gz")
    _bundle_cli(root, "run", "--config_file", "configs/inference.json", f"--dataset_dir={msd}",
                f"--roi_size={json.dumps(trained['roi'])}", "--num_workers=0", env=env)
    assert (root / "eval" / "case_0_seg.nii.gz").is_file()
    # the search alone needs proxy_bundle, and says so in one line
    proc = _bundle_cli(root, "run", "--config_file", "['configs/train.json','configs/hpo.json']",
                       *_cli_args(trained["zoo"]), env=env, expect=2)
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: configs/hpo.json: needs the proxy_bundle package: pip install proxy-bundle")


def test_multi_gpu_evaluate_over_two_cpu_processes(trained):
    root = trained["dir"]
    configs = "['configs/train.json','configs/evaluate.json','configs/multi_gpu_evaluate.json']"
    _bundle_cli(root, "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run",
                "--config_file", configs, "--meta_file", "configs/metadata.json", *_cli_args(trained["zoo"]),
                "--num_folds=2", "--output_dir=eval_mgpu", env=_env(), launcher=("-m", "torch.distributed.run"))
    # two validation cases, one per process, gathered into one metric and one row per case
    assert "val_mean_dice" in (root / "eval_mgpu" / "metrics.csv").read_text()
    assert len((root / "eval_mgpu" / "val_mean_dice_raw.csv").read_text().strip().splitlines()) == 1 + 2


def test_bad_input_stops_with_one_line(tmp_path, no_proxy_bundle):
    """A NaN image stops training before any work: exit 2, ``error: <file>: <problem>`` last, nothing written."""
    name = "spleen_ct_proxy_segmentation"
    work = tmp_path / name
    shutil.copytree(BUNDLES / name, work, ignore=shutil.ignore_patterns("__pycache__"))
    data = tmp_path / "data"
    data.mkdir()
    for s in range(2):
        image = np.ones((16, 16, 16), np.float32)
        image[0, 0, 0] = np.nan if s == 1 else 0.0
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(data / f"image_{s}.nii.gz"))
        nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.uint8), np.eye(4)), str(data / f"label_{s}.nii.gz"))
    proc = _bundle_cli(work, "run", "--config_file", "configs/train.json",
                       *_cli_args(_zoo_train_overrides(data, [16, 16, 16])), env=_env(no_proxy_bundle), expect=2)
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"error: {data / 'image_1.nii.gz'}: image contains NaN/Inf intensities (1 voxels)"
    assert not (work / "models").exists() and not (work / "logs").exists()


# ------------------------------------------------------------------------------------------------ search

def test_hpo_two_trials(bundle, request):
    root = bundle["dir"]
    phantom = request.getfixturevalue(bundle["fixture"])
    roi = json.dumps(bundle["roi"])
    proc = _bundle_cli(root, "run", "--config_file", "['configs/train.json','configs/hpo.json']",
                       f"--dataset_dir={phantom}", "--num_workers=0", f"--roi_size={roi}", "--num_samples=1",
                       "--batch_size=2", "--sw_batch_size=2", "--val_interval=1", "--epochs=1", "--sw_overlap=0.25",
                       "--hpo#n_trials=2", "--hpo#top_k=1", "--hpo#plots=False", "--hpo#proxy_mode=both", env=_env())
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
    # phase 1 trained the proxy network, phase 2 the bundle's own network; command-line settings reached both
    over1 = yaml.safe_load((Path(phase1[0]["trial_dir"]) / "overrides.yaml").read_text())
    over2 = yaml.safe_load((Path(phase2[0]["trial_dir"]) / "overrides.yaml").read_text())
    assert over1["proxy_width"] < 1.0 and over2["proxy_width"] == 1.0
    assert over1["sw_overlap"] == over2["sw_overlap"] == 0.25 and over1["check_inputs"] is False
    # ... on proxy data: a subset of the split's training cases, validated on the untouched fold 0
    assert over2["proxy_datalist"] is None
    proxy = json.loads(Path(over1["proxy_datalist"]).read_text())
    folds = json.loads((phantom / "datalist.json").read_text())["training"]
    n_train = sum(1 for e in folds if e["fold"] != 0)
    fraction = json.loads((BUNDLES / bundle["name"] / "configs/hpo.json").read_text())["hpo"]["proxy_data"]["fraction"]
    assert len(proxy["training"]) == subset_size(n_train, fraction=fraction) < n_train
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
    # a bad search setting stops the run in one line, before any trial
    proc = _bundle_cli(root, "run", "--config_file", "['configs/train.json','configs/hpo.json']",
                       f"--dataset_dir={phantom}", "--hpo#proxy_mode=half", env=_env(), expect=2)
    assert proc.stderr.strip().splitlines()[-1] == ("error: configs/hpo.json: hpo#proxy_mode: unknown proxy mode "
                                                    "'half'; use one of ['none', 'data', 'network', 'both', 'short']")


def test_bundle_runner_prunes_a_running_trial(spleen_phantom, tmp_path):
    """The runner reports each validation as it happens and kills the training when the search prunes."""
    from proxy_bundle.hpo.bundle_runner import BundleRunner
    from proxy_bundle.hpo.runners import Fidelity

    runner = BundleRunner(BUNDLES / "spleen_ct_proxy_segmentation", env=_env(), poll_s=0.2,
                          base_overrides={"dataset_dir": str(spleen_phantom), "num_workers": 0,
                                          "roi_size": [32, 32, 32], "num_samples": 1, "val_interval": 1})
    reports = []

    def report(epoch: int, dice: float) -> bool:
        reports.append((epoch, dice))
        return True  # prune at the first validation

    result = runner.run({"learning_rate": 1e-3}, Fidelity(name="proxy", width=0.5, epochs=20), tmp_path / "trial",
                        report)
    assert result.pruned and reports[0][0] == 1 and 0.0 <= reports[0][1] <= 1.0
    progress = yaml.safe_load((tmp_path / "trial" / "models" / "progress.yaml").read_text())
    assert progress[-1]["epoch"] < 20, "training ran to the end although the trial was pruned"
