"""Two-phase proxy search on Optuna: search at proxy fidelity, then retrain the top-k at full fidelity.

Phase 1 (study ``<name>``) runs ``n_trials`` slots at the proxy fidelity with a seeded sampler and per-epoch
pruning. Phase 2 (study ``<name>-phase2``) retrains the ``top_k`` best phase-1 configurations at full fidelity;
the best of those is the result. With ``proxy="none"`` phase 1 already is full fidelity and phase 2 is skipped.

Any number of workers may run the same search against one storage:

* a *slot* is the n-th fresh phase-1 trial; trials beyond ``n_trials`` slots (two workers asking at once) are
  marked ``surplus`` and never run;
* phase 2 retrains each planned phase-1 trial (its *source*) once; the plan (the current top-k) is enqueued by
  exactly one worker, whoever creates the plan's lock study (study names are unique in the database);
* liveness is Optuna's: every running trial has an RDB heartbeat, ``optuna.storages.fail_stale_trials`` fails a
  trial whose heartbeat is older than the grace period and ``RetryHeartbeatStaleTrialCallback`` re-enqueues it with the same
  parameters and user attributes (slot, rank, source). Re-running a killed command therefore resumes it: completed
  trials are kept, the interrupted one is retried (from its last checkpoint when the runner supports it), and with
  one worker the sampler sees exactly the history it would have seen.

``n_trials`` and ``top_k`` are a budget, not part of the search's identity: raising them on a finished search adds
phase-1 slots and retrains only configurations that have no full-fidelity result yet. ``deadline`` (absolute
``time.time()``) stops starting phase-1 trials; phase 2 then retrains the top-k of what completed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from proxy_bundle.atomic import ensure_dir
from proxy_bundle.errors import InputError
from proxy_bundle.hpo.console import SearchConsole
from proxy_bundle.hpo.fingerprint import check_unchanged
from proxy_bundle.hpo.runners import Fidelity, TrialFailed, TrialResult, TrialRunner
from proxy_bundle.hpo.sampling import SLOT, make_pruner, make_sampler, retry_of, slot_of
from proxy_bundle.hpo.space import SearchSpace, suggest
from proxy_bundle.hpo.storage import mask_text, mask_url, open_storage

__all__ = ["SearchConfig", "SearchOutcome", "TwoPhaseSearch", "phase2_name"]

log = logging.getLogger("proxy_bundle.hpo")


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna flags its RDB heartbeat API as experimental and warns that heartbeats are meant for Study.optimize;
    the search drives trials with ask/tell and runs Optuna's heartbeat thread for each (as Study.optimize does),
    so those warnings would only be noise on the console (and they must not end up in one-line error output)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield

# user attribute keys
PHASE, RANK, WORKER, FIDELITY = "phase", "rank", "worker", "fidelity"
SCORES, WALL, TRIAL_DIR, MODEL, OUTPUT, ERROR = "scores", "wall_s", "trial_dir", "model_path", "output_dir", "error"
SURPLUS, INTERRUPTED, SOURCE, PROXY_SCORE, PLANNER, PLANNED, CONFIG = (
    "surplus", "interrupted", "source_trial", "proxy_score", "planner", "planned", "config")
SOURCE_SLOT, STARTED, WORKER_TRIAL = "source_slot", "started", "worker_trial"
TIMING_KEYS = ("train_s", "val_s", "resumed_from_epoch")


def phase2_name(study_name: str) -> str:
    return f"{study_name}-phase2"


@dataclass
class SearchConfig:
    """Everything that defines a search; two runs with equal fingerprints (and seed) are the same search.

    ``n_trials``/``top_k`` are the budget (may grow between runs); ``deadline``: absolute ``time.time()`` after which
    no phase-1 trial starts (``None``: none); ``phase2``: this worker also trains phase-2 trials; ``wait``: this
    worker waits for other workers' phase-1 trials before phase 2 (a packing lane that does not train phase 2
    leaves as soon as nothing is left to start). ``max_retry``: retries of a trial whose worker died.
    """

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
    # Settings outside the search itself that change its results (data, fold, template, overrides; see
    # hpo.fingerprint.search_identity): part of the fingerprint.
    identity: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    phase2: bool = True
    wait: bool = True
    max_retry: int = 3

    def __post_init__(self) -> None:
        if int(self.n_trials) < 1:
            raise InputError(f"must be >= 1, got {self.n_trials}", where="--n_trials")
        if int(self.top_k) < 1:
            raise InputError(f"must be >= 1, got {self.top_k}", where="--top_k")
        if self.heartbeat_s <= 0 or self.grace_s <= self.heartbeat_s:
            raise InputError("need 0 < heartbeat_s < grace_s", where="--grace_s")

    @property
    def two_phase(self) -> bool:
        # Short training (full data and network, fewer epochs) is a proxy fidelity too; the name alone is not.
        return replace(self.proxy, name=self.full.name) != self.full

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed, extended or joining worker must share with the study's creator."""
        return {
            "space": self.space.to_dict(), "proxy": self.proxy.to_dict(), "full": self.full.to_dict(),
            "seed": int(self.seed), "sampler": self.sampler, "pruner": self.pruner,
            "n_startup_trials": self.n_startup_trials, **self.identity,
        }

    def settings(self) -> dict[str, Any]:
        """The fingerprint plus this run's budget (``n_trials``, ``top_k``)."""
        return {**self.fingerprint(), "n_trials": int(self.n_trials), "top_k": int(self.top_k)}


@dataclass
class SearchOutcome:
    """The searched result: best configuration at full fidelity and both phases' trials."""

    best_params: dict[str, Any]
    best_score: float
    best_trial: FrozenTrial
    phase1: list[FrozenTrial]
    phase2: list[FrozenTrial] = field(default_factory=list)
    elapsed_s: dict[str, float] = field(default_factory=dict)
    stopped_by: str | None = None


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


def _dead_here(worker: Any, me: str, mine: set[int], number: int) -> bool:
    """Is ``worker`` (``host:pid``) a process of this host that is gone (or this process, not running ``number``)?"""
    host, _, pid = str(worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if worker == me:
        return number not in mine
    return not _pid_alive(int(pid))


def retries_exhausted(trial: FrozenTrial, max_retry: int) -> bool:
    """Will ``RetryHeartbeatStaleTrialCallback(max_retry)`` not retry this failed trial (its retries are used up)?"""
    return len(trial.system_attrs.get("retry_history", [])) + 1 > int(max_retry)


class TwoPhaseSearch:
    """Run (or join, or resume, or extend) a two-phase search; see the module docstring."""

    def __init__(self, config: SearchConfig, runner: TrialRunner, storage_url: str) -> None:
        self.config = config
        self.runner = runner
        self.url = storage_url
        with _quiet_optuna():
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=int(config.max_retry))
            self.storage = open_storage(storage_url, heartbeat_interval=max(1, int(round(config.heartbeat_s))),
                                        grace_period=max(2, int(round(config.grace_s))),
                                        heartbeat_stale_trial_callback=self.retry)
        self.me = _worker_id()
        self._mine: set[int] = set()
        self.out_dir = ensure_dir(Path(config.out_dir))
        self.console = SearchConsole()
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
        # Studies of earlier versions also stored the budget; it may change between runs.
        have = {k: v for k, v in have.items() if k not in ("n_trials", "top_k")}
        check_unchanged(study.study_name, have, want, where=mask_url(self.url))

    # ---------------------------------------------------------------- liveness
    def _fail_stale(self, study: optuna.Study) -> None:
        """Fail (and retry) RUNNING trials whose worker is gone."""
        # Optuna: heartbeat older than the grace period -> FAIL, then RetryHeartbeatStaleTrialCallback re-enqueues it.
        optuna.storages.fail_stale_trials(study)
        # What Optuna lacks: it knows no processes. On this host a dead pid means the worker is gone *now*, so a
        # re-run of a killed search (or a supervisor restarting a crashed worker) retries its trial at once instead
        # of a grace period later; and a trial left RUNNING under this very pid (pid reuse) is not ours.
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # A retry inherits the failed trial's attributes, its dead worker's id included: only a worker id
            # recorded for this very trial counts.
            if t.user_attrs.get(WORKER_TRIAL) != t._trial_id or \
                    not _dead_here(t.user_attrs.get(WORKER), self.me, self._mine, t.number):
                continue
            try:
                self.storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
                # The RUNNING -> FAIL transition is atomic in the database: only one worker wins it and retries.
                if not self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            self.retry(study, self.storage.get_trial(t._trial_id))
            log.warning("trial %d of %s was interrupted (worker %s); retrying it", t.number, study.study_name,
                        t.user_attrs.get(WORKER, "?"))

    # ---------------------------------------------------------------- running one trial
    def _run_trial(self, study: optuna.Study, trial: optuna.Trial, phase: int, fidelity: Fidelity,
                   label: str) -> None:
        from optuna.storages._heartbeat import get_heartbeat_thread  # what Study.optimize uses for its trials

        c = self.config
        trial_dir = self.out_dir / f"phase{phase}" / label
        self._mine.add(trial.number)
        try:
            with get_heartbeat_thread(trial._trial_id, self.storage):
                trial.set_user_attr(WORKER, self.me)
                trial.set_user_attr(WORKER_TRIAL, trial._trial_id)
                params = suggest(trial, c.space)
                trial.set_user_attr(PHASE, phase)
                trial.set_user_attr(FIDELITY, fidelity.to_dict())
                trial.set_user_attr(TRIAL_DIR, str(trial_dir))
                trial.set_user_attr(STARTED, time.time())
                scores: list[list[float]] = []
                # A retry inherits its failed trial's attributes; these describe the failed run, not this one.
                trial.set_user_attr(SCORES, scores)
                if trial.user_attrs.get(INTERRUPTED):
                    trial.set_user_attr(INTERRUPTED, False)
                prune_enabled = phase == 1
                best_before = _best_so_far(study)

                def report(epoch: int, score: float) -> bool:
                    scores.append([int(epoch), float(score)])
                    trial.report(float(score), int(epoch))
                    trial.set_user_attr(SCORES, scores)
                    self.console.epoch(number=trial.number, epoch=int(epoch), total_epochs=fidelity.epochs,
                                       score=float(score), best=best_before)
                    return prune_enabled and trial.should_prune()

                start = time.time()
                try:
                    result: TrialResult = self.runner.run(params, fidelity, trial_dir, report)
                except TrialFailed as err:
                    trial.set_user_attr(WALL, time.time() - start)
                    trial.set_user_attr(ERROR, mask_text(str(err), self.url)[-4000:])
                    study.tell(trial, state=TrialState.FAIL)
                    log.error("trial %d failed: %s", trial.number, str(err).splitlines()[0])
                    self._announce(study, trial, phase, fidelity, "failed", None, time.time() - start, scores)
                    return
                except BaseException:
                    # Interrupted (Ctrl-C / SIGTERM) or an engine error: hand the trial back for a retry right away.
                    self._interrupt(study, trial)
                    raise
        finally:
            self._mine.discard(trial.number)
        trial.set_user_attr(WALL, result.wall_s)
        trial.set_user_attr(SCORES, [[int(e), float(s)] for e, s in result.scores])
        trial.set_user_attr(OUTPUT, result.output_dir)
        trial.set_user_attr(MODEL, result.model_path)
        for key in TIMING_KEYS:
            value = (result.timing or {}).get(key)
            if value is not None:
                trial.set_user_attr(key, value)
        if result.pruned:
            study.tell(trial, state=TrialState.PRUNED)
            state, value = "pruned", float(result.scores[-1][1]) if result.scores else None
        elif result.score is None:
            trial.set_user_attr(ERROR, "no finite validation score")
            study.tell(trial, state=TrialState.FAIL)
            state, value = "failed", None
        else:
            study.tell(trial, result.score)
            state, value = "complete", float(result.score)
        self._announce(study, trial, phase, fidelity, state, value, result.wall_s, result.scores)

    def _announce(self, study: optuna.Study, trial: optuna.Trial, phase: int, fidelity: Fidelity, state: str,
                  value: float | None, wall_s: float | None, scores: Sequence[Sequence[float]]) -> None:
        self.console.finished(phase=phase, number=trial.number, fidelity=fidelity.name, state=state, value=value,
                              wall_s=wall_s, best=_best_so_far(study),
                              last_epoch=int(scores[-1][0]) if scores else None)

    def _interrupt(self, study: optuna.Study, trial: optuna.Trial) -> None:
        try:
            self.storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            if self.storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                self.retry(study, self.storage.get_trial(trial._trial_id))
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

    def _slot_done(self, trials: Sequence[FrozenTrial]) -> bool:
        # A trial that failed with an error counts as done (retrying a deterministic crash would loop), and so does
        # an interrupted one whose retries are used up; otherwise an interrupted one does not (its retry is queued).
        return any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
                   (t.state == TrialState.FAIL and not t.user_attrs.get(SURPLUS) and
                    (ERROR in t.user_attrs or retries_exhausted(t, self.config.max_retry))) for t in trials)

    def _out_of_time(self) -> bool:
        return self.config.deadline is not None and time.time() >= self.config.deadline

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
            fresh = sum(1 for t in trials if retry_of(t) is None)
            if (waiting or fresh < c.n_trials) and not self._out_of_time():
                trial = study.ask()
                frozen = self.storage.get_trial(trial._trial_id)
                slot = slot_of(study.get_trials(deepcopy=False), trial.number)
                if slot >= c.n_trials or (retry_of(frozen) is not None and self._slot_done(
                        [t for t in by_slot.get(slot, []) if t.number != trial.number])):
                    trial.set_user_attr(SURPLUS, True)
                    study.tell(trial, state=TrialState.FAIL)
                    continue
                trial.set_user_attr(SLOT, slot)
                self._run_trial(study, trial, 1, fidelity, f"slot{slot:04d}")
                continue
            running = any(t.state == TrialState.RUNNING for t in trials)
            if done >= c.n_trials or not c.wait or (self._out_of_time() and not running):
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

    def _plan_phase2(self, phase1: Sequence[FrozenTrial]) -> tuple[optuna.Study, list[int]]:
        """The phase-2 study with every configuration of the current top-k enqueued once; returns the plan
        (phase-1 trial numbers, best first)."""
        c = self.config
        name = phase2_name(c.study_name)
        top = self._top_k(phase1)
        plan = [t.number for t in top]
        study = self._study(name, phase=2)
        if study.user_attrs.get(PLANNED) == plan:
            return study, plan
        digest = hashlib.sha256(json.dumps(plan).encode()).hexdigest()[:16]
        try:
            # The lock: exactly one worker creates this study and enqueues the plan; the others wait for it.
            lock = optuna.create_study(study_name=f"{name}-plan-{digest}", storage=self.storage, load_if_exists=False)
            # STARTED first: a waiter that sees PLANNER must also see when planning began, or it would take over.
            lock.set_user_attr(STARTED, time.time())
            lock.set_user_attr(PLANNER, self.me)
        except optuna.exceptions.DuplicatedStudyError:
            lock = optuna.load_study(study_name=f"{name}-plan-{digest}", storage=self.storage)
            seen = time.time()
            while study.user_attrs.get(PLANNED) != plan:
                attrs = lock.user_attrs
                started = float(attrs.get(STARTED, seen))  # absent: the planner has only just begun
                if (PLANNER in attrs and _dead_here(attrs[PLANNER], self.me, set(), -1)) or \
                        time.time() - started > c.grace_s:
                    lock.set_user_attr(PLANNER, self.me)  # the planner died: finish its plan
                    break
                time.sleep(c.poll_s)
                study = self._study(name, phase=2)
        if study.user_attrs.get(PLANNED) != plan:
            have = {int(t.user_attrs[SOURCE]) for t in study.get_trials(deepcopy=False)
                    if SOURCE in t.user_attrs and not t.user_attrs.get(SURPLUS)}
            slots = {t.number: s for s, ts in self._phase1_slots(phase1).items() for t in ts}
            for rank, t in enumerate(top):
                if t.number not in have:
                    study.enqueue_trial(dict(t.params), user_attrs={PHASE: 2, RANK: rank, SOURCE: t.number,
                                                                    SOURCE_SLOT: slots.get(t.number, t.number),
                                                                    PROXY_SCORE: float(t.value)})
            study.set_user_attr(PLANNED, plan)
        return study, plan

    def _phase2(self, study: optuna.Study, plan: Sequence[int], bar: Any) -> list[FrozenTrial]:
        c = self.config
        while True:
            self._fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            by_source: dict[int, list[FrozenTrial]] = {}
            for t in trials:
                if SOURCE in t.user_attrs and not t.user_attrs.get(SURPLUS):
                    by_source.setdefault(int(t.user_attrs[SOURCE]), []).append(t)
            done = sum(1 for s in plan if self._slot_done(by_source.get(s, [])))
            _set_bar(bar, done, total=len(plan))
            if any(t.state == TrialState.WAITING for t in trials):
                trial = study.ask()
                frozen = self.storage.get_trial(trial._trial_id)
                source = frozen.user_attrs.get(SOURCE)
                others = [t for t in by_source.get(int(source), []) if t.number != trial.number] \
                    if source is not None else []
                if source is None or int(source) not in plan or self._slot_done(others) or \
                        any(t.state == TrialState.RUNNING for t in others):
                    # Not (or no longer) planned, or trained / in training elsewhere: never train it twice.
                    trial.set_user_attr(SURPLUS, True)
                    study.tell(trial, state=TrialState.FAIL)
                    continue
                label = f"from-slot{int(frozen.user_attrs.get(SOURCE_SLOT, source)):04d}"
                self._run_trial(study, trial, 2, c.full, label)
                continue
            if done >= len(plan):
                return study.get_trials(deepcopy=True)
            time.sleep(c.poll_s)

    # ---------------------------------------------------------------- entry point
    def prepare(self) -> optuna.Study:
        """Create (or load) the phase-1 study and check that it is this search (:class:`InputError` if not)."""
        with _quiet_optuna():
            study = self._study(self.config.study_name, phase=1)
            self._check_fingerprint(study)
        return study

    def finished(self) -> bool:
        """Is there nothing left to train (every slot done or out of time, the current top-k retrained)?"""
        with _quiet_optuna():
            return self._finished()

    def _finished(self) -> bool:
        c = self.config
        study = self._study(c.study_name, phase=1)
        trials = study.get_trials(deepcopy=False)
        if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
            return False
        by_slot = self._phase1_slots(trials)
        if sum(1 for s in range(c.n_trials) if self._slot_done(by_slot.get(s, []))) < c.n_trials and \
                not self._out_of_time():
            return False
        if not c.two_phase:
            return True
        try:
            plan = [t.number for t in self._top_k(study.get_trials(deepcopy=True))]
            study2 = optuna.load_study(study_name=phase2_name(c.study_name), storage=self.storage)
        except (InputError, KeyError):
            return False
        if study2.user_attrs.get(PLANNED) != plan:
            return False
        by_source: dict[int, list[FrozenTrial]] = {}
        for t in study2.get_trials(deepcopy=False):
            if SOURCE in t.user_attrs and not t.user_attrs.get(SURPLUS):
                by_source.setdefault(int(t.user_attrs[SOURCE]), []).append(t)
        return all(self._slot_done(by_source.get(s, [])) for s in plan)

    def run(self) -> SearchOutcome | None:
        """Run this worker until the search is finished (by it and any other workers). Returns ``None`` for a
        worker that does not take part in phase 2 (``config.phase2`` false) once it has nothing left to train."""
        c = self.config
        with _sigterm_as_interrupt(), _quiet_optuna():
            t0 = time.time()
            study = self._study(c.study_name, phase=1)
            self._check_fingerprint(study)
            bar = self.console.bar = _bar(c.progress_bar, c.n_trials,
                                          "phase 1" + (f" ({c.proxy.name})" if c.two_phase else " (full)"))
            try:
                phase1 = self._phase1(study, bar)
            finally:
                _close(bar)
            elapsed = {"phase1": time.time() - t0}
            stopped = "timeout" if self._out_of_time() else None
            if not c.phase2:
                return None
            phase2: list[FrozenTrial] = []
            plan: list[int] = []
            if c.two_phase:
                t1 = time.time()
                study2, plan = self._plan_phase2(phase1)
                bar = self.console.bar = _bar(c.progress_bar, len(plan), "phase 2 (full)")
                try:
                    phase2 = self._phase2(study2, plan, bar)
                finally:
                    _close(bar)
                elapsed["phase2"] = time.time() - t1
            pool = [t for t in phase2 if t.user_attrs.get(SOURCE) in plan] if c.two_phase else phase1
            done = [t for t in pool if t.state == TrialState.COMPLETE and t.value is not None]
            if not done:
                raise InputError(f"no full-fidelity trial of study {c.study_name!r} completed; see "
                                 f"{self.out_dir}/phase{2 if c.two_phase else 1}/*/train.log", where=str(self.out_dir))
            key = (lambda t: (-float(t.value), plan.index(int(t.user_attrs[SOURCE])))) if c.two_phase else \
                (lambda t: (-float(t.value), slot_of(pool, t.number)))
            best = sorted(done, key=key)[0]
            return SearchOutcome(best_params=dict(best.params), best_score=float(best.value), best_trial=best,
                                 phase1=phase1, phase2=phase2, elapsed_s=elapsed, stopped_by=stopped)


def _best_so_far(study: optuna.Study) -> tuple[float, int] | None:
    """(best value, its trial number) of the study's completed trials; ``None`` before the first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        return None
    top = max(done, key=lambda t: (float(t.value), -t.number))
    return float(top.value), top.number


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
