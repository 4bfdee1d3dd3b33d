"""The ``hpo`` command and ``ProxyOptunaGen`` with the real ``proxyseg`` template on a 32^3 phantom (CPU, 1 epoch)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import optuna
import pytest
import yaml

from proxy_bundle.cli import main
from proxy_bundle.defaults import PROXY_WIDTH
from proxy_bundle.hpo.space import default_space

# Tiny trainings: the whole phantom fits one patch; a small full network keeps the phase-2 trial short.
TINY = {"roi_size": [32, 32, 32], "batch_size": 1, "num_epochs_per_validation": 1, "network#init_filters": 8,
        "num_workers": 0,
        "sw_batch_size": 1}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def searched(spleen_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("hpo_work")
    main(["hpo", "--input", str(spleen_phantom), "--work_dir", str(work), "--n_trials", "2", "--top_k", "1",
          "--proxy", "both", "--data_fraction", "0.34", "--width", "0.5", "--epochs", "1", "--seed", "3",
          "--overrides", json.dumps(TINY), "--progress", "False"])
    return work


def test_hpo_command_writes_every_output(searched: Path, capsys):
    work = searched
    # The analysis ran because datastats.yaml was missing, and it carries the proxy selection.
    stats = yaml.safe_load((work / "datastats.yaml").read_text())
    assert stats["proxy_data"]["datalist"]
    res = json.loads((work / "hpo" / "results.json").read_text())
    assert res == json.loads((work / "hpo" / "proxyseg-both" / "results.json").read_text())
    assert res["proxy"] == "both" and res["storage"].startswith("sqlite:///")

    p1 = [t for t in res["trials"] if t["phase"] == 1]
    p2 = [t for t in res["trials"] if t["phase"] == 2]
    assert [t["slot"] for t in p1] == [0, 1] and all(t["state"] == "COMPLETE" for t in p1)
    assert len(p2) == 1 and p2[0]["state"] == "COMPLETE"
    space_names = {p.name for p in default_space()}
    for t in p1 + p2:
        assert set(t["params"]) == space_names
        assert [s["epoch"] for s in t["scores"]] == [1] and 0.0 <= t["score"] <= 1.0
        assert t["wall_s"] > 0
        # TensorBoard events from the template, per trial.
        assert list((Path(t["trial_dir"]) / "model").glob("events.out.tfevents.*"))
    for t in p1:
        assert t["fidelity"]["name"] == "proxy-both" and t["fidelity"]["width"] == 0.5
        assert t["fidelity"]["datalist"] == stats["proxy_data"]["datalist"]
        overrides = yaml.safe_load((Path(t["trial_dir"]) / "overrides.yaml").read_text())
        assert overrides["proxy#enabled"] is True and overrides["learning_rate"] == t["params"]["learning_rate"]
        # The exported bundle carries the trial's values (export_to_disk applied the overrides).
        cfg = yaml.safe_load((Path(t["trial_dir"]) / "proxyseg" / "configs" / "hyper_parameters.yaml").read_text())
        assert cfg["learning_rate"] == pytest.approx(t["params"]["learning_rate"])
        assert cfg["proxy"]["width"] == 0.5 and cfg["augment"]["prob_noise"] == pytest.approx(
            t["params"]["augment#prob_noise"])
    assert p2[0]["fidelity"]["name"] == "full" and p2[0]["fidelity"]["datalist"] is None
    # Phase 2 retrains the best phase-1 configuration at full fidelity.
    top = max(p1, key=lambda t: (t["score"], -t["slot"]))
    assert p2[0]["params"] == top["params"] and p2[0]["proxy_score"] == pytest.approx(top["score"])

    best = res["best"]
    assert best["phase"] == 2 and Path(best["model_path"]).is_file()
    assert yaml.safe_load((work / "hpo" / "best_params.yaml").read_text()) == best["params"]
    assert res["phases"]["phase1"]["compute_s"] > 0 and res["phases"]["phase2"]["compute_s"] > 0
    sp = res["speedup"]
    assert sp["kind"] == "estimated" and "n_trials (2)" in sp["how"]
    assert sp["full_fidelity_search_s"] == pytest.approx(2 * p2[0]["wall_s"])
    for png in ("optimization_history.png", "proxy_vs_full.png", "learning_curves.png",
                "optuna_phase1_history.png", "optuna_phase1_intermediate_values.png",
                "optuna_phase1_parallel_coordinate.png"):
        assert (work / "hpo" / "proxyseg-both" / "plots" / png).read_bytes()[:8] == PNG

    # The winner and the template's default configuration, scored on the validation fold and the external site.
    a = res["assessment"]
    assert a["external"]["cases"] == 2 and a["external"]["source"].endswith("external.json")
    assert a["validation_cases"] >= 1 and 0.0 < a["trivial_dice"] < 0.5
    for name in ("best", "default"):
        assert set(a["scores"][name]) == {"validation", "external"}
        assert all(0.0 <= v <= 1.0 for v in a["scores"][name].values())
    # The evaluator re-scores the winner's checkpoint exactly as the template validated it.
    assert a["scores"]["best"]["validation"] == pytest.approx(best["score"], abs=1e-3)
    default = a["default_trial"]
    assert default["fidelity"]["name"] == "full" and Path(default["model_path"]).is_file()
    assert set(default["params"]) == space_names and default["params"]["learning_rate"] == pytest.approx(1e-3)
    assert a["speedup_note"] and "configurations" in a["speedup_note"]


def test_hpo_rerun_is_a_noop_and_cli_errors_are_one_line(searched: Path, capsys, tmp_path):
    work = searched
    before = json.loads((work / "hpo" / "results.json").read_text())
    # Same command again: nothing trains, the same result is reported.
    main(["hpo", "--work_dir", str(work), "--n_trials", "2", "--top_k", "1", "--proxy", "both",
          "--data_fraction", "0.34", "--width", "0.5", "--epochs", "1", "--seed", "3",
          "--overrides", json.dumps(TINY), "--progress", "False"])
    after = json.loads((work / "hpo" / "results.json").read_text())
    assert after["trials"] == before["trials"] and after["best"] == before["best"]
    capsys.readouterr()

    bad = tmp_path / "space.yaml"
    bad.write_text("learning_rate: {type: float, low: 0.0, high: 0.1, log: true}\n")
    cases = [
        (["--input", str(tmp_path / "nope.yaml")], "input file or dataset folder not found"),
        (["--search_space", str(bad)], f"{bad}: learning_rate: log scale needs low > 0"),
        (["--proxy", "half"], "--proxy: invalid value 'half' (expected one of none, data, network, both, short)"),
        (["--top_k", "3", "--n_trials", "2"], "--top_k: top_k (3) cannot exceed n_trials (2)"),
        (["--storage", "postgresql://u:s3cret@127.0.0.1:9/db"], "cannot open storage"),
        # The existing study answers only the command that made it: a changed setting is refused up front.
        (["--fold", "1"], "study 'proxyseg-both' was started with other settings: --fold was 0, now 1; re-run"),
        (["--overrides", json.dumps({k: v for k, v in TINY.items() if k != "num_workers"}), "--num_workers", "1"],
         "--num_workers was 0, now 1"),
        (["--overrides", json.dumps({**TINY, "batch_size": 2})], "--overrides batch_size was 1, now 2"),
    ]
    for extra, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["hpo", "--work_dir", str(work), *(["--proxy", "both"] if "--proxy" not in extra else []), *extra])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err, err
        assert "s3cret" not in err


def test_short_training_as_the_proxy(searched: Path, capsys):
    """--proxy short: phase 1 trains the full data and network for fewer epochs, phase 2 retrains the top-k for
    the full run's epochs; its length defaults to a quarter of the template's own epochs."""
    from proxy_bundle.hpo.runners import AlgoRunner

    work = searched
    runner = AlgoRunner.from_templates(work / "algorithm_templates", "proxyseg", work, work / "datastats.yaml",
                                       work / "input.yaml")
    template_epochs = runner.default_epochs(work / "scratch")
    assert isinstance(template_epochs, int) and template_epochs > 1 and not (work / "scratch").exists()

    args = ["hpo", "--work_dir", str(work), "--n_trials", "2", "--top_k", "1", "--proxy", "short", "--seed", "3",
            "--overrides", json.dumps(TINY), "--progress", "False", "--default_trial", "False"]
    for extra, needle in [(["--epochs", "2", "--proxy_epochs", "2"],
                           "--proxy_epochs: short training must be shorter than the full run (2 epochs), got 2"),
                          (["--epochs", "1"],
                           "--epochs: --proxy short needs a full run of at least 2 epochs to shorten, got 1")]:
        with pytest.raises(SystemExit) as exit_info:
            main([*args, *extra])
        assert exit_info.value.code == 2 and needle in capsys.readouterr().err
    main([*args, "--epochs", "2", "--proxy_epochs", "1"])
    res = json.loads((work / "hpo" / "proxyseg-short" / "results.json").read_text())
    p1 = [t for t in res["trials"] if t["phase"] == 1]
    p2 = [t for t in res["trials"] if t["phase"] == 2]
    assert len(p1) == 2 and len(p2) == 1 and res["proxy"] == "short"
    for t in p1:
        assert t["fidelity"]["name"] == "proxy-short" and t["fidelity"]["epochs"] == 1
        assert t["fidelity"]["width"] == 1.0 and t["fidelity"]["datalist"] is None
        assert [s["epoch"] for s in t["scores"]] == [1]
    assert p2[0]["fidelity"]["epochs"] == 2 and [s["epoch"] for s in p2[0]["scores"]] == [1, 2]
    out = capsys.readouterr().out
    assert "2 trial(s) at proxy-short (1 epoch), then top 1 at full fidelity (2 epochs)" in out


def test_proxy_optuna_gen_as_in_monai_tutorial(searched: Path, tmp_path):
    from monai.apps.auto3dseg import BundleGen
    from monai.auto3dseg import algo_from_json
    from monai.utils.enums import AlgoKeys

    from proxy_bundle.hpo.optuna_gen import ProxyOptunaGen

    work = searched
    gen_dir = tmp_path / "gen"
    bundle_generator = BundleGen(algo_path=str(gen_dir), templates_path_or_url=str(work / "algorithm_templates"),
                                 data_stats_filename=str(work / "datastats.yaml"),
                                 data_src_cfg_name=str(work / "input.yaml"))
    bundle_generator.generate(str(gen_dir), num_fold=1)
    algo = bundle_generator.get_history()[0][AlgoKeys.ALGO]
    # Fixed settings the tutorial's way (OptunaGen's params); they hold in every trial.
    optuna_gen = ProxyOptunaGen(algo=algo, params={**TINY, "num_epochs": 2},
                                base_overrides={"cache_dir": str(work / "hpo" / "preprocessed_cache")})
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    study.optimize(partial(optuna_gen, obj_filename=optuna_gen.get_obj_filename(), output_folder=str(tmp_path / "optuna")),
                   n_trials=2)

    assert len(study.trials) == 2
    first = study.trials[0]
    assert first.state == optuna.trial.TrialState.COMPLETE
    # Per-epoch reports (stock OptunaGen reports only a final score).
    assert sorted(first.intermediate_values) == [1, 2]
    assert first.value == pytest.approx(max(first.intermediate_values.values()))
    # Proxy settings applied: the datastats' proxy datalist and the proxy network.
    assert first.user_attrs["fidelity"]["name"] == "proxy-both"
    cfg = yaml.safe_load((Path(first.user_attrs["trial_dir"]) / "proxyseg" / "configs" /
                          "hyper_parameters.yaml").read_text())
    assert cfg["proxy"]["enabled"] is True and cfg["proxy"]["width"] == PROXY_WIDTH
    assert cfg["network"]["init_filters"] == 8 and cfg["num_epochs"] == 2
    assert set(first.params) == {p.name for p in default_space()}
    # MONAI's own serialisation round-trips the trained algo with its score.
    second = study.trials[1]
    assert second.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    loaded, meta = algo_from_json(str(Path(first.user_attrs["trial_dir"]) / "proxyseg" / "algo_object.json"))
    assert meta[AlgoKeys.SCORE] == pytest.approx(first.value) and loaded.get_score() == pytest.approx(first.value)
