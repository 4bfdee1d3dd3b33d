"""The proxyseg Auto3DSeg template: AutoRunner end to end, config filling, proxy fidelity, algo JSON, resume."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "algorithm_templates"
TEMPLATE = TEMPLATES / "proxyseg"
PROGRESS_KEYS = {"epoch", "avg_dice_score", "best_avg_dice_score", "best_epoch", "elapsed_s", "train_s", "val_s",
                 "resumed_from_epoch", "cpu_s"}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def algo_module():
    if str(TEMPLATES) not in sys.path:
        sys.path.insert(0, str(TEMPLATES))
    from proxyseg.scripts import algo

    return algo


@pytest.fixture(scope="module")
def train_module():
    return _load("proxyseg_train_under_test", TEMPLATE / "scripts" / "train.py")


@pytest.fixture(scope="module")
def pipeline():
    return _load("proxyseg_pipeline_under_test", TEMPLATE / "scripts" / "pipeline.py")


@pytest.fixture
def subprocess_env(monkeypatch):
    """Training subprocesses must import proxy_bundle from this checkout and stay on one thread each."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def _datastats(dataset: Path, out: Path) -> Path:
    from monai.apps.auto3dseg import DataAnalyzer

    path = out / "datastats.yaml"
    analyzer = DataAnalyzer(str(dataset / "datalist.json"), str(dataset), output_path=str(path), device="cpu", worker=0)
    analyzer.get_all_case_stats()
    return path


def _input_yaml(dataset: Path, out: Path, modality: str) -> Path:
    path = out / "input.yaml"
    src = {"modality": modality, "dataroot": str(dataset), "datalist": str(dataset / "datalist.json")}
    path.write_text(yaml.safe_dump(src))
    return path


def _export(algo_module, stats: Path, src: Path, out: Path, fold: int = 0, **kwargs):
    algo = algo_module.ProxysegAlgo(str(TEMPLATES))
    algo.name = "proxyseg"
    algo.set_data_stats(str(stats))
    algo.set_data_source(str(src))
    algo.export_to_disk(str(out), f"proxyseg_{fold}", fold=fold, **kwargs)
    return algo


def _filled(bundle: Path) -> dict:
    return yaml.safe_load((bundle / "configs" / "hyper_parameters.yaml").read_text())


# --- AutoRunner end to end -----------------------------------------------------------------------------------------


def test_autorunner_end_to_end(spleen_phantom, tmp_path, subprocess_env):
    """Unmodified AutoRunner: analyze, algo_gen, train two folds for one epoch, ensemble on the external images."""
    import nibabel as nib
    from monai.apps.auto3dseg import AutoRunner

    datalist = json.loads((spleen_phantom / "datalist.json").read_text())
    external = json.loads((spleen_phantom / "external.json").read_text())
    datalist["testing"] = [{"image": e["image"]} for e in external["testing"]]
    datalist_file = tmp_path / "datalist_with_testing.json"
    datalist_file.write_text(json.dumps(datalist))

    work = tmp_path / "work"
    runner = AutoRunner(
        work_dir=str(work),
        input={"modality": "CT", "dataroot": str(spleen_phantom), "datalist": str(datalist_file)},
        templates_path_or_url=str(TEMPLATES),
    )
    runner.set_num_fold(2)
    runner.set_training_params({"num_epochs": 1, "num_workers": 0, "network#init_filters": 4})
    runner.set_analyze_params({"device": "cpu", "worker": 0, "do_ccp": False})
    runner.set_device_info(cmd_prefix=sys.executable)
    runner.run()

    for fold in (0, 1):
        bundle = work / f"proxyseg_{fold}"
        saved = json.loads((bundle / "algo_object.json").read_text())
        assert saved["_target_"] == "proxyseg.scripts.algo.ProxysegAlgo"
        progress = yaml.safe_load((bundle / "model" / "progress.yaml").read_text())
        assert [set(p) for p in progress] == [PROGRESS_KEYS]
        assert saved["best_metric"] == pytest.approx(progress[-1]["best_avg_dice_score"])
        assert (bundle / "model" / "model.pt").is_file()
        assert _filled(bundle)["fold"] == fold

    outputs = sorted((work / "ensemble_output").rglob("*.nii.gz"))
    assert len(outputs) == len(external["testing"])
    for entry in external["testing"]:
        stem = Path(entry["image"]).name.replace(".nii.gz", "")
        out = next(o for o in outputs if o.name.startswith(stem))
        label = nib.load(str(out))
        assert label.shape == nib.load(str(spleen_phantom / entry["image"])).shape
        assert set(label.get_fdata().astype(int).ravel().tolist()) <= {0, 1}


def test_algos_dict_form_generates_bundles(spleen_phantom, tmp_path):
    """The ``algos={"proxyseg": {"_target_": ..., "template_path": ...}}`` form of AutoRunner (no training)."""
    from monai.apps.auto3dseg import AutoRunner

    work = tmp_path / "work"
    runner = AutoRunner(
        work_dir=str(work),
        input={"modality": "CT", "dataroot": str(spleen_phantom), "datalist": str(spleen_phantom / "datalist.json")},
        algos={"proxyseg": {"_target_": "proxyseg.scripts.algo.ProxysegAlgo", "template_path": str(TEMPLATES)}},
        train=False,
        ensemble=False,
    )
    runner.set_num_fold(1)
    runner.set_analyze_params({"device": "cpu", "worker": 0, "do_ccp": False})
    runner.run()
    bundle = work / "proxyseg_0"
    assert json.loads((bundle / "algo_object.json").read_text())["_target_"] == "proxyseg.scripts.algo.ProxysegAlgo"
    assert _filled(bundle)["bundle_root"] == str(bundle)
    assert (bundle / "scripts" / "train.py").is_file()


# --- fill_template_config ------------------------------------------------------------------------------------------


def test_fill_template_config_ct(spleen_phantom, spleen_stats, tmp_path, algo_module):
    stats = yaml.safe_load(spleen_stats[0].read_text())["stats_summary"]
    _export(algo_module, *spleen_stats, tmp_path, fold=1)
    cfg = _filled(tmp_path / "proxyseg_1")

    assert cfg["modality"] == "ct" and cfg["fold"] == 1
    assert cfg["spacing"] == pytest.approx(stats["image_stats"]["spacing"]["median"])
    fg = stats["image_foreground_stats"]["intensity"]
    assert cfg["intensity"]["mode"] == "range" and cfg["intensity"]["clip"] is True
    assert cfg["intensity"]["a_min"] == pytest.approx(fg["percentile_00_5"])
    assert cfg["intensity"]["a_max"] == pytest.approx(fg["percentile_99_5"])
    assert cfg["output_classes"] == 2 and cfg["input_channels"] == 1
    levels = len(cfg["network"]["blocks_down"])
    assert all(r % 2 ** (levels - 1) == 0 for r in cfg["roi_size"])
    assert cfg["num_epochs"] == algo_module.choose_epochs(stats["n_cases"])
    assert cfg["data_file_base_dir"] == str(spleen_phantom)
    assert cfg["proxy"]["enabled"] is False and cfg["proxy"]["datalist"] is None
    # one preprocessing cache per dataset analysis, shared by all folds and trials
    assert cfg["cache_dir"] == str(spleen_stats[0].parent / "preprocessed_cache")


def test_fill_template_config_mr_with_proxy_data(prostate_phantom, tmp_path, algo_module):
    stats_file = _datastats(prostate_phantom, tmp_path)
    stats = yaml.safe_load(stats_file.read_text())
    stats["proxy_data"] = {
        "metric": "mutual_information",
        "mode": "image",
        "strategy": "top_k",
        "selected": ["prostate_000", "prostate_003"],
        "datalist": "proxy/datalist_proxy.json",  # relative to the datastats folder
    }
    stats_file.write_text(yaml.safe_dump(stats))
    algo = _export(algo_module, stats_file, _input_yaml(prostate_phantom, tmp_path, "MRI"), tmp_path)
    cfg = _filled(tmp_path / "proxyseg_0")

    assert cfg["modality"] == "mri"
    assert cfg["intensity"]["mode"] == "meanstd"
    assert cfg["output_classes"] == 3
    assert cfg["spacing"] == pytest.approx(stats["stats_summary"]["image_stats"]["spacing"]["median"])
    assert cfg["proxy"]["datalist"] == str(tmp_path / "proxy" / "datalist_proxy.json")
    assert cfg["proxy"]["selection"] == {
        "metric": "mutual_information", "mode": "image", "strategy": "top_k", "num_selected": 2
    }
    assert cfg["proxy"]["enabled"] is False  # selection recorded; a search switches it on per trial
    assert algo.proxy_data["selected"] == ["prostate_000", "prostate_003"]


def test_roi_and_levels_rules(algo_module):
    assert algo_module.choose_levels([512, 512, 90]) == 5
    assert algo_module.choose_levels([33, 33, 12]) == 2
    assert algo_module.choose_roi([512, 512, 90], 5) == [96, 96, 96]
    assert algo_module.choose_roi([33, 33, 12], 2) == [34, 34, 12]
    assert algo_module.choose_epochs(8) == algo_module.MAX_EPOCHS
    assert algo_module.choose_epochs(10**6) == algo_module.MIN_EPOCHS


# --- algo_object.json round trip -----------------------------------------------------------------------------------


def test_algo_json_round_trip(spleen_stats, tmp_path, algo_module):
    from monai.auto3dseg.utils import algo_from_json, algo_to_json

    algo = _export(algo_module, *spleen_stats, tmp_path)
    algo.proxy_data = {"metric": "ssim", "datalist": "/x/proxy.json", "selected": ["a", "b"]}
    path = algo_to_json(algo, template_path=str(TEMPLATES), score=0.5)
    loaded, meta = algo_from_json(path)

    assert type(loaded).__name__ == "ProxysegAlgo"
    assert loaded.proxy_data == algo.proxy_data
    assert loaded.fill_records == json.loads(json.dumps(algo.fill_records))
    assert loaded.output_path == algo.output_path and loaded.name == "proxyseg"
    assert meta["score"] == 0.5


# --- training: proxy on/off, resume, progress contract -------------------------------------------------------------


@pytest.fixture(scope="module")
def spleen_stats(spleen_phantom, tmp_path_factory) -> tuple[Path, Path]:
    """DataAnalyzer output and data source config of the spleen phantom (computed once)."""
    out = tmp_path_factory.mktemp("spleen_stats")
    return _datastats(spleen_phantom, out), _input_yaml(spleen_phantom, out, "CT")


@pytest.fixture
def bundle(spleen_stats, tmp_path, algo_module):
    _export(algo_module, *spleen_stats, tmp_path)
    return tmp_path / "proxyseg_0"


def _config(bundle: Path) -> str:
    return str(bundle / "configs" / "hyper_parameters.yaml")


def _timing(bundle: Path) -> dict:
    return yaml.safe_load((bundle / "model" / "timing.yaml").read_text())


def _assert_tensorboard(log_dir: Path) -> None:
    """The run's TensorBoard log has per-class validation Dice and the run's hparams with its best Dice."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags, plugins = set(), set()
    for events in log_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                tags.add(value.tag)
                plugins.add(value.metadata.plugin_data.plugin_name)
    assert {"train/loss", "val/avg_dice", "val/dice/class_1", "hparam/best_avg_dice"} <= tags, tags
    assert "hparams" in plugins


def test_proxy_on_off(bundle, spleen_phantom, train_module, pipeline):
    from proxy_bundle.networks.scaling import ProxySpec, scaled_network

    datalist = json.loads((spleen_phantom / "datalist.json").read_text())
    proxy_items = [e for e in datalist["training"] if e["fold"] != 0][:3]
    proxy_file = bundle.parent / "proxy_datalist.json"
    proxy_file.write_text(json.dumps({"training": proxy_items}))
    common = {"num_epochs": 1, "num_workers": 0, "network#init_filters": 8}

    train_module.run(_config(bundle), **common)
    full = _timing(bundle)
    _assert_tensorboard(bundle / "model")
    proxy_ckpt = str(bundle / "proxy_model")
    train_module.run(
        _config(bundle), ckpt_path=proxy_ckpt, **common,
        **{"proxy#enabled": True, "proxy#width": 0.5, "proxy#blocks": 0.5, "proxy#datalist": str(proxy_file)},
    )
    proxy = yaml.safe_load((Path(proxy_ckpt) / "timing.yaml").read_text())

    n_val = sum(e["fold"] == 0 for e in datalist["training"])
    assert full["num_train_cases"] == len(datalist["training"]) - n_val
    assert proxy["num_train_cases"] == len(proxy_items)
    assert proxy["num_val_cases"] == full["num_val_cases"] == n_val

    cfg = _filled(bundle)
    blocks_down = tuple(cfg["network"]["blocks_down"])
    base = {"spatial_dims": 3, "init_filters": 8, "in_channels": 1, "out_channels": 2, "norm": "INSTANCE", "dsdepth": 1,
            "blocks_down": blocks_down, "blocks_up": (1,) * (len(blocks_down) - 1)}
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert full["num_parameters"] == count(scaled_network("segresnetds", base, ProxySpec()))
    assert proxy["num_parameters"] == count(scaled_network("segresnetds", base, ProxySpec(width=0.5, blocks=0.5)))
    assert proxy["num_parameters"] < full["num_parameters"]


def test_resume_and_progress(bundle, train_module):
    common = {"num_workers": 0, "network#init_filters": 4}
    train_module.run(_config(bundle), num_epochs=1, **common)
    first = yaml.safe_load((bundle / "model" / "progress.yaml").read_text())
    train_module.run(_config(bundle), num_epochs=2, **common)
    progress = yaml.safe_load((bundle / "model" / "progress.yaml").read_text())

    assert [p["epoch"] for p in progress] == [1, 2]
    assert progress[0] == first[0]  # the first epoch was not re-run
    assert _timing(bundle)["epochs_run"] == 1
    assert all(set(p) == PROGRESS_KEYS for p in progress)
    assert progress[-1]["best_avg_dice_score"] == max(p["avg_dice_score"] for p in progress)
    assert progress[1]["elapsed_s"] >= progress[0]["elapsed_s"]

    # a changed hyper-parameter is a different run: it starts afresh instead of resuming
    train_module.run(_config(bundle), num_epochs=1, learning_rate=5e-4, **common)
    assert [p["epoch"] for p in yaml.safe_load((bundle / "model" / "progress.yaml").read_text())] == [1]

    # In-process entry with a validation schedule (every 2nd epoch and the last): a run stopped after an epoch
    # that did not validate resumes from that epoch's last.pt.
    seen = []
    settings = {"num_epochs": 3, "num_epochs_per_validation": 2, "learning_rate": 1e-3, **common}
    assert train_module.train(_config(bundle), settings, on_epoch=lambda e, entry: seen.append(
        (e, entry is not None)) or e == 1) == []
    history = train_module.train(_config(bundle), settings, on_epoch=lambda e, entry: seen.append(
        (e, entry is not None)) and False)
    assert seen == [(1, False), (2, True), (3, True)] and [p["epoch"] for p in history] == [2, 3]
    assert _timing(bundle)["epochs_run"] == 2 and history[-1]["resumed_from_epoch"] == 1
    assert history[-1]["val_s"] > 0 and history[-1]["train_s"] > 0


def test_bad_proxy_datalist_is_one_line_error(bundle, train_module, pipeline):
    cfg = dict(pipeline.settings(pipeline.load_config(_config(bundle))))
    cfg["proxy"] = {**cfg["proxy"], "enabled": True, "datalist": str(bundle / "missing.json")}
    with pytest.raises(pipeline.ConfigError, match="missing.json: proxy datalist not found"):
        pipeline.split_datalists(cfg)
    cfg["proxy"]["enabled"] = False
    cfg["fold"] = 99
    with pytest.raises(pipeline.ConfigError, match="no training entry has fold 99"):
        pipeline.split_datalists(cfg)


def test_train_cli_bad_input_exits_2(bundle, train_module, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train.py", "run", f"--config_file={_config(bundle)}", "--fold=99"])
    with pytest.raises(SystemExit) as exc:
        train_module._main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "fold 99" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_infer_class_returns_probabilities(bundle, spleen_phantom, train_module):
    import nibabel as nib
    import torch

    # deep supervision on: training combines the heads' losses, inference uses the full-resolution head only
    train_module.run(_config(bundle), num_epochs=1, num_workers=0, **{"network#init_filters": 4, "network#dsdepth": 2})
    infer_module = _load("proxyseg_infer_under_test", bundle / "scripts" / "infer.py")
    configs = [str(p) for p in (bundle / "configs").iterdir()]
    inferer = infer_module.InferClass(configs, rank=0, image_save_func={"_target_": "SaveImage"})
    image = spleen_phantom / json.loads((spleen_phantom / "datalist.json").read_text())["training"][0]["image"]
    prob = inferer.infer(str(image))
    assert type(prob).__name__ == "MetaTensor"
    assert tuple(prob.shape) == (2, *nib.load(str(image)).shape)
    assert torch.allclose(prob.sum(0), torch.ones(prob.shape[1:]), atol=1e-4)


def test_analyze_proxy_data_drives_proxy_training(spleen_phantom, tmp_path, algo_module, train_module):
    """``python -m proxy_bundle analyze`` output -> filled proxy#datalist -> proxy training on exactly that subset."""
    from proxy_bundle.selection.analyzer import analyze

    work = tmp_path / "work"
    src = _input_yaml(spleen_phantom, tmp_path, "CT")
    analyze(str(src), str(work), count=3, fold=0, device="cpu", progress=False)
    section = yaml.safe_load((work / "datastats.yaml").read_text())["proxy_data"]
    algo = _export(algo_module, work / "datastats.yaml", src, work)
    cfg = _filled(work / "proxyseg_0")
    assert cfg["proxy"]["datalist"] == section["datalist"]
    assert cfg["proxy"]["selection"]["num_selected"] == len(section["selected"]) == 3
    assert algo.proxy_data["selected"] == section["selected"]

    train_module.run(_config(work / "proxyseg_0"), num_epochs=1, num_workers=0,
                     **{"proxy#enabled": "true", "network#init_filters": 4})
    assert _timing(work / "proxyseg_0")["num_train_cases"] == 3


def test_dataloader_workers_with_deep_cache_dir(bundle, tmp_path):
    # DataLoader workers create sockets under the temp dir; a cache on a long path must not redirect them there.
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "cache"
    cmd = [sys.executable, str(bundle / "scripts" / "train.py"), "run", f"--config_file={_config(bundle)}",
           "--num_epochs=1", "--num_workers=2", "--network#init_filters=4", f"--cache_dir={deep}",
           f"--ckpt_path={tmp_path / 'ckpt'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert yaml.safe_load((tmp_path / "ckpt" / "progress.yaml").read_text())[-1]["epoch"] == 1
    assert not list(deep.glob("*/.tmp/*"))  # nothing left half-written


def test_default_configuration_learns(bundle, train_module):
    """The template's defaults (only the network shrunk for CPU) learn within a short run: the validation Dice
    rises from its first epoch to well above the trivial score, and the best epoch is not the first."""
    train_module.run(_config(bundle), num_epochs=12, num_workers=0, **{"network#init_filters": 8})
    progress = yaml.safe_load((bundle / "model" / "progress.yaml").read_text())
    dice = [p["avg_dice_score"] for p in progress]
    assert len(dice) == 12
    assert max(dice) >= 0.5, dice
    assert progress[-1]["best_epoch"] > 1 and dice[-1] > dice[0] + 0.3, dice
