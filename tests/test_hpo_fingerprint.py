"""A search is identified by every setting that changes its results; a changed one is refused in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from proxy_bundle.errors import InputError
from proxy_bundle.hpo.fingerprint import check_unchanged, first_difference, search_identity, template_identity

REPO = Path(__file__).resolve().parents[1]


def test_template_identity_changes_with_any_template_file(tmp_path: Path):
    tpl = tmp_path / "proxyseg"
    shutil.copytree(REPO / "algorithm_templates" / "proxyseg", tpl)
    before = template_identity(tpl)
    (tpl / "scripts" / "__pycache__").mkdir(exist_ok=True)
    (tpl / "scripts" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    assert template_identity(tpl) == before
    cfg = tpl / "configs" / "hyper_parameters.yaml"
    cfg.write_text(cfg.read_text().replace("init_filters: 32", "init_filters: 16"))
    assert template_identity(tpl) != before


def test_locations_are_not_settings():
    a = search_identity(data="d" * 64, fold=0, template="t" * 64,
                        overrides={"cache_dir": "/tmp/a", "num_workers": 0, "roi_size": [32, 32, 32]})
    b = search_identity(data="d" * 64, fold=0, template="t" * 64,
                        overrides={"cache_dir": "/elsewhere", "num_workers": 0, "roi_size": (32, 32, 32)})
    assert a == b and first_difference(a, b) is None


@pytest.mark.parametrize("change, flag", [
    ({"fold": 1}, "--fold was 0, now 1"),
    ({"overrides": {"num_workers": 2, "roi_size": [32, 32, 32]}}, "--num_workers was 0, now 2"),
    ({"overrides": {"num_workers": 0, "roi_size": [64, 64, 64]}}, "--overrides roi_size was [32, 32, 32], now [64, 64, 64]"),
    ({"data": "e" * 64}, "--input (the datalist or its files) was dddddddddddd, now eeeeeeeeeeee"),
    ({"template": "u" * 64}, "--algo/--templates (template files) was"),
    ({"proxy": {"name": "proxy-both", "width": 0.25}}, "--width was 0.5, now 0.25"),
    ({"seed": 4}, "--seed was 3, now 4"),
])
def test_a_changed_setting_is_refused_naming_its_flag(change, flag):
    stored = {**search_identity(data="d" * 64, fold=0, template="t" * 64,
                                overrides={"num_workers": 0, "roi_size": [32, 32, 32]}),
              "proxy": {"name": "proxy-both", "width": 0.5}, "seed": 3}
    asked = {**stored, **change}
    check_unchanged("proxyseg-both", stored, stored, where="db")  # same settings: resumes
    check_unchanged("proxyseg-both", None, asked, where="db")  # a new study: nothing to compare
    with pytest.raises(InputError) as info:
        check_unchanged("proxyseg-both", stored, asked, where="sqlite:///w/hpo/study.db")
    msg = str(info.value)
    assert "\n" not in msg and flag in msg, msg
    assert msg.startswith("sqlite:///w/hpo/study.db: study 'proxyseg-both' was started with other settings: ")
    assert msg.endswith("start a new search with --study_name NAME (or another --work_dir)")


def test_data_and_fold_are_named_before_the_search_settings():
    stored = {"data": "a", "fold": 0, "seed": 1, "space": {"lr": 1}}
    asked = {"data": "a", "fold": 2, "seed": 9, "space": {"lr": 2}}
    assert first_difference(stored, asked) == ("fold", 0, 2)


def test_search_refuses_a_changed_identity_and_prints_one_line_per_trial(tmp_path, capsys):
    import sys

    from proxy_bundle.hpo.engine import TwoPhaseSearch
    from proxy_bundle.hpo.runners import CommandRunner

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    try:
        from hpo_toy_search import config
    finally:
        sys.path.remove(str(here))
    url = f"sqlite:///{tmp_path / 's.db'}"
    runner = CommandRunner([sys.executable, str(here / "hpo_toy_trainer.py"), "run"], poll_s=0.05)
    identity = search_identity(data="d" * 64, fold=0, template="t" * 64, overrides={"num_workers": 0})
    first = config(str(tmp_path / "a"), n_trials=2, top_k=1)
    first.identity = identity
    TwoPhaseSearch(first, runner, url).run()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("phase ")]
    assert [line.split(":")[0] for line in lines] == [
        "phase 1 trial 0 (proxy-both)", "phase 1 trial 1 (proxy-both)", "phase 2 trial 0 (full)"]
    assert all(" Dice 0." in line and "; best so far 0." in line for line in lines), lines

    changed = config(str(tmp_path / "a"), n_trials=2, top_k=1)
    changed.identity = {**identity, "fold": 1}
    with pytest.raises(InputError) as info:
        TwoPhaseSearch(changed, runner, url).run()
    assert "study 'toy' was started with other settings: --fold was 0, now 1;" in str(info.value)
