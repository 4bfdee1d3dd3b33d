"""``select`` and ``analyze`` end to end on the spleen phantom (8 cases, 32^3; fold 0 holds 2 cases)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from proxy_bundle.errors import InputError
from proxy_bundle.selection import run_selection, select

REPO = Path(__file__).resolve().parents[1]
FAST = {"grid": 16, "bins": 16, "progress": False}


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def test_select_end_to_end_keeps_validation_fold(spleen_phantom: Path, tmp_path: Path):
    datalist = spleen_phantom / "datalist.json"
    source = _read(datalist)
    out = tmp_path / "proxy.json"
    select(str(datalist), data_fraction=0.5, out=str(out), **FAST)

    proxy = _read(out)
    scores = _read(tmp_path / "proxy_scores.json")
    val = [e for e in source["training"] if e["fold"] == 0]
    candidates = [e for e in source["training"] if e["fold"] != 0]
    assert set(proxy) == set(source)
    assert proxy["training"][: len(val)] == val  # the validation fold, untouched and complete
    chosen = proxy["training"][len(val):]
    k = int(np.floor(0.5 * len(candidates) + 0.5))
    assert len(chosen) == k
    chosen_images = {e["image"] for e in chosen}
    assert chosen_images <= {e["image"] for e in candidates}
    folds = {e["fold"] for e in proxy["training"]}
    assert folds == set(range(len(folds)))  # still a valid Auto3DSeg datalist

    prov = scores["provenance"]
    assert prov["datalist_sha256"] == hashlib.sha256(datalist.read_bytes()).hexdigest()
    assert (prov["metric"], prov["mode"], prov["strategy"], prov["fraction"], prov["seed"]) == (
        "mi", "roi", "representative", 0.5, 0)
    assert (prov["grid"], prov["bins"], prov["validation"]) == (16, 16, {"kind": "fold", "fold": 0, "n_cases": 2})
    sim = np.array(scores["similarity"])
    assert sim.shape == (len(candidates), len(candidates))
    np.testing.assert_allclose(sim, sim.T)
    rows = scores["cases"]
    assert [r["image"] for r in rows] == [e["image"] for e in candidates]
    assert {r["image"] for r in rows if r["selected"]} == chosen_images
    top = sorted(rows, key=lambda r: -r["score"])[:k]  # representative = the k highest mean similarities
    assert {r["image"] for r in top} == chosen_images
    np.testing.assert_allclose([r["score"] for r in rows], (sim.sum(1) - np.diag(sim)) / (len(rows) - 1))


@pytest.mark.parametrize("metric, strategy, mode", [("ncc", "coverage", "image"), ("nmi", "diverse", "roi")])
def test_select_is_deterministic(spleen_phantom: Path, metric, strategy, mode):
    kwargs = dict(count=3, metric=metric, strategy=strategy, mode=mode, **FAST)
    a = run_selection(spleen_phantom / "datalist.json", **kwargs)
    b = run_selection(spleen_phantom / "datalist.json", **kwargs)
    assert a.proxy_datalist == b.proxy_datalist and a.scores == b.scores
    assert len(a.selected) == 3


def test_random_strategy_depends_only_on_seed(spleen_phantom: Path):
    runs = [run_selection(spleen_phantom / "datalist.json", count=3, strategy="random", metric="ncc", seed=s,
                          mode="image", **FAST).selected for s in (0, 0, 1, 2, 3)]
    assert runs[0] == runs[1]
    assert any(r != runs[0] for r in runs[2:])


def test_empty_label_falls_back_to_image_mode(spleen_phantom: Path, tmp_path: Path):
    source = _read(spleen_phantom / "datalist.json")
    entries = []
    for e in source["training"]:
        entries.append({**e, "image": str(spleen_phantom / e["image"]), "label": str(spleen_phantom / e["label"])})
    victim = next(e for e in entries if e["fold"] != 0)
    img = nib.load(victim["label"])
    empty = tmp_path / "empty_label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(img.shape, dtype=np.uint8), img.affine), str(empty))
    victim["label"] = str(empty)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": entries}))

    result = run_selection(datalist, fraction=0.5, modality="CT", **FAST)
    name = Path(victim["image"]).name.replace(".nii.gz", "")
    row = next(r for r in result.scores["cases"] if r["id"] == name)
    assert row["mode_used"] == "image"
    assert result.scores["summary"]["fallback_cases"] == [name]
    assert any(name in w and "empty label" in w for w in result.warnings)


def test_mr_uses_percentile_scaling(prostate_phantom: Path):
    result = run_selection(prostate_phantom / "datalist.json", fraction=0.5, metric="nmi", strategy="coverage",
                           **FAST)
    prov = result.scores["provenance"]
    assert prov["modality"] == "mr" and prov["mr_percentiles"] == [0.5, 99.5]
    assert prov["modality_source"].endswith("dataset.json")
    sim = np.array(result.scores["similarity"])
    assert np.allclose(np.diag(sim), 1.0) and (sim >= 0).all() and (sim <= 1).all()


def test_validation_list_keeps_all_training_as_candidates(spleen_phantom: Path, tmp_path: Path):
    source = _read(spleen_phantom / "datalist.json")
    train = [{k: v for k, v in e.items() if k != "fold"} for e in source["training"][:6]]
    val = [{k: v for k, v in e.items() if k != "fold"} for e in source["training"][6:]]
    datalist = tmp_path / "dl.json"
    datalist.write_text(json.dumps({"training": train, "validation": val}))
    result = run_selection(datalist, dataroot=spleen_phantom, count=2, metric="ncc", mode="image", **FAST)
    assert result.scores["summary"]["n_candidates"] == 6
    assert result.proxy_datalist["validation"] == val
    assert len(result.proxy_datalist["training"]) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fraction": 0.0}, r"\(0, 1\]"),
        ({"fraction": 1.01}, r"\(0, 1\]"),
        ({"count": 7}, "larger than the candidate pool"),
        ({"fraction": 0.5, "metric": "dice"}, "unknown metric"),
        ({"fraction": 0.5, "strategy": "best"}, "unknown strategy"),
        ({"fraction": 0.5, "mode": "organ"}, "unknown mode"),
        ({"fraction": 0.5, "fold": 9}, "validation fold 9 does not exist"),
    ],
)
def test_select_errors(spleen_phantom: Path, tmp_path: Path, kwargs, match):
    with pytest.raises(InputError, match=match):
        run_selection(spleen_phantom / "datalist.json", **{**FAST, **kwargs})


def test_select_refuses_to_overwrite_its_input(spleen_phantom: Path):
    datalist = spleen_phantom / "datalist.json"
    before = datalist.read_bytes()
    with pytest.raises(InputError, match="overwrite the input datalist"):
        select(str(datalist), count=2, similarity="ncc", mode="image", out=str(datalist), **FAST)
    assert datalist.read_bytes() == before


def test_analyze_merges_proxy_data(spleen_phantom: Path, tmp_path: Path):
    from monai.bundle import ConfigParser

    from proxy_bundle.selection.analyzer import analyze

    cfg = tmp_path / "input.yaml"
    cfg.write_text(f"modality: CT\ndataroot: {spleen_phantom}\ndatalist: {spleen_phantom / 'datalist.json'}\n")
    work = tmp_path / "work"
    analyze(str(cfg), str(work), data_fraction=0.5, similarity="ncc", mode="roi", strategy="representative", **FAST)

    stats = ConfigParser.load_config_file(str(work / "datastats.yaml"))
    assert stats["stats_summary"]["n_cases"] == 8  # MONAI's own analysis is intact
    section = stats["proxy_data"]
    assert (section["metric"], section["mode"], section["strategy"]) == ("ncc", "roi", "representative")
    assert len(section["selected"]) == section["n_selected"] == 3
    assert set(section["score_stats"]) >= {"min", "max", "mean", "std"}
    proxy = _read(Path(section["datalist"]))
    assert len(proxy["training"]) == 2 + 3
    by_case = ConfigParser.load_config_file(str(work / "datastats_by_case.yaml"))["stats_by_cases"]
    flags = [c["proxy_data"] for c in by_case]
    assert sum(f["candidate"] for f in flags) == 6
    assert sorted(f["id"] for f in flags if f.get("selected")) == sorted(section["selected"])
    cache = ConfigParser.load_config_file(str(work / "cache.yaml"))
    assert cache["analyze"] is True and Path(cache["datastats"]) == (work / "datastats.yaml").resolve()

    # resume: the DataAnalyzer output is reused and the section replaced
    analyze(str(cfg), str(work), count=2, similarity="mi", **FAST)
    again = ConfigParser.load_config_file(str(work / "datastats.yaml"))
    assert again["proxy_data"]["n_selected"] == 2 and again["stats_summary"] == stats["stats_summary"]

    # Auto3DSeg runs on the merged analysis without analysing again
    from monai.apps.auto3dseg import AutoRunner

    runner = AutoRunner(work_dir=str(work), input=str(cfg), analyze=False, algo_gen=True, train=False,
                        ensemble=False, algos=["proxyseg"], templates_path_or_url=str(REPO / "algorithm_templates"))
    runner.run()
    assert (work / "proxyseg_0").is_dir()
    assert ConfigParser.load_config_file(str(work / "datastats.yaml"))["proxy_data"] == again["proxy_data"]


def test_analyzer_with_seg_summarizer(spleen_phantom: Path):
    import torch
    from monai.auto3dseg import SegSummarizer
    from monai.transforms import Compose, EnsureTyped, LoadImaged, Orientationd

    from proxy_bundle.selection.analyzer import ProxySimilarityAnalyzer, ProxySimilaritySummary
    from proxy_bundle.selection.preprocess import PreprocessConfig

    summarizer = SegSummarizer("image", "label", do_ccp=False)
    config = PreprocessConfig(mode="roi", grid=16, spacing=(1.0, 1.0, 2.5), modality="ct")
    summarizer.add_analyzer(ProxySimilarityAnalyzer(config=config, metric="mi", bins=16),
                            ProxySimilaritySummary(metric="mi", strategy="coverage", count=2, bins=16))
    load = Compose([LoadImaged(keys=["image", "label"], ensure_channel_first=True, image_only=True),
                    EnsureTyped(keys=["image", "label"], data_type="tensor", dtype=torch.float),
                    Orientationd(keys=["image", "label"], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))])
    source = _read(spleen_phantom / "datalist.json")["training"][:4]
    cases = []
    for e in source:
        d = load({"image": str(spleen_phantom / e["image"]), "label": str(spleen_phantom / e["label"])})
        d["label"] = d["label"][0]  # DataAnalyzer hands labels over without the channel axis
        cases.append(summarizer(d))
    assert cases[0]["proxy_data"]["features"].shape == (16**3,)
    report = summarizer.summarize(cases)["proxy_data"]
    assert report["n_cases"] == 4 and report["k"] == 2 and len(report["selected"]) == 2
    assert len(report["scores"]) == 4


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "proxy_bundle", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_bad_input_exits_2(spleen_phantom: Path, tmp_path: Path):
    res = _cli("select", "--datalist", str(spleen_phantom / "datalist.json"), "--data_fraction", "2",
               "--out", str(tmp_path / "p.json"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: --data_fraction: data fraction must be in (0, 1], got 2"]
    assert not (tmp_path / "p.json").exists()


def test_cli_select_runs(spleen_phantom: Path, tmp_path: Path, capsys):
    from proxy_bundle.cli import main

    main(["select", "--datalist", str(spleen_phantom / "datalist.json"), "--count", "2", "--similarity", "ncc",
          "--mode", "image", "--strategy", "coverage", "--grid", "16", "--out", str(tmp_path / "p.json"),
          "--progress", "False"])
    assert "selected 2 of 6" in capsys.readouterr().out
    assert len(_read(tmp_path / "p.json")["training"]) == 4
    assert (tmp_path / "p_scores.json").is_file()
    with pytest.raises(SystemExit) as exc:  # a missing input config: one line, exit 2
        main(["analyze", "--input", str(tmp_path / "missing.yaml"), "--work_dir", str(tmp_path / "w")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.yaml'}: input config not found"


def test_analyze_without_selection_then_with_it(spleen_phantom: Path, tmp_path: Path, capsys):
    """select=False (a search on no proxy data): the analysis alone, keyed to the input; selecting later reuses it."""
    from monai.bundle import ConfigParser

    from proxy_bundle.inputs import datastats_fingerprint
    from proxy_bundle.selection.analyzer import analyze

    cfg = tmp_path / "input.yaml"
    cfg.write_text(f"modality: CT\ndataroot: {spleen_phantom}\ndatalist: {spleen_phantom / 'datalist.json'}\n")
    work = tmp_path / "work"
    analyze(str(cfg), str(work), select=False, **FAST)
    assert "no proxy-data selection" in capsys.readouterr().out
    stats = ConfigParser.load_config_file(str(work / "datastats.yaml"))
    assert stats["stats_summary"]["n_cases"] == 8 and "proxy_data" not in stats
    assert datastats_fingerprint(work / "datastats.yaml") and not (work / "proxy_datalist.json").exists()
    assert ConfigParser.load_config_file(str(work / "cache.yaml"))["analyze"] is True

    analyze(str(cfg), str(work), count=2, **FAST)
    assert "reusing" in capsys.readouterr().out
    again = ConfigParser.load_config_file(str(work / "datastats.yaml"))
    assert again["proxy_data"]["n_selected"] == 2 and again["stats_summary"] == stats["stats_summary"]
