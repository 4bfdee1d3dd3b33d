"""The one set of proxy-search defaults is the same in hpo, study, the template and the bundles' hpo configs."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import yaml

from proxy_bundle import defaults as D

ROOT = Path(__file__).resolve().parents[1]


def test_hpo_and_study_use_the_defaults():
    from proxy_bundle.hpo.command import hpo
    from proxy_bundle.study.command import study
    from proxy_bundle.study.plan import SHORT_BUDGETS, WIDTHS

    h = inspect.signature(hpo).parameters
    assert (h["proxy"].default, h["width"].default, h["blocks"].default, h["data_fraction"].default,
            h["top_k"].default) == (D.PROXY_MODE, D.PROXY_WIDTH, D.PROXY_BLOCKS, D.DATA_FRACTION, D.TOP_K)
    s = inspect.signature(study).parameters
    assert (s["blocks"].default, s["data_fraction"].default) == (D.PROXY_BLOCKS, D.DATA_FRACTION)
    assert D.PROXY_WIDTH in WIDTHS  # the study measures the default proxy network
    assert D.SHORT_FRACTION in SHORT_BUDGETS  # ... and the default short training


def test_template_and_bundles_repeat_the_defaults():
    cfg = yaml.safe_load((ROOT / "algorithm_templates/proxyseg/configs/hyper_parameters.yaml").read_text())
    assert (cfg["proxy"]["width"], cfg["proxy"]["blocks"]) == (D.PROXY_WIDTH, D.PROXY_BLOCKS)
    found = sorted((ROOT / "bundles").glob("*/configs/hpo.json"))
    assert found
    for path in found:
        h = json.loads(path.read_text())["hpo"]
        assert (h["proxy_network"]["width"], h["proxy_network"]["blocks"]) == (D.PROXY_WIDTH, D.PROXY_BLOCKS), path
        assert h["proxy_data"]["fraction"] == D.DATA_FRACTION and h["top_k"] == D.TOP_K, path
        assert h["proxy_mode"] == D.PROXY_MODE and h["pruner"] == "none", path


def test_bundle_search_fidelities_follow_the_proxy_mode(spleen_phantom, tmp_path, monkeypatch):
    """hpo#proxy is built from hpo#proxy_mode as `hpo --proxy` builds it; no selection runs unless data is used."""
    from monai.bundle import ConfigParser

    from proxy_bundle.errors import InputError

    root = ROOT / "bundles" / "spleen_ct_proxy_segmentation"
    monkeypatch.syspath_prepend(str(root))  # the bundle's own scripts/, as `monai.bundle run` has them

    def proxy(**overrides):
        parser = ConfigParser()
        parser.read_config([str(root / "configs/train.json"), str(root / "configs/hpo.json")])
        parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(spleen_phantom), **overrides})
        return parser.get_parsed_content("hpo#proxy")

    short = proxy()
    assert (short.name, short.epochs, short.width, short.datalist) == ("proxy-short", 75, 1.0, None)
    assert proxy(**{"hpo#proxy_epochs": 10}).epochs == 10
    net = proxy(**{"hpo#proxy_mode": "network"})
    assert (net.name, net.width, net.epochs, net.datalist) == ("proxy-network", D.PROXY_WIDTH, 300, None)
    given = proxy(**{"hpo#proxy_mode": "both", "hpo#proxy_data#datalist": "/data/proxy.json"})
    assert (given.datalist, given.width) == ("/data/proxy.json", D.PROXY_WIDTH)
    with pytest.raises(Exception) as info:  # ConfigParser wraps it
        proxy(**{"hpo#proxy_mode": "half"})
    err = info.value
    while err is not None and not isinstance(err, InputError):
        err = err.__cause__
    assert err is not None and str(err).startswith("configs/hpo.json: hpo#proxy_mode: unknown proxy mode 'half'")
