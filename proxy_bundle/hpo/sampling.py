"""Samplers and pruners for the search, built so that a resumed search samples exactly what an uninterrupted one
would have.

Optuna's seeded samplers keep one random stream for the life of the process: after a restart the stream starts
over and trial *n* gets different values than it would have. :class:`SlotSeededSampler` instead gives every
*slot* (the n-th fresh trial of the study; a retried trial keeps the slot of the trial it retries) its own sampler
seeded from ``(seed, slot)``. With a single worker a slot then sees the same history (completed and pruned trials
of the earlier slots; failed ones are ignored by TPE) and the same random numbers, so it samples the same values.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from proxy_bundle.errors import InputError

__all__ = ["PRUNERS", "SAMPLERS", "SlotSeededSampler", "make_pruner", "make_sampler", "retry_of", "slot_of"]

SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median", "asha", "hyperband")
RETRY_OF = "retry_of"
SLOT = "slot"


def retry_of(trial: FrozenTrial) -> int | None:
    """The trial this one retries (Optuna's ``RetryHeartbeatStaleTrialCallback`` records the first failed one), or None."""
    if RETRY_OF in trial.user_attrs:  # studies written before retries went through Optuna's callback
        return int(trial.user_attrs[RETRY_OF])
    number = trial.system_attrs.get("failed_trial")
    return None if number is None else int(number)


def slot_of(trials: Sequence[FrozenTrial], number: int) -> int:
    """The slot of trial ``number``: its ``slot`` user attribute if set (retries), else the count of fresh trials
    (trials that are not retries) numbered below it."""
    for t in trials:
        if t.number == number and SLOT in t.user_attrs:
            return int(t.user_attrs[SLOT])
    return sum(1 for t in trials if t.number < number and retry_of(t) is None)


def _derive_seed(seed: int, slot: int) -> int:
    digest = hashlib.sha256(f"proxy-bundle:{seed}:{slot}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class SlotSeededSampler(BaseSampler):
    """Delegates to a fresh ``factory(seed')`` sampler per slot, ``seed'`` derived from ``(seed, slot)``."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int = 0) -> None:
        self._factory = factory
        self._seed = int(seed)
        self._by_number: dict[int, BaseSampler] = {}

    def _inner(self, study: Study, trial: FrozenTrial) -> BaseSampler:
        inner = self._by_number.get(trial.number)
        if inner is None:
            slot = slot_of(study.get_trials(deepcopy=False), trial.number)
            inner = self._by_number[trial.number] = self._factory(_derive_seed(self._seed, slot))
        return inner

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._inner(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner(study, trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._inner(study, trial).before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        inner = self._by_number.pop(trial.number, None)
        if inner is not None:
            inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        # Seeds are a function of (seed, slot) by design; nothing to reseed.
        pass


def default_startup_trials(n_trials: int) -> int:
    """Random trials before TPE takes over: half the budget, between 2 and Optuna's default of 10."""
    return max(2, min(10, n_trials // 2))


def make_sampler(name: str, seed: int, n_trials: int, n_startup_trials: int | None = None) -> BaseSampler:
    """``tpe`` (default; ``constant_liar`` so parallel workers spread out) or ``random``, slot-seeded."""
    name = str(name).lower()
    if name == "tpe":
        startup = default_startup_trials(n_trials) if n_startup_trials is None else int(n_startup_trials)
        return SlotSeededSampler(lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=startup,
                                                                      constant_liar=True), seed)
    if name == "random":
        return SlotSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    raise InputError(f"unknown sampler {name!r}; use one of {list(SAMPLERS)}", where="--sampler")


def make_pruner(name: str, n_trials: int, max_epochs: int | None = None) -> optuna.pruners.BasePruner:
    """Pruner by name; steps are epochs (one report per validation).

    ``median``: stop a trial whose Dice is below the median of earlier trials at the same epoch, once at least
    two trials completed (the median of one trial is that trial) and the trial reached a quarter of
    ``max_epochs`` (at least epoch 1: early Dice is noise, a network learns the background first). ``asha``: asynchronous successive halving (rungs at 1, 3, 9, ...
    epochs). ``hyperband``: several ASHA brackets (Hyperband assigns a trial to a bracket from its trial number,
    so a resumed run may bracket a retried trial differently).
    """
    name = str(name).lower()
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        warmup = max(1, (max_epochs or 0) // 4)  # steps are 1-based epochs: step >= warmup may prune
        return optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, n_trials // 4)), n_warmup_steps=warmup)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs or "auto", reduction_factor=3)
    raise InputError(f"unknown pruner {name!r}; use one of {list(PRUNERS)}", where="--pruner")
