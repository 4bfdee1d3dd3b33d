"""The one set of proxy-search defaults is the same in hpo, study, the template and the bundles' hpo configs."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import yaml

from proxy_bundle import defaults as D

ROOT = Path(__file__).resolve().parents[1]


def test_hpo_and_study_use_the_defaults():
    from proxy_bundle.hpo.command import hpo
    from proxy_bundle.study.command import study
    from proxy_bundle.study.plan import WIDTHS

    h = inspect.signature(hpo).parameters
    assert (h["width"].default, h["blocks"].default, h["data_fraction"].default, h["top_k"].default) == \
        (D.PROXY_WIDTH, D.PROXY_BLOCKS, D.DATA_FRACTION, D.TOP_K)
    s = inspect.signature(study).parameters
    assert (s["blocks"].default, s["data_fraction"].default) == (D.PROXY_BLOCKS, D.DATA_FRACTION)
    assert D.PROXY_WIDTH in WIDTHS  # the study measures the default proxy network


def test_template_and_bundles_repeat_the_defaults():
    cfg = yaml.safe_load((ROOT / "algorithm_templates/proxyseg/configs/hyper_parameters.yaml").read_text())
    assert (cfg["proxy"]["width"], cfg["proxy"]["blocks"]) == (D.PROXY_WIDTH, D.PROXY_BLOCKS)
    found = sorted((ROOT / "bundles").glob("*/configs/hpo.json"))
    assert found
    for path in found:
        h = json.loads(path.read_text())["hpo"]
        assert (h["proxy"]["width"], h["proxy"]["blocks"]) == (D.PROXY_WIDTH, D.PROXY_BLOCKS), path
        assert h["proxy_data"]["fraction"] == D.DATA_FRACTION and h["top_k"] == D.TOP_K, path
