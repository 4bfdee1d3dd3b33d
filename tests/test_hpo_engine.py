"""Search engine: spaces, masking, pruning, and SIGKILL + resume (with the closed-form toy trainer)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from proxy_bundle.errors import InputError
from proxy_bundle.hpo.space import default_space, load_space, parse_space, suggest
from proxy_bundle.hpo.storage import mask_text, mask_url, resolve_url

HERE = Path(__file__).resolve().parent
SEARCH = HERE / "hpo_toy_search.py"


# ------------------------------------------------------------------ search spaces
@pytest.mark.parametrize("spec, needle", [
    ({"lr": {"type": "float", "low": 1e-2, "high": 1e-3}}, "low (0.01) must be < high (0.001)"),
    ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "log scale needs low > 0"),
    ({"lr": {"type": "floaty", "low": 0.0, "high": 1.0}}, "unknown type 'floaty'"),
    ({"net": {"type": "categorical", "choices": []}}, "non-empty list 'choices'"),
    ({"net": {"type": "categorical", "choices": [1, 1]}}, "duplicates"),
    ({"bs": {"type": "int", "low": 1.5, "high": 4}}, "must be an integer"),
    ({"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}, "cannot be combined with log"),
    ({"lr": {"type": "float", "low": 0.0, "high": "big"}}, "'high' must be a finite number"),
    ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "scale": 2}}, "unknown key(s) ['scale']"),
    ({"lr": 0.1}, "spec must be a mapping"),
])
def test_invalid_space_names_file_and_parameter(tmp_path, spec, needle):
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(InputError) as err:
        load_space(path)
    msg = str(err.value)
    assert str(path) in msg and next(iter(spec)) in msg and needle in msg, msg


def test_space_file_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_space(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_space(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(InputError, match="non-empty mapping"):
        load_space(empty)


def test_default_space_and_suggest_within_bounds():
    space = default_space()
    names = [p.name for p in space]
    assert {"learning_rate", "weight_decay", "loss#dice_weight", "loss#ce_weight", "augment#prob_flip",
            "augment#prob_noise"} <= set(names)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(study.ask(), space)
        for p in space:
            assert p.low <= values[p.name] <= p.high
    custom = parse_space({"parameters": {"bs": {"type": "int", "low": 1, "high": 4, "step": 1},
                                         "init": {"type": "categorical", "choices": [8, 16]}}})
    got = suggest(optuna.trial.FixedTrial({"bs": 3, "init": 16}), custom)
    assert got == {"bs": 3, "init": 16}


# ------------------------------------------------------------------ credentials
def test_passwords_are_masked():
    url = "postgresql+psycopg2://alice:s3cr%40t@db.example:5432/optuna?sslmode=require"
    assert mask_url(url) == "postgresql+psycopg2://alice:***@db.example:5432/optuna?sslmode=require"
    assert mask_url("mysql://u:pw@h/db?password=pw2") == "mysql://u:***@h/db?password=***"
    assert "s3cr%40t" not in mask_text(f"connection to {url} failed: bad password s3cr%40t", url)
    assert resolve_url("postgres://u:p@h/db", ".") == "postgresql://u:p@h/db"
    with pytest.raises(InputError) as err:
        resolve_url("redis://u:topsecret@h/0", ".")
    assert "topsecret" not in str(err.value)


def test_unreachable_storage_error_is_masked(tmp_path):
    from proxy_bundle.hpo.storage import open_storage

    with pytest.raises(InputError) as err:
        open_storage("postgresql+psycopg2://bob:hunter2@127.0.0.1:9/optuna")
    assert "hunter2" not in str(err.value) and "***" in str(err.value)


# ------------------------------------------------------------------ kill and resume
def _search(url: str, out: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SEARCH), url, str(out), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _processes_mentioning(text: str, wait_s: float = 5.0) -> list[int]:
    deadline = time.time() + wait_s
    while True:
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
        if not pids or time.time() > deadline:
            return pids
        time.sleep(0.1)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "TOY_SLEEP": "0.02", "OMP_NUM_THREADS": "1"}
    ref_out = tmp_path / "ref"
    ref = _search(f"sqlite:///{tmp_path / 'ref.db'}", ref_out, env)
    assert ref.wait(timeout=120) == 0, ref.stderr.read()
    reference = _results(ref_out)

    url = f"sqlite:///{tmp_path / 'resume.db'}"
    out = tmp_path / "run"
    log = tmp_path / "trainings.log"
    slow = {**env, "TOY_SLEEP": "0.6", "TOY_LOG": str(log)}
    proc = _search(url, out, slow)
    deadline = time.time() + 90
    # Kill while the third phase-1 trial is training (after it reported its first epoch).
    while time.time() < deadline:
        if (out / "phase1" / "slot0002" / "model" / "progress.yaml").exists():
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    else:
        pytest.fail("search never reached the third trial")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # The killed search's trainer died with it (no orphan still writing into the trial directory).
    assert _processes_mentioning(str(out / "phase1"), wait_s=0.2) == []
    proc.stdout.close()
    proc.stderr.close()

    storage = optuna.storages.RDBStorage(url)
    before = optuna.load_study(study_name="toy", storage=storage).get_trials()
    completed_before = {t.user_attrs["slot"] for t in before if t.state == optuna.trial.TrialState.COMPLETE}
    assert {t.state for t in before if t.user_attrs.get("slot") == 2} == {optuna.trial.TrialState.RUNNING}
    assert completed_before == {0, 1}
    storage.engine.dispose()

    resumed = _search(url, out, {**env, "TOY_LOG": str(log)})
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    result = _results(out)

    # Same answer as the uninterrupted run, slot by slot.
    assert result["best"]["params"] == reference["best"]["params"]
    assert result["best"]["score"] == pytest.approx(reference["best"]["score"], abs=1e-12)
    ref_slots = {t["slot"]: t["params"] for t in reference["trials"] if t["phase"] == 1}
    done = [t for t in result["trials"] if t["phase"] == 1 and t["state"] == "COMPLETE"]
    assert sorted(t["slot"] for t in done) == [0, 1, 2, 3, 4]  # every slot exactly once
    assert {t["slot"]: t["params"] for t in done} == ref_slots
    interrupted = [t for t in result["trials"] if t.get("interrupted")]
    assert [t["slot"] for t in interrupted] == [2]
    assert any(t.get("retry_of") == interrupted[0]["number"] and t["state"] == "COMPLETE" for t in done)
    # No completed work repeated: completed slots trained once, the interrupted one twice, phase 2 once per rank.
    lines = log.read_text().splitlines()
    counts = {key: sum(f"/{key}/" in line for line in lines)
              for key in ("slot0000", "slot0001", "slot0002", "slot0003", "slot0004")}
    counts["phase2"] = sum("/phase2/" in line for line in lines)
    assert counts == {"slot0000": 1, "slot0001": 1, "slot0002": 2, "slot0003": 1, "slot0004": 1,
                      "phase2": 2}, counts
    p2 = [t for t in result["trials"] if t["phase"] == 2]
    assert sorted(t["rank"] for t in p2) == [0, 1] and all(t["state"] == "COMPLETE" for t in p2)

    # A finished search re-run is a no-op that reports the same result.
    again = _search(url, out, {**env, "TOY_LOG": str(log)})
    assert again.wait(timeout=60) == 0, again.stderr.read()
    assert log.read_text().splitlines() == lines
    assert _results(out)["best"] == result["best"]


def test_changed_settings_are_refused_and_a_finished_search_is_extended_without_retraining(tmp_path, monkeypatch):
    import dataclasses

    from proxy_bundle.hpo.engine import TwoPhaseSearch
    from proxy_bundle.hpo.runners import CommandRunner

    sys.path.insert(0, str(HERE))
    try:
        from hpo_toy_search import config
    finally:
        sys.path.remove(str(HERE))
    log = tmp_path / "trainings.log"
    monkeypatch.setenv("TOY_LOG", str(log))
    url = f"sqlite:///{tmp_path / 's.db'}"
    runner = CommandRunner([sys.executable, str(HERE / "hpo_toy_trainer.py"), "run"], poll_s=0.05)
    first = TwoPhaseSearch(config(str(tmp_path / "a"), n_trials=2, top_k=1), runner, url).run()
    with pytest.raises(InputError, match="--seed was 7, now 8"):
        TwoPhaseSearch(dataclasses.replace(config(str(tmp_path / "a"), n_trials=2, top_k=1), seed=8), runner,
                       url).run()
    assert TwoPhaseSearch(config(str(tmp_path / "a"), n_trials=2, top_k=1), runner, url).finished()
    assert not TwoPhaseSearch(config(str(tmp_path / "a"), n_trials=2, top_k=2), runner, url).finished()
    # More trials and a larger top-k: only the new slot and configurations without a full-fidelity result train.
    assert not TwoPhaseSearch(config(str(tmp_path / "a"), n_trials=3, top_k=2), runner, url).finished()
    more = TwoPhaseSearch(config(str(tmp_path / "a"), n_trials=3, top_k=2), runner, url).run()
    lines = log.read_text().splitlines()
    assert [sum(f"/phase1/slot000{i}/" in line for line in lines) for i in range(3)] == [1, 1, 1]
    sources = [t.user_attrs["source_trial"] for t in more.phase2 if t.state.name == "COMPLETE"]
    assert sorted(sources) == sorted(set(sources)) and len(sources) == 2
    assert sum("/phase2/" in line for line in lines) == 2
    assert first.best_trial.user_attrs["source_trial"] in sources
    assert more.best_score >= first.best_score


def test_median_pruning_stops_bad_trials(tmp_path):
    env = {**os.environ, "TOY_SLEEP": "0.05", "OMP_NUM_THREADS": "1", "TOY_PLOTS": "1"}
    out = tmp_path / "p"
    proc = _search(f"sqlite:///{tmp_path / 'p.db'}", out, env, "6", "1", "median")
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    res = _results(out)
    states = [t["state"] for t in res["trials"] if t["phase"] == 1]
    assert "PRUNED" in states and states.count("COMPLETE") >= 1
    pruned = [t for t in res["trials"] if t["state"] == "PRUNED"]
    # Pruned after the warm-up epoch: fewer epochs than the 2 it would have trained.
    assert all(len(t["scores"]) < 2 for t in pruned)
    assert (out / "plots" / "optimization_history.png").stat().st_size > 0


def test_runner_reports_epochs_kills_on_prune_and_times_out(tmp_path, monkeypatch):
    from proxy_bundle.hpo.runners import CommandRunner, Fidelity, TrialFailed

    cmd = [sys.executable, str(HERE / "hpo_toy_trainer.py"), "run"]
    monkeypatch.setenv("TOY_SLEEP", "0.05")
    seen = []
    result = CommandRunner(cmd, poll_s=0.05).run({"x": 0.3, "y": 0.01}, Fidelity(epochs=3), tmp_path / "a",
                                                  lambda e, s: seen.append((e, s)) or False)
    assert [e for e, _ in seen] == [1, 2, 3] and result.scores == seen and not result.pruned
    assert result.score == pytest.approx(max(s for _, s in seen)) and result.model_path.endswith("model.pt")

    monkeypatch.setenv("TOY_SLEEP", "0.4")
    t0 = time.monotonic()
    pruned = CommandRunner(cmd, poll_s=0.05).run({"x": 0.3}, Fidelity(epochs=20), tmp_path / "b", lambda e, s: True)
    assert pruned.pruned and [e for e, _ in pruned.scores] == [1] and time.monotonic() - t0 < 6

    with pytest.raises(TrialFailed, match="time limit"):
        CommandRunner(cmd, poll_s=0.05, timeout_s=1.0).run({}, Fidelity(epochs=20), tmp_path / "c", lambda e, s: False)
    failing = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with pytest.raises(TrialFailed, match="code 3(.|\n)*boom"):
        CommandRunner(failing, poll_s=0.05).run({}, Fidelity(), tmp_path / "d", lambda e, s: False)


def test_speedup_is_measured_against_a_full_fidelity_search(tmp_path, monkeypatch):
    import dataclasses

    from proxy_bundle.hpo.api import run_search
    from proxy_bundle.hpo.runners import CommandRunner, Fidelity

    sys.path.insert(0, str(HERE))
    try:
        from hpo_toy_search import config
    finally:
        sys.path.remove(str(HERE))
    monkeypatch.setenv("TOY_SLEEP", "0.01")
    runner = CommandRunner([sys.executable, str(HERE / "hpo_toy_trainer.py"), "run"], poll_s=0.05)
    url = f"sqlite:///{tmp_path / 'hpo' / 'study.db'}"
    base_cfg = dataclasses.replace(config(str(tmp_path / "hpo" / "toy-none"), n_trials=3, top_k=1),
                                   study_name="toy-none", proxy=Fidelity("full", epochs=3))
    base = run_search(base_cfg, runner, url, proxy_mode="none", plots=False)
    assert base["speedup"]["kind"] == "reference" and "phase2" not in base["phases"]
    assert [t["phase"] for t in base["trials"]] == [1, 1, 1]

    both = run_search(config(str(tmp_path / "hpo" / "toy-both"), n_trials=3, top_k=1), runner, url,
                      proxy_mode="both", plots=False)
    sp = both["speedup"]
    assert sp["kind"] == "measured" and "toy-none" in sp["how"]
    assert sp["full_fidelity_search_s"] == pytest.approx(base["phases"]["phase1"]["compute_s"])
    assert sp["speedup"] == pytest.approx(sp["full_fidelity_search_s"] / sp["search_compute_s"])
    # The toy proxy preserves the ranking, so the transferred configuration is the full search's best too.
    assert both["best"]["params"] == base["best"]["params"]


def test_algo_runner_overrides_follow_the_template(tmp_path):
    from proxy_bundle.hpo.runners import AlgoRunner, Fidelity

    class _Algo:  # the attributes AlgoRunner reads from a BundleAlgo before exporting
        def __init__(self, template_path, name):
            self.template_path, self.name, self.device_setting = str(template_path), name, {}

    for name, text in (("withproxy", "learning_rate: 0.1\nproxy: {enabled: false}\n"), ("plain", "learning_rate: 0.1\n")):
        (tmp_path / name / "configs").mkdir(parents=True)
        (tmp_path / name / "configs" / "hyper_parameters.yaml").write_text(text)
    proxy = Fidelity("proxy-both", datalist="/d/proxy.json", width=0.5, epochs=3)
    got = AlgoRunner(_Algo(tmp_path, "withproxy"), fold=2, base_overrides={"num_workers": 0}).overrides(
        {"learning_rate": 0.01}, proxy, tmp_path / "t")
    assert got == {"num_workers": 0, "proxy#enabled": True, "proxy#width": 0.5, "proxy#blocks": 1.0,
                   "proxy#levels": None, "proxy#datalist": "/d/proxy.json", "num_epochs": 3, "learning_rate": 0.01,
                   "ckpt_path": str(tmp_path / "t" / "model"), "fold": 2}
    plain = AlgoRunner(_Algo(tmp_path, "plain"))
    assert plain.overrides({}, Fidelity(epochs=5), tmp_path / "t") == {
        "num_epochs": 5, "ckpt_path": str(tmp_path / "t" / "model"), "fold": 0}
    with pytest.raises(InputError, match="no 'proxy' block"):
        plain.overrides({}, proxy, tmp_path / "t")
    assert AlgoRunner(_Algo(tmp_path, "x"), device_setting={"CUDA_VISIBLE_DEVICES": "0,1"}).command(
        type("A", (), {"get_output_path": lambda self: str(tmp_path / "withproxy")})(), {"lr": 0.1})[1:5] == [
        "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2"]


def test_packed_workers_survive_a_crashed_worker(tmp_path, monkeypatch):
    """Three long-lived workers (two packed lanes on one device plus another device) share the search; one worker
    is SIGKILLed mid-trial: the supervisor restarts it, its trial is retried, and every slot completes once."""
    import threading

    from proxy_bundle.hpo.devices import WorkerSlot
    from proxy_bundle.hpo.workers import WorkerSpec, run_workers, search_dict

    sys.path.insert(0, str(HERE))
    try:
        from hpo_toy_search import config
    finally:
        sys.path.remove(str(HERE))
    monkeypatch.setenv("TOY_SLEEP", "0.4")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "search"
    url = f"sqlite:///{tmp_path / 'w.db'}"
    cfg = config(str(out), n_trials=6, top_k=2)
    spec = WorkerSpec(url=url, search=search_dict(cfg), runner={
        "kind": "command", "command": [sys.executable, str(HERE / "hpo_toy_trainer.py"), "run"], "poll_s": 0.05})
    slots = [WorkerSlot("cpu", 0), WorkerSlot("cpu", 1), WorkerSlot("cpu", 2)]
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run_workers(spec, slots, out / "workers", poll_s=0.1)))
    thread.start()
    deadline = time.time() + 90
    victim = None
    while time.time() < deadline and victim is None:
        # the victim is a worker that owns a RUNNING trial which has started training, so exactly one is retried
        workers = set(_processes_mentioning(f"proxy_bundle.hpo.workers\0{out / 'workers'}", wait_s=0))
        try:
            running = optuna.load_study(study_name="toy", storage=url).get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            running = []
        for t in running:
            pid = int(str(t.user_attrs.get("worker", ":0")).rsplit(":", 1)[1])
            slot_dir = t.user_attrs.get("trial_dir")
            if pid in workers and slot_dir and (Path(slot_dir) / "model" / "progress.yaml").exists():
                victim = pid
                break
        time.sleep(0.05)
    assert victim is not None, "no worker started training"
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=240)
    assert not thread.is_alive()
    assert sum(w["restarts"] for w in result["workers"]) == 1 and all(w["exit"] == 0 for w in result["workers"])

    storage = optuna.storages.RDBStorage(url)
    trials = optuna.load_study(study_name="toy", storage=storage).get_trials()
    done = sorted(t.user_attrs["slot"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert done == [0, 1, 2, 3, 4, 5]
    retried = [t for t in trials if t.system_attrs.get("failed_trial") is not None]
    assert len(retried) == 1 and retried[0].state == optuna.trial.TrialState.COMPLETE
    workers = {t.user_attrs["worker"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(workers) >= 2  # the trials were spread over the workers
    phase2 = optuna.load_study(study_name="toy-phase2", storage=storage).get_trials()
    assert sorted(t.state.name for t in phase2 if not t.user_attrs.get("surplus")) == ["COMPLETE", "COMPLETE"]


def test_timeout_bounds_phase_one_and_a_rerun_continues(tmp_path, monkeypatch):
    import dataclasses

    from proxy_bundle.hpo.engine import TwoPhaseSearch
    from proxy_bundle.hpo.runners import CommandRunner

    sys.path.insert(0, str(HERE))
    try:
        from hpo_toy_search import config
    finally:
        sys.path.remove(str(HERE))
    monkeypatch.setenv("TOY_SLEEP", "0.5")  # >= 1 s per trial (2 epochs): at most 2 of 4 start within 2 s
    url = f"sqlite:///{tmp_path / 's.db'}"
    runner = CommandRunner([sys.executable, str(HERE / "hpo_toy_trainer.py"), "run"], poll_s=0.05)
    search = TwoPhaseSearch(config(str(tmp_path / "a"), n_trials=4, top_k=1), runner, url)
    search.prepare()
    search.config = dataclasses.replace(search.config, deadline=time.time() + 2.0)
    first = search.run()
    done = [t for t in first.phase1 if t.state.name == "COMPLETE"]
    assert first.stopped_by == "timeout" and 1 <= len(done) < 4
    assert [t.user_attrs["source_trial"] for t in first.phase2 if t.state.name == "COMPLETE"] == [
        first.best_trial.user_attrs["source_trial"]]
    again = TwoPhaseSearch(config(str(tmp_path / "a"), n_trials=4, top_k=1), runner, url).run()
    assert again.stopped_by is None
    assert sorted(t.user_attrs["slot"] for t in again.phase1 if t.state.name == "COMPLETE") == [0, 1, 2, 3]


def test_resumable_trial_dir_keeps_only_the_checkpoint(tmp_path):
    from proxy_bundle.hpo.runners import resumable_trial_dir

    trial = tmp_path / "slot0002"
    (trial / "model").mkdir(parents=True)
    (trial / "proxyseg" / "configs").mkdir(parents=True)
    (trial / "train.log").write_text("old")
    (trial / "model" / "progress.yaml").write_text("[]")
    assert resumable_trial_dir(trial) == trial and not (trial / "model").exists() and not (trial / "train.log").exists()
    (trial / "model").mkdir()
    (trial / "model" / "last.pt").write_bytes(b"x")
    (trial / "proxyseg").mkdir()
    (trial / "train.log").write_text("old")
    resumable_trial_dir(trial)
    assert sorted(p.name for p in trial.iterdir()) == ["model"] and (trial / "model" / "last.pt").is_file()


def test_two_phase_is_any_cheaper_fidelity_not_a_name():
    from proxy_bundle.hpo.engine import SearchConfig
    from proxy_bundle.hpo.runners import Fidelity

    def cfg(proxy: Fidelity, full: Fidelity) -> SearchConfig:
        return SearchConfig(study_name="s", space=default_space(), proxy=proxy, full=full, n_trials=2, top_k=1)

    full = Fidelity("full", epochs=8)
    assert not cfg(full, full).two_phase
    assert not cfg(Fidelity("proxy", epochs=8), full).two_phase  # renamed, not cheaper: no phase 2
    assert cfg(Fidelity("proxy-short", epochs=2), full).two_phase
    assert cfg(Fidelity("proxy-network", width=0.5, epochs=8), full).two_phase
