"""Template adapters for MONAI's Auto3DSeg templates, export settings, the study link, and the built wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from proxy_bundle.errors import InputError
from proxy_bundle.hpo.link import final_record
from proxy_bundle.hpo.runners import Fidelity
from proxy_bundle.templates.adapters import ADAPTERS, adapter_for, read_accuracy_history, set_config_values
from proxy_bundle.templates.export import winner_settings

REPO = Path(__file__).resolve().parents[1]
# MONAI's templates (offline copy) live next to the repository: ../shared/monai/algorithm_templates.
MONAI_TEMPLATES = Path(os.environ.get("PROXY_BUNDLE_MONAI_TEMPLATES",
                                      REPO.parent / "shared" / "monai" / "algorithm_templates"))
needs_monai_templates = pytest.mark.skipif(not (MONAI_TEMPLATES / "segresnet" / "scripts" / "algo.py").is_file(),
                                           reason=f"MONAI's algorithm templates not found at {MONAI_TEMPLATES}")


def _bundle(tmp_path: Path, template: str) -> Path:
    dest = tmp_path / template
    shutil.copytree(MONAI_TEMPLATES / template / "configs", dest / "configs")
    return dest


def test_accuracy_history_skips_headers_and_partial_rows(tmp_path):
    (tmp_path / "accuracy_history.csv").write_text(
        "epoch\tmetric\tloss\n0\t0.1000\t2.0\n1\t0.2500\t1.5\nepoch\tmetric\tloss\n2\t0.3")
    assert read_accuracy_history(tmp_path) == [(0, 0.1), (1, 0.25), (2, 0.3)]
    assert ADAPTERS["segresnet"].read_scores(tmp_path) == [(1, 0.1), (2, 0.25), (3, 0.3)]  # 0-based epochs
    assert ADAPTERS["swinunetr"].read_scores(tmp_path) == [(0, 0.1), (1, 0.25), (2, 0.3)]  # epochs done
    assert read_accuracy_history(tmp_path / "missing") == []


def test_every_monai_template_has_an_adapter_and_proxyseg_none():
    assert set(ADAPTERS) == {"segresnet", "segresnet2d", "swinunetr", "dints"}
    assert adapter_for("proxyseg") is None


@needs_monai_templates
def test_network_overrides_use_each_templates_own_knobs(tmp_path):
    seg = ADAPTERS["segresnet"].network_overrides(_bundle(tmp_path, "segresnet"),
                                                  Fidelity("p", width=0.25, blocks=0.5, levels=3))
    assert seg["network#init_filters"] == 8 and seg["network#blocks_down"] == [1, 1, 1]
    assert seg["network#dsdepth"] == 2
    swin = ADAPTERS["swinunetr"]
    b = _bundle(tmp_path, "swinunetr")
    # feature_size stays a multiple of 12 (MONAI's SwinUNETR requirement): 48 x 0.3 -> 12, 48 x 0.6 -> 24.
    assert swin.network_overrides(b, Fidelity("p", width=0.3))["network#feature_size"] == 12
    assert swin.network_overrides(b, Fidelity("p", width=0.6))["network#feature_size"] == 24
    with pytest.raises(InputError, match="fixed 4-stage"):
        swin.network_overrides(b, Fidelity("p", width=0.5, levels=3))
    dints = ADAPTERS["dints"]
    assert dints.network_overrides(_bundle(tmp_path, "dints"), Fidelity("p", width=0.5)) == {
        "training_network#dints_space#channel_mul": 0.5}
    with pytest.raises(InputError, match="only the network width"):
        dints.check_fidelity(Fidelity("p", width=0.5, blocks=0.5))
    assert ADAPTERS["segresnet"].network_overrides(b, Fidelity("full")) == {}


@needs_monai_templates
def test_set_config_values_writes_into_the_file_that_owns_the_key(tmp_path):
    b = _bundle(tmp_path, "swinunetr")
    set_config_values(b, {"network#feature_size": 24, "learning_rate": 1e-3, "num_epochs_per_validation": 1})
    net = yaml.safe_load((b / "configs" / "network.yaml").read_text())
    hp = yaml.safe_load((b / "configs" / "hyper_parameters.yaml").read_text())
    assert net["network"]["feature_size"] == 24 and "network" not in hp
    assert hp["learning_rate"] == 1e-3 and hp["num_epochs_per_validation"] == 1


def test_winner_settings_drop_trial_only_keys():
    got = winner_settings({"ckpt_path": "/x/model", "fold": 0, "cache_dir": "/c", "proxy#enabled": False,
                           "num_epochs": 5, "learning_rate": 1.0}, {"learning_rate": 2.0})
    assert got == {"num_epochs": 5, "learning_rate": 2.0}


def test_final_record_names_the_phase2_study():
    rec = final_record({"study": "s", "best": {"score": 0.8, "params": {"lr": 1}, "trial": 0, "phase": 2,
                                                "proxy_score": 0.7, "model_path": "/m.pt"}}, "s-phase2")
    assert rec["study"] == "s-phase2" and rec["value"] == 0.8 and rec["params"] == {"lr": 1}


def test_wheel_ships_templates_and_bundles(tmp_path):
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    src = tmp_path / "src"
    # Build from a copy of the tracked files only (what a clone has), not this checkout's build leftovers.
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        rel = name.decode()
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, capture_output=True)
    (whl,) = wheels.glob("proxy_bundle-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    tracked = {n.decode() for n in files if n}
    for rel in tracked:
        if rel.startswith(("algorithm_templates/", "bundles/")):
            assert f"proxy_bundle/{rel}" in names, rel
    assert "proxy_bundle/algorithm_templates/proxyseg/scripts/algo.py" in names
    assert not any("__pycache__" in n for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(whl)],
                   check=True, capture_output=True)
    probe = ("from proxy_bundle.templates import templates_dir, bundles_dir; "
             "from proxy_bundle.hpo.command import templates_dir as pick; from pathlib import Path; "
             "t = pick(None, Path('.'), 'proxyseg'); print(t); print(bundles_dir())")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert Path(out[0]) == target / "proxy_bundle" / "algorithm_templates"
    assert (Path(out[0]) / "proxyseg" / "scripts" / "algo.py").is_file()
    assert Path(out[1]) == target / "proxy_bundle" / "bundles" and any(Path(out[1]).iterdir())
