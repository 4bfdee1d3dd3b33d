"""What a running search shows: one line per finished trial and the progress bar's live status.

Each finished trial prints one line (phase, trial, fidelity, result, wall-clock, best so far), written through
``tqdm.write`` so it lands above the progress bar instead of through it; without a bar (``--progress=false``)
the lines are the log. The bar's postfix shows the running trial's last validated epoch and the best score so
far. Formatting is pure (:func:`trial_line`, :func:`epoch_status`); :class:`SearchConsole` only prints.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["SearchConsole", "StudyWatcher", "epoch_status", "trial_line"]


def _best(best: tuple[float, int] | None) -> str:
    return f"best so far {best[0]:.4f} (trial {best[1]})" if best is not None else "no completed trial yet"


def trial_line(*, phase: int, number: int, fidelity: str, state: str, value: float | None, wall_s: float | None,
               best: tuple[float, int] | None, last_epoch: int | None = None, error: str | None = None) -> str:
    """One line for a finished trial.

    Args:
        phase: 1 (search fidelity) or 2 (full-fidelity retraining).
        number: Optuna trial number.
        fidelity: fidelity name, e.g. ``proxy-both`` or ``full``.
        state: ``complete``, ``pruned`` or ``failed``.
        value: the trial's score (best validation Dice); for a pruned trial its last reported score.
        wall_s: wall-clock seconds of the trial.
        best: (best score, its trial number) of the phase so far, this trial included.
        last_epoch: last validated epoch (named for pruned trials).
        error: first line of a failure's cause.
    """
    head = f"phase {phase} trial {number} ({fidelity}): "
    took = f" in {wall_s:.0f} s" if wall_s is not None else ""
    if state == "complete" and value is not None:
        body = f"Dice {value:.4f}{took}"
    elif state == "pruned":
        at = f" at epoch {last_epoch}" if last_epoch is not None else ""
        score = f" (Dice {value:.4f})" if value is not None else ""
        body = f"pruned{at}{score}{took}"
    else:
        body = f"failed{took}" + (f": {error}" if error else "")
    return f"{head}{body}; {_best(best)}"


def epoch_status(*, number: int, epoch: int, total_epochs: int | None, score: float,
                 best: tuple[float, int] | None) -> str:
    """The progress bar's postfix while a trial trains: ``trial 3 epoch 4/6 Dice 0.6123 | best 0.7010``."""
    of = f"/{total_epochs}" if total_epochs else ""
    best_txt = f"best {best[0]:.4f}" if best is not None else "best -"
    return f"trial {number} epoch {epoch}{of} Dice {score:.4f} | {best_txt}"


class SearchConsole:
    """Prints :func:`trial_line` lines and keeps the phase's progress bar (``bar``, a tqdm or ``None``) current."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.bar: Any = None
        self.stream = stream

    def epoch(self, **kwargs: Any) -> None:
        """A trial validated an epoch: show it on the bar (see :func:`epoch_status` for the arguments)."""
        if self.bar is not None:
            self.bar.set_postfix_str(epoch_status(**kwargs), refresh=True)

    def finished(self, **kwargs: Any) -> None:
        """A trial finished: print its line (see :func:`trial_line` for the arguments)."""
        line = trial_line(**kwargs)
        if self.bar is not None:
            from tqdm.auto import tqdm

            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream or sys.stdout, flush=True)


class StudyWatcher:
    """The console of a search trained by other processes (the device workers): polls the Optuna storage and
    prints a :func:`trial_line` for every trial that finishes, with a progress bar over phase 1 and phase 2.

    Trials already finished when the watcher starts (a resumed search) are not printed again.
    """

    def __init__(self, storage: Any, study_name: str, *, fidelities: dict[int, Any], n_trials: int,
                 top_k: int | None = None, progress_bar: bool = True, stream: TextIO | None = None) -> None:
        from proxy_bundle.hpo.engine import phase2_name

        self.storage = storage
        self.names = {1: study_name, 2: phase2_name(study_name)}
        self.fidelities = fidelities
        self.n_trials = int(n_trials)
        self.top_k = None if top_k is None else int(top_k)
        self.console = SearchConsole(stream)
        self.progress_bar = progress_bar
        self._seen: set[tuple[int, int]] = set()
        self._phase = 1
        for phase, trial in self._finished():
            self._seen.add((phase, trial.number))

    def _trials(self, phase: int) -> list[Any]:
        try:
            study_id = self.storage.get_study_id_from_name(self.names[phase])
        except KeyError:
            return []
        return list(self.storage.get_all_trials(study_id, deepcopy=False))

    def _finished(self) -> list[tuple[int, Any]]:
        from optuna.trial import TrialState

        from proxy_bundle.hpo.engine import ERROR, SURPLUS

        out = []
        for phase in (1, 2):
            for t in self._trials(phase):
                if t.user_attrs.get(SURPLUS):
                    continue
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                        t.state == TrialState.FAIL and ERROR in t.user_attrs):
                    out.append((phase, t))
        return out

    @staticmethod
    def _best(trials: list[Any]) -> tuple[float, int] | None:
        from optuna.trial import TrialState

        done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if not done:
            return None
        top = max(done, key=lambda t: (float(t.value), -t.number))
        return float(top.value), top.number

    def _open_bar(self, phase: int, total: int) -> None:
        if not self.progress_bar:
            return
        from tqdm.auto import tqdm

        if self.console.bar is not None:
            self.console.bar.close()
        name = getattr(self.fidelities.get(phase), "name", "full")
        self.console.bar = tqdm(total=total, desc=f"phase {phase} ({name})", unit="trial", dynamic_ncols=True)

    def poll(self) -> None:
        """Print the trials finished since the last call; move the bar."""
        from optuna.trial import TrialState

        from proxy_bundle.hpo.engine import ERROR, SCORES, WALL

        if self.console.bar is None and self.progress_bar:
            self._open_bar(1, self.n_trials)
        finished = self._finished()
        if self._phase == 1:
            phase2 = self._trials(2)
            if phase2:  # phase 2 has started: its bar replaces phase 1's at once, not when its first trial ends
                self._phase = 2
                self._open_bar(2, max(self.top_k or 0, len({t.number for t in phase2})))
        for phase, t in sorted(finished, key=lambda pt: (pt[0], pt[1].number)):
            if (phase, t.number) in self._seen:
                continue
            self._seen.add((phase, t.number))
            scores = t.user_attrs.get(SCORES) or []
            state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(t.state, "failed")
            value = t.value if state == "complete" else (float(scores[-1][1]) if scores and state == "pruned" else None)
            error = str(t.user_attrs.get(ERROR) or "").splitlines()[0] if state == "failed" and t.user_attrs.get(
                ERROR) else None
            self.console.finished(phase=phase, number=t.number,
                                  fidelity=getattr(self.fidelities.get(phase), "name", "full"), state=state,
                                  value=value, wall_s=t.user_attrs.get(WALL),
                                  best=self._best(self._trials(phase)),
                                  last_epoch=int(scores[-1][0]) if scores else None, error=error)
        if self.console.bar is not None:
            done = sum(1 for p, _ in finished if p == self._phase)
            self.console.bar.n = min(done, self.console.bar.total or done)
            running = [t for t in self._trials(self._phase)
                       if t.state == TrialState.RUNNING and t.user_attrs.get(SCORES)]
            if running:
                t = max(running, key=lambda r: len(r.user_attrs[SCORES]))
                epoch, score = t.user_attrs[SCORES][-1]
                self.console.epoch(number=t.number, epoch=int(epoch),
                                   total_epochs=getattr(self.fidelities.get(self._phase), "epochs", None),
                                   score=float(score), best=self._best(self._trials(self._phase)))
            else:
                self.console.bar.refresh()

    def close(self) -> None:
        """A last poll, then close the bar."""
        self.poll()
        if self.console.bar is not None:
            self.console.bar.close()
            self.console.bar = None
