"""Two-phase proxy search on Optuna: search at proxy fidelity, then retrain the top-k at full fidelity.

Phase 1 (study ``<name>``) runs ``n_trials`` slots at the proxy fidelity with a seeded sampler and per-epoch
pruning. Phase 2 (study ``<name>-phase2``) retrains the ``top_k`` best phase-1 configurations at full fidelity;
the best of those is the result. With ``proxy="none"`` phase 1 already is full fidelity and phase 2 is skipped.

Any number of workers may run the same search against one storage:

* a *slot* is the n-th fresh phase-1 trial; trials beyond ``n_trials`` slots (two workers asking at once) are
  marked ``surplus`` and never run;
* phase 2 is planned by exactly one worker: whoever creates the phase-2 study (study names are unique in the
  database) enqueues its trials; a planner that died is replaced once its heartbeat is stale;
* each worker records its ``host:pid`` and a heartbeat on its running trial. A running trial whose worker is
  gone (same host and dead pid, or heartbeat older than ``grace_s``) is marked failed and re-enqueued with the
  same parameters and slot, so re-running a killed command resumes it: completed trials are kept, the
  interrupted one is retried, and with one worker the sampler sees exactly the history it would have seen.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from proxy_bundle.atomic import ensure_dir
from proxy_bundle.errors import InputError
from proxy_bundle.hpo.runners import Fidelity, TrialFailed, TrialResult, TrialRunner
from proxy_bundle.hpo.sampling import RETRY_OF, SLOT, make_pruner, make_sampler, slot_of
from proxy_bundle.hpo.space import SearchSpace, suggest
from proxy_bundle.hpo.storage import mask_text, mask_url, open_storage

__all__ = ["SearchConfig", "SearchOutcome", "TwoPhaseSearch", "phase2_name"]

log = logging.getLogger("proxy_bundle.hpo")

# user attribute keys
PHASE, RANK, WORKER, HEARTBEAT, FIDELITY = "phase", "rank", "worker", "heartbeat", "fidelity"
SCORES, WALL, TRIAL_DIR, MODEL, OUTPUT, ERROR = "scores", "wall_s", "trial_dir", "model_path", "output_dir", "error"
SURPLUS, INTERRUPTED, SOURCE, PROXY_SCORE, PLANNER, PLANNED, CONFIG = (
    "surplus", "interrupted", "source_trial", "proxy_score", "planner", "planned", "config")


def phase2_name(study_name: str) -> str:
    return f"{study_name}-phase2"


@dataclass
class SearchConfig:
    """Everything that defines a search; two runs with equal configs (and seed) are the same search."""

    study_name: str
    space: SearchSpace
    proxy: Fidelity
    full: Fidelity
    n_trials: int = 8
    top_k: int = 2
    seed: int = 0
    sampler: str = "tpe"
    pruner: str = "none"
    n_startup_trials: int | None = None
    out_dir: str = "hpo"
    heartbeat_s: float = 5.0
    grace_s: float = 60.0
    poll_s: float = 1.0
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if int(self.n_trials) < 1:
            raise InputError(f"must be >= 1, got {self.n_trials}", where="--n_trials")
        if int(self.top_k) < 1:
            raise InputError(f"must be >= 1, got {self.top_k}", where="--top_k")
        if self.heartbeat_s <= 0 or self.grace_s <= self.heartbeat_s:
            raise InputError("need 0 < heartbeat_s < grace_s", where="--grace_s")

    @property
    def two_phase(self) -> bool:
        return not self.proxy.is_full

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed or joining worker must share with the study's creator."""
        return {
            "space": self.space.to_dict(), "proxy": self.proxy.to_dict(), "full": self.full.to_dict(),
            "n_trials": int(self.n_trials), "top_k": int(self.top_k), "seed": int(self.seed),
            "sampler": self.sampler, "pruner": self.pruner, "n_startup_trials": self.n_startup_trials,
        }


@dataclass
class SearchOutcome:
    """The searched result: best configuration at full fidelity and both phases' trials."""

    best_params: dict[str, Any]
    best_score: float
    best_trial: FrozenTrial
    phase1: list[FrozenTrial]
    phase2: list[FrozenTrial] = field(default_factory=list)
    elapsed_s: dict[str, float] = field(default_factory=dict)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_gone(attrs: Mapping[str, Any], start: Any, grace_s: float, me: str, mine: set[int],
                 number: int) -> bool:
    """Is the worker behind a RUNNING trial (or a phase-2 plan) gone?"""
    worker = attrs.get(WORKER) or attrs.get(PLANNER)
    beat = attrs.get(HEARTBEAT)
    if worker:
        host, _, pid = str(worker).rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            if worker == me:
                return number not in mine
            if not _pid_alive(int(pid)):
                return True
    if beat is None:
        started = start.timestamp() if start is not None else None
        return started is not None and time.time() - started > grace_s
    return time.time() - float(beat) > grace_s


class TwoPhaseSearch:
    """Run (or join, or resume) a two-phase search; see the module docstring."""

    def __init__(self, config: SearchConfig, runner: TrialRunner, storage_url: str) -> None:
        self.config = config
        self.runner = runner
        self.url = storage_url
        self.storage = open_storage(storage_url)
        self.me = _worker_id()
        self._mine: set[int] = set()
        self.out_dir = ensure_dir(Path(config.out_dir))
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    # ---------------------------------------------------------------- studies
    def _study(self, name: str, *, phase: int) -> optuna.Study:
        c = self.config
        if phase == 1:
            sampler = make_sampler(c.sampler, c.seed, c.n_trials, c.n_startup_trials)
            pruner = make_pruner(c.pruner, c.n_trials, (c.proxy if c.two_phase else c.full).epochs)
        else:
            # Phase 2 only replays enqueued configurations, trained to the end: nothing to sample or prune.
            sampler, pruner = optuna.samplers.RandomSampler(seed=c.seed), optuna.pruners.NopPruner()
        return optuna.create_study(study_name=name, storage=self.storage, sampler=sampler, pruner=pruner,
                                   direction="maximize", load_if_exists=True)

    def _check_fingerprint(self, study: optuna.Study) -> None:
        want = json.loads(json.dumps(self.config.fingerprint()))
        have = study.user_attrs.get(CONFIG)
        if have is None:
            study.set_user_attr(CONFIG, want)
            return
        if have != want:
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            raise InputError(f"study {study.study_name!r} already exists with different settings ({', '.join(diff)});"
                             " re-run with the original options or choose another --study_name",
                             where=mask_url(self.url))

    # ---------------------------------------------------------------- liveness
    @contextmanager
    def _heartbeat(self, trial_id: int) -> Iterator[None]:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.config.heartbeat_s):
                try:
                    self.storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())
                except Exception as err:  # a transient DB error must not kill the training
                    log.warning("heartbeat failed: %s", mask_text(str(err), self.url))

        thread = threading.Thread(target=beat, name="hpo-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _fail_stale(self, study: optuna.Study) -> int:
        """Mark RUNNING trials of dead workers FAIL and re-enqueue them (same params, slot/rank). Returns count."""
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not _worker_gone(t.user_attrs, t.datetime_start, self.config.grace_s, self.me, self._mine, t.number):
                continue
            try:
                self.storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
                # The RUNNING -> FAIL transition is atomic in the database: only one worker wins it and enqueues.
                if not self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            self._enqueue_retry(study, t)
            log.warning("trial %d of %s was interrupted (worker %s); retrying it", t.number, study.study_name,
                        t.user_attrs.get(WORKER, "?"))
            n += 1
        return n

    def _enqueue_retry(self, study: optuna.Study, t: FrozenTrial) -> None:
        attrs = {k: t.user_attrs[k] for k in (PHASE, SLOT, RANK, SOURCE, PROXY_SCORE) if k in t.user_attrs}
        if SLOT not in attrs and RANK not in attrs:
            attrs[SLOT] = slot_of(study.get_trials(deepcopy=False), t.number)
        attrs[RETRY_OF] = t.number
        params = dict(t.system_attrs.get("fixed_params", {}) or {})
        params.update(t.params)
        study.enqueue_trial(params, user_attrs=attrs)

    # ---------------------------------------------------------------- running one trial
    def _run_trial(self, study: optuna.Study, trial: optuna.Trial, phase: int, fidelity: Fidelity,
                   label: str) -> None:
        c = self.config
        trial_dir = self.out_dir / f"phase{phase}" / label
        self._mine.add(trial.number)
        trial.set_user_attr(WORKER, self.me)
        trial.set_user_attr(HEARTBEAT, time.time())
        params = suggest(trial, c.space)
        trial.set_user_attr(PHASE, phase)
        trial.set_user_attr(FIDELITY, fidelity.to_dict())
        trial.set_user_attr(TRIAL_DIR, str(trial_dir))
        scores: list[list[float]] = []
        prune_enabled = phase == 1

        def report(epoch: int, score: float) -> bool:
            scores.append([int(epoch), float(score)])
            trial.report(float(score), int(epoch))
            trial.set_user_attr(SCORES, scores)
            return prune_enabled and trial.should_prune()

        start = time.time()
        try:
            with self._heartbeat(trial._trial_id):
                result: TrialResult = self.runner.run(params, fidelity, trial_dir, report)
        except TrialFailed as err:
            trial.set_user_attr(WALL, time.time() - start)
            trial.set_user_attr(ERROR, mask_text(str(err), self.url)[-4000:])
            study.tell(trial, state=TrialState.FAIL)
            log.error("trial %d failed: %s", trial.number, str(err).splitlines()[0])
            return
        except BaseException:
            # Interrupted (Ctrl-C / SIGTERM) or an engine error: hand the slot back for a retry right away.
            self._interrupt(study, trial)
            raise
        finally:
            self._mine.discard(trial.number)
        trial.set_user_attr(WALL, result.wall_s)
        trial.set_user_attr(SCORES, [[int(e), float(s)] for e, s in result.scores])
        trial.set_user_attr(OUTPUT, result.output_dir)
        trial.set_user_attr(MODEL, result.model_path)
        if result.pruned:
            study.tell(trial, state=TrialState.PRUNED)
        elif result.score is None:
            trial.set_user_attr(ERROR, "no finite validation score")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, result.score)

    def _interrupt(self, study: optuna.Study, trial: optuna.Trial) -> None:
        try:
            self.storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            if self.storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                self._enqueue_retry(study, self.storage.get_trial(trial._trial_id))
        except Exception as err:  # the stale-trial check of the next run takes over
            log.warning("could not release trial %d: %s", trial.number, mask_text(str(err), self.url))

    # ---------------------------------------------------------------- phase 1
    def _phase1_slots(self, trials: Sequence[FrozenTrial]) -> dict[int, list[FrozenTrial]]:
        by_slot: dict[int, list[FrozenTrial]] = {}
        for t in trials:
            if t.user_attrs.get(SURPLUS):
                continue
            slot = int(t.user_attrs[SLOT]) if SLOT in t.user_attrs else slot_of(trials, t.number)
            by_slot.setdefault(slot, []).append(t)
        return by_slot

    @staticmethod
    def _slot_done(trials: Sequence[FrozenTrial]) -> bool:
        # A trial that failed with an error counts as done (retrying a deterministic crash would loop);
        # an interrupted one does not (its retry is queued).
        return any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
                   (t.state == TrialState.FAIL and ERROR in t.user_attrs) for t in trials)

    def _phase1(self, study: optuna.Study, bar: Any) -> list[FrozenTrial]:
        c = self.config
        fidelity = c.proxy
        while True:
            self._fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            by_slot = self._phase1_slots(trials)
            done = sum(1 for s in range(c.n_trials) if self._slot_done(by_slot.get(s, [])))
            _set_bar(bar, done)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            fresh = sum(1 for t in trials if RETRY_OF not in t.user_attrs)
            if waiting or fresh < c.n_trials:
                trial = study.ask()
                frozen = self.storage.get_trial(trial._trial_id)
                slot = slot_of(study.get_trials(deepcopy=False), trial.number)
                if slot >= c.n_trials or (RETRY_OF in frozen.user_attrs and self._slot_done(
                        [t for t in by_slot.get(slot, []) if t.number != trial.number])):
                    trial.set_user_attr(SURPLUS, True)
                    study.tell(trial, state=TrialState.FAIL)
                    continue
                trial.set_user_attr(SLOT, slot)
                self._run_trial(study, trial, 1, fidelity, f"slot{slot:04d}")
                continue
            if done >= c.n_trials:
                return study.get_trials(deepcopy=True)
            time.sleep(c.poll_s)  # other workers are still training their slots

    # ---------------------------------------------------------------- phase 2
    def _top_k(self, phase1: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        done = [t for t in phase1 if t.state == TrialState.COMPLETE and t.value is not None]
        if not done:
            raise InputError(f"no phase-1 trial of study {self.config.study_name!r} completed; see "
                             f"{self.out_dir}/phase1/*/train.log", where=str(self.out_dir))
        by_slot = self._phase1_slots(phase1)
        slot = {t.number: s for s, ts in by_slot.items() for t in ts}
        done.sort(key=lambda t: (-float(t.value), slot.get(t.number, t.number)))
        return done[: self.config.top_k]

    def _plan_phase2(self, phase1: Sequence[FrozenTrial]) -> optuna.Study:
        name = phase2_name(self.config.study_name)
        top = self._top_k(phase1)
        try:
            study = optuna.create_study(study_name=name, storage=self.storage, direction="maximize",
                                        sampler=optuna.samplers.RandomSampler(seed=self.config.seed),
                                        pruner=optuna.pruners.NopPruner(), load_if_exists=False)
            study.set_user_attr(PLANNER, self.me)
            study.set_user_attr(HEARTBEAT, time.time())
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=self.storage,
                                      sampler=optuna.samplers.RandomSampler(seed=self.config.seed),
                                      pruner=optuna.pruners.NopPruner())
            while not study.user_attrs.get(PLANNED):
                attrs = study.user_attrs
                if _worker_gone(attrs, None, self.config.grace_s, self.me, set(), -1) or PLANNER not in attrs:
                    study.set_user_attr(PLANNER, self.me)  # the planner died: finish its plan
                    break
                time.sleep(self.config.poll_s)
        if not study.user_attrs.get(PLANNED):
            have = {int(t.user_attrs[RANK]) for t in study.get_trials(deepcopy=False) if RANK in t.user_attrs}
            for rank, t in enumerate(top):
                if rank not in have:
                    study.enqueue_trial(dict(t.params), user_attrs={PHASE: 2, RANK: rank, SOURCE: t.number,
                                                                    PROXY_SCORE: float(t.value)})
            study.set_user_attr(PLANNED, True)
        return study

    def _phase2(self, study: optuna.Study, bar: Any) -> list[FrozenTrial]:
        c = self.config
        n_ranks = None
        while True:
            self._fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            ranks: dict[int, list[FrozenTrial]] = {}
            for t in trials:
                if RANK in t.user_attrs and not t.user_attrs.get(SURPLUS):
                    ranks.setdefault(int(t.user_attrs[RANK]), []).append(t)
            n_ranks = len(ranks)
            done = sum(1 for ts in ranks.values() if self._slot_done(ts))
            _set_bar(bar, done, total=n_ranks)
            if any(t.state == TrialState.WAITING for t in trials):
                trial = study.ask()
                frozen = self.storage.get_trial(trial._trial_id)
                rank = frozen.user_attrs.get(RANK)
                others = [t for t in ranks.get(int(rank), []) if t.number != trial.number] if rank is not None else []
                if rank is None or self._slot_done(others):
                    trial.set_user_attr(SURPLUS, True)
                    study.tell(trial, state=TrialState.FAIL)
                    continue
                self._run_trial(study, trial, 2, c.full, f"rank{int(rank):02d}")
                continue
            if done >= n_ranks:
                return study.get_trials(deepcopy=True)
            time.sleep(c.poll_s)

    # ---------------------------------------------------------------- entry point
    def run(self) -> SearchOutcome:
        """Run this worker until the search is finished (by it and any other workers)."""
        c = self.config
        with _sigterm_as_interrupt():
            t0 = time.time()
            study = self._study(c.study_name, phase=1)
            self._check_fingerprint(study)
            bar = _bar(c.progress_bar, c.n_trials, "phase 1" + (f" ({c.proxy.name})" if c.two_phase else " (full)"))
            try:
                phase1 = self._phase1(study, bar)
            finally:
                _close(bar)
            elapsed = {"phase1": time.time() - t0}
            phase2: list[FrozenTrial] = []
            if c.two_phase:
                t1 = time.time()
                study2 = self._plan_phase2(phase1)
                bar = _bar(c.progress_bar, c.top_k, "phase 2 (full)")
                try:
                    phase2 = self._phase2(study2, bar)
                finally:
                    _close(bar)
                elapsed["phase2"] = time.time() - t1
            pool = phase2 if c.two_phase else phase1
            done = [t for t in pool if t.state == TrialState.COMPLETE and t.value is not None]
            if not done:
                raise InputError(f"no full-fidelity trial of study {c.study_name!r} completed; see "
                                 f"{self.out_dir}/phase{2 if c.two_phase else 1}/*/train.log", where=str(self.out_dir))
            key = (lambda t: (-float(t.value), int(t.user_attrs.get(RANK, 0)))) if c.two_phase else \
                (lambda t: (-float(t.value), slot_of(pool, t.number)))
            best = sorted(done, key=key)[0]
            return SearchOutcome(best_params=dict(best.params), best_score=float(best.value), best_trial=best,
                                 phase1=phase1, phase2=phase2, elapsed_s=elapsed)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="trial", dynamic_ncols=True)


def _set_bar(bar: Any, n: int, total: int | None = None) -> None:
    if bar is None:
        return
    if total is not None and bar.total != total:
        bar.total = total
    if bar.n != n:
        bar.n = n
        bar.refresh()


def _close(bar: Any) -> None:
    if bar is not None:
        bar.close()
