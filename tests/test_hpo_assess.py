"""Held-out set discovery, trivial score, speedup explanation and warnings of a finished search (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from proxy_bundle.errors import InputError
from proxy_bundle.hpo.assess import format_assessment, speedup_note, startup_overhead, warnings_for
from proxy_bundle.hpo.heldout import external_cases, template_values, trivial_dice


def _label(path: Path, fg: int, n: int = 1000) -> None:
    arr = np.zeros(n, dtype=np.uint8)
    arr[:fg] = 1
    nib.save(nib.Nifti1Image(arr.reshape(10, 10, n // 100), np.eye(4)), str(path))


def test_trivial_dice_is_the_all_foreground_score(tmp_path):
    _label(tmp_path / "a.nii.gz", 100)
    _label(tmp_path / "b.nii.gz", 300)
    cases = [{"label": str(tmp_path / "a.nii.gz")}, {"label": str(tmp_path / "b.nii.gz")}]
    want = np.mean([2 * 100 / 1100, 2 * 300 / 1300])
    assert trivial_dice(cases) == pytest.approx(want)
    # Two foreground classes, only one of which a constant prediction can hit: half the score.
    assert trivial_dice(cases, num_classes=3) == pytest.approx(want / 2)


def test_external_cases_from_dataset_folder_input_key_and_datalist(spleen_phantom, tmp_path):
    cfg = {"dataroot": str(spleen_phantom), "datalist": str(spleen_phantom / "datalist.json")}
    cases, source = external_cases(cfg)
    ext = json.loads((spleen_phantom / "external.json").read_text())["testing"]
    assert source == str(spleen_phantom / "external.json") and len(cases) == len(ext)
    assert all(Path(c["image"]).is_file() and Path(c["label"]).is_file() for c in cases)

    # A datalist with a labelled testing list and no external.json.
    data = json.loads((spleen_phantom / "datalist.json").read_text())
    data["testing"] = ext[:1]
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps(data))
    cfg2 = {"dataroot": str(spleen_phantom), "datalist": str(dl), "external": str(dl)}
    assert len(external_cases(cfg2)[0]) == 1

    # MSD-style unlabelled testing list: no held-out set, no error.
    data["testing"] = [{"image": e["image"]} for e in ext]
    dl.write_text(json.dumps(data))
    lone = tmp_path / "lone"
    lone.mkdir()
    assert external_cases({"dataroot": str(lone), "datalist": str(dl)}) is None

    # A listed external set that is broken fails before any work, naming the file.
    bad = tmp_path / "ext.json"
    bad.write_text(json.dumps({"testing": [{"image": "nope.nii.gz", "label": "nope.nii.gz"}]}))
    with pytest.raises(InputError, match="not found") as err:
        external_cases({"dataroot": str(lone), "datalist": str(dl), "external": str(bad)})
    assert err.value.where == str(bad)


def _summary(speedup: float, best: float = 0.8, rho: float | None = 0.5) -> dict:
    return {"proxy": "both", "config": {"n_trials": 6},
            "phases": {"phase1": {"compute_s": 30.0}, "phase2": {"compute_s": 20.0}},
            "speedup": {"speedup": speedup, "kind": "estimated", "full_fidelity_search_s": 50.0 * speedup},
            "best": {"score": best}, "proxy_vs_full": {"spearman": rho}}


def test_speedup_note_and_warnings():
    note = speedup_note(_summary(1.2), (4.0, 8.0))
    assert "6 configurations" in note and "1.20x" in note and "4.0 s of its 8.0 s starting up" in note
    assert "at this scale" in note
    assert speedup_note({**_summary(1.2), "proxy": "none"}, None) is None

    assert warnings_for(_summary(1.5), 0.05, {}) == []
    warn = warnings_for(_summary(0.8, best=0.1, rho=-0.5), 0.05, {"best": {"external": 0.07}})
    assert any("near the trivial score" in w for w in warn)
    assert any("does not generalise" in w for w in warn)
    assert any("cost more than a full-fidelity search" in w for w in warn)
    assert any("opposite order" in w for w in warn)
    beaten = warnings_for(_summary(1.5), 0.05, {"best": {"validation": 0.72}, "default": {"validation": 0.73}})
    assert beaten == ["the template's default configuration scores higher than the search winner on the validation "
                      "fold (0.7300 vs 0.7200): this search found nothing better than the defaults"]
    assert warnings_for(_summary(1.5), 0.05, {"best": {"validation": 0.74}, "default": {"validation": 0.73}}) == []
    flat = {**_summary(1.5), "trials": [{"phase": 1, "score": 0.0}, {"phase": 1, "score": 0.0},
                                        {"phase": 1, "score": None}, {"phase": 2, "score": 0.7}]}
    assert warnings_for(flat, 0.05, {}) == [
        "every phase-1 trial scored the same (0.0000): the proxy ranked nothing and phase 2 retrained an arbitrary "
        "top-k; give the proxy more training (--proxy_epochs, --width, --data_fraction)"]
    flat["trials"][0]["score"] = 0.1
    assert warnings_for(flat, 0.05, {}) == []


def test_startup_overhead_and_template_values(tmp_path):
    for i, (start, first, end) in enumerate([(0.0, 3.0, 10.0), (0.0, 5.0, 12.0)]):
        (tmp_path / f"t{i}" / "model").mkdir(parents=True)
        (tmp_path / f"t{i}" / "model" / "timing.yaml").write_text(
            f"process_start: {start}\nfirst_step: {first}\nend: {end}\n")
    assert startup_overhead([tmp_path / "t0", tmp_path / "t1", tmp_path / "missing"]) == (4.0, 11.0)
    assert startup_overhead([tmp_path / "missing"]) is None
    cfg = tmp_path / "h.yaml"
    cfg.write_text("learning_rate: 0.001\naugment: {prob_flip: 0.0}\n")
    assert template_values(cfg, ["learning_rate", "augment#prob_flip", "loss#ce_weight"]) == {
        "learning_rate": 0.001, "augment#prob_flip": 0.0}


def test_format_assessment_lines():
    a = {"fold": 0, "validation_cases": 3, "trivial_dice": 0.03,
         "external": {"source": "/d/external.json", "cases": 4},
         "scores": {"best": {"validation": 0.8, "external": 0.7}, "default": {"validation": 0.75, "external": 0.6}},
         "default_trial": {"params": {"learning_rate": 0.001}}, "speedup_note": "x", "warnings": ["w"]}
    lines = format_assessment(a)
    assert lines[0] == ("validation fold 0 (3 cases): search winner 0.8000, template default 0.7500 "
                        "(trivial score 0.0300)")
    assert lines[1] == "external set (4 cases, /d/external.json): search winner 0.7000, template default 0.6000"
    assert "template default: learning_rate=0.001" in lines and "speedup: x" in lines and "warning: w" in lines
    a["external"] = None
    assert any(line.startswith("external set: none") for line in format_assessment(a))
