"""What a running search prints: one line per finished trial, the bar's epoch and best-so-far status."""

from __future__ import annotations

import io

from proxy_bundle.hpo.console import SearchConsole, epoch_status, trial_line


def test_trial_lines_name_value_fidelity_and_best_so_far():
    done = trial_line(phase=1, number=3, fidelity="proxy-both", state="complete", value=0.71234, wall_s=41.2,
                      best=(0.7421, 1))
    assert done == "phase 1 trial 3 (proxy-both): Dice 0.7123 in 41 s; best so far 0.7421 (trial 1)"
    pruned = trial_line(phase=1, number=4, fidelity="proxy-both", state="pruned", value=0.31, wall_s=12.0,
                        best=(0.7421, 1), last_epoch=2)
    assert pruned == "phase 1 trial 4 (proxy-both): pruned at epoch 2 (Dice 0.3100) in 12 s; best so far 0.7421 (trial 1)"
    failed = trial_line(phase=2, number=0, fidelity="full", state="failed", value=None, wall_s=None, best=None,
                        error="training exited with code 1")
    assert failed == "phase 2 trial 0 (full): failed: training exited with code 1; no completed trial yet"


def test_epoch_status_and_console_output():
    assert epoch_status(number=3, epoch=4, total_epochs=6, score=0.61234, best=(0.701, 0)) == \
        "trial 3 epoch 4/6 Dice 0.6123 | best 0.7010"
    assert epoch_status(number=0, epoch=1, total_epochs=None, score=0.1, best=None) == "trial 0 epoch 1 Dice 0.1000 | best -"

    from tqdm import tqdm

    stream = io.StringIO()
    console = SearchConsole(stream=stream)
    console.finished(phase=1, number=0, fidelity="full", state="complete", value=0.5, wall_s=1.0, best=(0.5, 0))
    assert stream.getvalue() == "phase 1 trial 0 (full): Dice 0.5000 in 1 s; best so far 0.5000 (trial 0)\n"
    console.bar = tqdm(total=2, file=stream, desc="phase 1")
    console.epoch(number=1, epoch=2, total_epochs=3, score=0.25, best=(0.5, 0))
    console.finished(phase=1, number=1, fidelity="full", state="complete", value=0.6, wall_s=2.0, best=(0.6, 1))
    console.bar.close()
    text = stream.getvalue()
    assert "trial 1 epoch 2/3 Dice 0.2500 | best 0.5000" in text  # on the bar
    assert "phase 1 trial 1 (full): Dice 0.6000 in 2 s; best so far 0.6000 (trial 1)\n" in text  # above it


def test_watcher_prints_the_trials_workers_finish_once(tmp_path):
    import sys
    from pathlib import Path

    from proxy_bundle.hpo.console import StudyWatcher
    from proxy_bundle.hpo.engine import TwoPhaseSearch
    from proxy_bundle.hpo.runners import CommandRunner
    from proxy_bundle.hpo.storage import open_storage

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    try:
        from hpo_toy_search import config
    finally:
        sys.path.remove(str(here))
    url = f"sqlite:///{tmp_path / 's.db'}"
    cfg = config(str(tmp_path / "a"), n_trials=2, top_k=1)
    stream = io.StringIO()
    watcher = StudyWatcher(open_storage(url), "toy", fidelities={1: cfg.proxy, 2: cfg.full}, n_trials=2,
                           progress_bar=False, stream=stream)
    runner = CommandRunner([sys.executable, str(here / "hpo_toy_trainer.py"), "run"], poll_s=0.05)
    TwoPhaseSearch(cfg, runner, url).run()  # as a worker process would
    watcher.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "phase 1 trial 0 (proxy-both)", "phase 1 trial 1 (proxy-both)", "phase 2 trial 0 (full)"], lines
    assert all("best so far 0." in line for line in lines)
    watcher.poll()
    assert stream.getvalue().splitlines() == lines  # each trial once
    later = io.StringIO()
    StudyWatcher(open_storage(url), "toy", fidelities={1: cfg.proxy, 2: cfg.full}, n_trials=2, progress_bar=False,
                 stream=later).close()
    assert later.getvalue() == ""  # a resumed search does not repeat what was already shown
    # the bar follows phase 2 as soon as it has a trial, sized to the top-k
    barred = StudyWatcher(open_storage(url), "toy", fidelities={1: cfg.proxy, 2: cfg.full}, n_trials=2, top_k=1,
                          stream=io.StringIO())
    barred.poll()
    assert barred._phase == 2 and barred.console.bar.total == 1
    barred.close()
