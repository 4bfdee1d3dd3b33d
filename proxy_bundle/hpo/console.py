"""What a running search shows: one line per finished trial and the progress bar's live status.

Each finished trial prints one line (phase, trial, fidelity, result, wall-clock, best so far), written through
``tqdm.write`` so it lands above the progress bar instead of through it; without a bar (``--progress=false``)
the lines are the log. The bar's postfix shows the running trial's last validated epoch and the best score so
far. Formatting is pure (:func:`trial_line`, :func:`epoch_status`); :class:`SearchConsole` only prints.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["SearchConsole", "epoch_status", "trial_line"]


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
