"""The per-validation progress file and resuming an interrupted training run."""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["ProgressWriter", "latest_checkpoint", "read_progress", "write_progress"]

_FIELDS = ("epoch", "avg_dice_score", "best_avg_dice_score", "best_epoch", "elapsed_s")
_INT_FIELDS = ("epoch", "best_epoch")


def _yaml_float(x: float) -> str:
    # YAML 1.1 readers (PyYAML) read "1e-05" as a string: a float needs a dot before the exponent.
    text = repr(float(x))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def write_progress(path: str | os.PathLike, entries: list[dict]) -> None:
    """Write ``entries`` as a YAML list, atomically (temporary sibling, fsync, rename).

    Written by hand because PyYAML is not a dependency of MONAI; the flat format below is all this file holds.
    """
    lines = []
    for entry in entries:
        for i, field in enumerate(_FIELDS):
            value = entry[field]
            text = str(int(value)) if field in _INT_FIELDS else _yaml_float(value)
            lines.append(f"{'- ' if i == 0 else '  '}{field}: {text}")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n" if lines else "[]\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_progress(path: str | os.PathLike) -> list[dict]:
    """The entries :func:`write_progress` wrote (``[]`` for a missing file or one in another format)."""
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, IsADirectoryError):
        return []
    entries: list[dict] = []
    for line in text.splitlines():
        m = re.fullmatch(r"(- |  )(\w+): (\S+)", line)
        if m is None:
            continue
        if m.group(1) == "- ":
            entries.append({})
        if not entries:
            return []
        field, value = m.group(2), m.group(3)
        try:
            entries[-1][field] = int(value) if field in _INT_FIELDS else float(value)
        except ValueError:
            return []
    return [e for e in entries if all(f in e for f in _FIELDS)]


class ProgressWriter:
    """Ignite handler for a validation engine: after every validation it rewrites ``path`` atomically.

    The file is a YAML list with one entry per validation, ``{epoch, avg_dice_score, best_avg_dice_score,
    best_epoch, elapsed_s}``: the format of Auto3DSeg's ``progress.yaml``, which a hyper-parameter search
    polls to report each epoch and prune. ``epoch`` is the training epoch the validation ran after. Entries from
    an earlier run at the same or later epochs are dropped, so a resumed run continues the file and a fresh run
    starts it anew.

    Args:
        path: the progress file.
        metric_name: the key metric of the validation engine (mean Dice).
    """

    def __init__(self, path: str | os.PathLike, metric_name: str = "val_mean_dice") -> None:
        self.path = Path(path)
        self.metric_name = metric_name
        self._start = time.monotonic()
        self._entries: list[dict] | None = None
        self._offset = 0.0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        epoch = int(engine.state.epoch)  # ValidationHandler runs the evaluator with the trainer's epoch
        value = engine.state.metrics.get(self.metric_name)
        if value is None:
            computed = sorted(engine.state.metrics)
            raise KeyError(f"metric {self.metric_name!r} not computed by this engine (has {computed})")
        if self._entries is None:
            self._entries = [e for e in read_progress(self.path) if e["epoch"] < epoch]
            # A resumed run continues the clock of the run it resumes (the time between the interruption and
            # the restart trained nothing and is not counted).
            self._offset = float(self._entries[-1]["elapsed_s"]) if self._entries else 0.0
        self._entries = [e for e in self._entries if e["epoch"] < epoch]
        score = float(value)
        prev = max(self._entries, key=lambda e: e["best_avg_dice_score"], default=None)
        if prev is None or score > prev["best_avg_dice_score"]:
            best, best_epoch = score, epoch
        else:
            best, best_epoch = float(prev["best_avg_dice_score"]), int(prev["best_epoch"])
        self._entries.append({
            "epoch": epoch,
            "avg_dice_score": score,
            "best_avg_dice_score": best,
            "best_epoch": best_epoch,
            "elapsed_s": round(self._offset + time.monotonic() - self._start, 3),
        })
        write_progress(self.path, self._entries)


_EPOCH_CKPT = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str | None:
    """Path of the highest-epoch ``*checkpoint_epoch=N.pt`` in ``ckpt_dir`` (written by CheckpointSaver), or None."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _EPOCH_CKPT.search(p.name))]
    return str(max(found)[1]) if found else None
