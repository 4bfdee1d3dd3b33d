"""Study: rank-agreement metrics, replayed searches, plan, resumable store, and a tiny end-to-end study."""

from __future__ import annotations

import json
import math

import pytest

from proxy_bundle.errors import InputError
from proxy_bundle.study import agreement as ag
from proxy_bundle.study.plan import build_variants, sample_configs, short_epochs
from proxy_bundle.study.store import RunStore

P = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
R = {"a": 1.0, "b": 3.0, "c": 2.0, "d": 4.0}


def test_kendall_spearman_hand_computed():
    # 5 concordant, 1 discordant pair (b, c): tau = (5 - 1) / 6; rank differences 0,1,1,0: rho = 1 - 6*2/(4*15)
    assert ag.kendall(P, R) == pytest.approx(4 / 6)
    assert ag.spearman(P, R) == pytest.approx(0.8)
    assert ag.kendall(P, {k: -v for k, v in P.items()}) == pytest.approx(-1.0)


def test_agreement_ignores_missing_and_nan_and_constant():
    proxy = dict(P, e=math.nan, f=9.0)  # e is NaN, f has no reference
    assert ag.kendall(proxy, R) == pytest.approx(4 / 6)
    assert ag.paired(proxy, R)[0] == ["a", "b", "c", "d"]
    assert math.isnan(ag.kendall({k: 0.5 for k in P}, R))  # a constant proxy ranks nothing
    assert math.isnan(ag.spearman({"a": 1, "b": 2}, {"a": 1, "b": 2}))  # too few pairs


def test_top_k_overlap():
    assert ag.top_k_overlap(P, R, 2) == pytest.approx(0.5)  # {d, c} vs {d, b}
    assert ag.top_k_overlap(P, R, 1) == pytest.approx(1.0)
    assert ag.top_k_overlap(P, R, 10) == pytest.approx(1.0)  # k clipped to the number of configs


def test_regret():
    assert ag.regret(P, R) == 0.0
    assert ag.regret({"a": 4, "b": 1, "c": 2, "d": 3}, R) == pytest.approx(3.0)
    # proxy ties between a and b: expected regret over the tie = 0.9 - mean(0.5, 0.9)
    assert ag.regret({"a": 1, "b": 1, "c": 0}, {"a": 0.5, "b": 0.9, "c": 0.2}) == pytest.approx(0.2)
    out = ag.agreement(P, R, k=2)
    assert out["n"] == 4 and out["top2_overlap"] == pytest.approx(0.5)


def test_plan_variants_and_determinism():
    vs = build_variants(epochs=8, fraction=0.25)
    names = [v.name for v in vs]
    assert names[:4] == ["reference", "repeat", "network-w0.5", "network-w0.25"]
    assert "both" in names and "short-e2" in names and "short-e4" in names
    assert [v.name for v in vs if v.family == "data"] == ["data-mi-representative", "data-mi-coverage",
                                                           "data-ncc-representative"]
    assert sum(v.family == "random" for v in vs) == 3
    assert {v.name: v.width for v in vs}["both"] == 0.25 and {v.name: v.epochs for v in vs}["short-e2"] == 2
    assert short_epochs(8, 0.25) == 2
    assert {v.name: v.train_seed for v in vs}["repeat"] not in (None, 12345)
    only = build_variants(epochs=2, fraction=0.5, include=["network", "random"])
    assert [v.family for v in only] == ["reference", "network", "network", "random", "random", "random"]
    # a short budget as long as the full training is no short variant
    assert [v.name for v in build_variants(epochs=2, fraction=0.5, short_budgets=(0.5, 1.0)) if v.family == "short"] \
        == ["short-e1"]
    with pytest.raises(InputError, match="proxy_data"):
        build_variants(epochs=2, fraction=0.5, proxy_data=["mi-best"])
    with pytest.raises(InputError, match="unknown variant"):
        build_variants(epochs=2, fraction=0.5, include=["nope"])
    with pytest.raises(InputError, match="fraction"):
        build_variants(epochs=2, fraction=1.5)

    def suggest(trial):
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True),
                "augment#prob_flip": trial.suggest_float("augment#prob_flip", 0.0, 0.5)}

    a, b, c = sample_configs(suggest, 5, seed=3), sample_configs(suggest, 5, seed=3), sample_configs(suggest, 5, seed=4)
    assert a == b and a != c and [x.id for x in a] == ["c00", "c01", "c02", "c03", "c04"]
    assert len({x.params["learning_rate"] for x in a}) == 5


def test_store_resume(tmp_path):
    store = RunStore(tmp_path / "runs")
    spec = {"epochs": 2, "params": {"learning_rate": 0.01}}
    assert store.get("c00", "reference", spec) is None
    store.put("c00", "reference", spec, {"status": "ok", "val_dice": 0.5})
    assert store.get("c00", "reference", spec)["val_dice"] == 0.5
    assert store.get("c00", "reference", dict(spec, epochs=3)) is None  # another study's spec is not reused
    store.path("c01", "reference").write_text("{half a fi")  # an interrupted foreign write is ignored
    assert store.get("c01", "reference") is None
    assert [r["config_id"] for r in store.records()] == ["c00"]
    assert json.loads(store.path("c00", "reference").read_text())["spec"] == spec


def test_tiny_study_end_to_end_and_resume(spleen_phantom, tmp_path, monkeypatch, capsys):
    """3 configurations x (reference, proxy network), 2 epochs on the 32^3 phantom, replayed; a re-run trains
    nothing, and a study in another folder resumes from the exported table."""
    import os
    from pathlib import Path

    from proxy_bundle.study.command import study
    from proxy_bundle.study.report import FIGURES

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    w = tmp_path / "study"
    kwargs = dict(task="spleen_ct", work_dir=str(w), dataset=str(spleen_phantom), n_configs=3, epochs=2,
                  init_filters=8, widths="0.5", data_fraction=0.5, variants="network", rescore_val=True, progress=False,
                  replay_seeds=20, bootstrap=10)
    # --max_minutes ends an invocation in time: the runs it stopped are not stored, the report still comes
    study(**dict(kwargs, max_minutes=0.01))
    out = capsys.readouterr().out
    assert "6 runs (0 stored, 6 to train)" in out and "table" in out and (w / "report.md").is_file()
    assert not list((w / "runs").glob("*/*.json"))
    study(**kwargs)
    out = capsys.readouterr().out
    assert "6 runs (0 stored, 6 to train)" in out

    results = json.loads((w / "results.json").read_text())
    assert [v["name"] for v in results["variants"]] == ["reference", "network-w0.5"]
    runs = results["runs"]
    assert len(runs) == 6 and all(r["status"] == "ok" for r in runs), results["failed"]
    for r in runs:
        assert 0.0 <= r["val_dice"] <= 1.0 and 0.0 <= r["ext_dice"] <= 1.0
        assert r["cost_basis"] == "cpu_process" and r["train_cost_s"] > 0 and r["startup_cost_s"] > 0
        assert [e[0] for e in r["curve"]] == [1, 2] and r["curve"][0][2] <= r["curve"][1][2] <= r["train_cost_s"]
        assert r["hardware"]["cores"] >= 1
        assert r["worker"] in ("cpu.0", "cpu.1")  # trained in a long-lived worker process, not a fresh one
        # the evaluator scores the best checkpoint exactly like the template's own validation
        assert r["val_dice"] == pytest.approx(r["search_dice"], abs=1e-3)
    net = [r for r in runs if r["variant"] == "network-w0.5"]
    ref = [r for r in runs if r["variant"] == "reference"]
    assert all(b["timing"]["num_parameters"] < f["timing"]["num_parameters"] for b, f in zip(net, ref))
    assert results["n_configs"] == 3 and results["hardware"][0]["runs"] == 6 and results["noise_ceiling"] is None
    replay = results["replay"]
    assert {"random search", "ASHA", "Hyperband", "two-phase network-w0.5 top-1",
            "ASHA-proxy network-w0.5 top-2"} <= set(replay)
    for r in replay.values():
        n = len(r["fractions"])
        assert len(r["mean"]) == len(r["lower"]) == len(r["upper"]) == n
        assert all(0.0 <= x <= 1.0 for x in r["mean"])
    assert replay["random search"]["mean"][r["fractions"].index(1.0)] == 0.0  # all K at full fidelity: the best
    report = (w / "report.md").read_text()
    assert "synthetic phantoms" in report and "noise ceiling" in report and "| random search |" in report
    for name in FIGURES.values():
        assert (w / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stored = {p: p.stat().st_mtime_ns for p in (w / "runs").glob("*/*.json")}
    study(**kwargs)
    assert "6 runs (6 stored, 0 to train)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (w / "runs").glob("*/*.json")} == stored
    # another folder (another machine): the committed table is all it needs
    study(**dict(kwargs, work_dir=str(tmp_path / "elsewhere"), table=str(w / "table.jsonl")))
    assert "6 runs (6 stored, 0 to train)" in capsys.readouterr().out


def test_study_slots_one_run_per_gpu_and_cores_on_cpu(monkeypatch):
    from proxy_bundle.study import workers

    gpus = workers.study_slots(["3", "5"], "auto", threads=4)
    assert [(s.device, s.lane, s.env["CUDA_VISIBLE_DEVICES"]) for s in gpus] == [("3", 0, "3"), ("5", 0, "5")]
    assert len(workers.study_slots(["0"], 1, threads=4)) == 1
    with pytest.raises(InputError, match="one run per GPU"):
        workers.study_slots(["0"], 2, threads=1)
    monkeypatch.setattr(workers, "cpu_count", lambda: 8)
    assert [s.label for s in workers.study_slots(["cpu"], "auto", threads=2)] == [f"cpu.{i}" for i in range(4)]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in workers.study_slots(["cpu"], 3, threads=1)] == [""] * 3
    for bad in (0, "two", True, -1):
        with pytest.raises(InputError, match="auto or a positive integer"):
            workers.study_slots(["cpu"], bad, threads=1)


def test_a_stopped_run_is_trained_afresh(tmp_path):
    """A checkpoint left by a run that --max_minutes or Ctrl-C stopped is not resumed: a study run's cost and
    curve must come from one uninterrupted training."""
    from pathlib import Path

    from proxy_bundle.hpo.runners import Fidelity, TrialFailed
    from proxy_bundle.study.plan import Config
    from proxy_bundle.study.runner import train_and_score

    trial = tmp_path / "trials" / "reference" / "c00"
    (trial / "model").mkdir(parents=True)
    (trial / "model" / "last.pt").write_bytes(b"checkpoint of a stopped run")
    seen = []

    class Runner:
        def run(self, params, fidelity, trial_dir, report):
            seen.append(sorted(p.name for p in Path(trial_dir).rglob("*")))
            raise TrialFailed("stop here")

    rec = train_and_score(Runner(), None, Config("c00", {"learning_rate": 1e-3}), Fidelity(), trial, {})
    assert rec["status"] == "failed" and seen == [[]]


def test_invocations_add_up_in_the_report():
    from proxy_bundle.study.report import _study_wall

    assert _study_wall({"wall_s": 5.0}) == 5.0
    assert _study_wall({"wall_s": 5.0, "invocations": [{"wall_s": 100.0}, {"wall_s": 5.0}]}) == 105.0


def test_study_without_external_set_uses_the_validation_fold_only(spleen_phantom, tmp_path, capsys):
    """A dataset with no external.json: the study runs, measures agreement on the validation fold only and says
    so in its report (the replay is exercised on synthetic runs: no training here)."""
    import shutil

    from proxy_bundle.study.analysis import analyse
    from proxy_bundle.study.command import study
    from proxy_bundle.study.plan import build_variants

    data = tmp_path / "msd"
    shutil.copytree(spleen_phantom, data)
    (data / "external.json").unlink()
    w = tmp_path / "study"
    study(task="spleen_ct", work_dir=str(w), dataset=str(data), n_configs=3, epochs=2, widths="0.5",
          variants="network", train=False, progress=False, replay_seeds=5, bootstrap=5)
    out = capsys.readouterr().out
    assert "no external.json: agreement is measured on validation fold 0 only" in out
    # two short budgets that round to one run length at 2 epochs are said to be one variant
    study(task="spleen_ct", work_dir=str(w), dataset=str(data), n_configs=3, epochs=2, variants="short",
          train=False, progress=False, replay_seeds=5, bootstrap=5)
    assert "study: short budgets 0.25, 0.5 of 2 epochs give 1 distinct run length(s) (short-e1)" in \
        capsys.readouterr().out
    results = json.loads((w / "results.json").read_text())
    assert results["meta"]["n_ext"] == 0 and results["analysis"]["sets"] == ["val"]
    assert "**No external set**" in (w / "report.md").read_text()

    variants = build_variants(epochs=2, fraction=0.5, widths=(0.5,), include=["network"])
    runs = [{"status": "ok", "variant": v.name, "config_id": f"c{i}", "val_dice": 0.2 + 0.1 * i + 0.01 * j,
             "train_cost_s": 10.0 / (j + 1), "startup_cost_s": 1.0,
             "curve": [[1, 0.1 * i, 5.0 / (j + 1)], [2, 0.2 + 0.1 * i + 0.01 * j, 10.0 / (j + 1)]]}
            for j, v in enumerate(variants) for i in range(4)]
    a = analyse(runs, variants, replay_seeds=5, bootstrap=5, sets=("val",))
    name = variants[1].name
    assert a["sets"] == ["val"] and set(a["agreement"][name]) == {"val"}
    assert a["agreement"][name]["val"]["kendall"] == pytest.approx(1.0)
