"""The study's long-lived workers: one process per device slot, each training run after run in that process.

A study trains hundreds of short runs. Starting ``python train.py`` for each one would import MONAI and torch
every time (seconds per run, most of a small run's wall-clock); instead each worker process takes a
:class:`~proxy_bundle.hpo.devices.WorkerSlot`, sets that slot's ``CUDA_VISIBLE_DEVICES`` before torch is imported,
builds the search engine's in-process runner once (:class:`~proxy_bundle.hpo.inprocess.InProcessAlgoRunner`, the
same training path as ``hpo``'s workers) and trains the runs the parent sends it. The parent alone writes the
run store, so a crashed worker loses at most the run it was training.

The pool is the standard library's ``ProcessPoolExecutor`` (spawn start: CUDA cannot be forked); the only
piece written here is the slot hand-out, because the executor has no notion of a per-worker device.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from proxy_bundle.errors import InputError
from proxy_bundle.hpo.devices import CPU, WorkerSlot, cpu_count

__all__ = ["StudyWorkers", "study_slots"]

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_state: dict[str, Any] = {}


def study_slots(devices: Sequence[str], trials_per_device: int | str | None, threads: int | None) -> list[WorkerSlot]:
    """The study's worker slots on ``devices`` (as :func:`~proxy_bundle.hpo.devices.resolve_devices` returns).

    On GPUs every run gets a device to itself, so that its device time is its own cost (``trials_per_device``
    must be 1 or ``auto``); on the CPU ``trials_per_device`` runs train side by side, ``auto`` filling the cores
    this process may use at ``threads`` threads each (2 on a 2-core machine with 1 thread).

    Raises :class:`InputError` (``study --trials_per_device``) for a value other than a positive integer or
    ``auto``, or for more than one run per GPU.
    """
    on_gpu = list(devices) != [CPU]
    auto = trials_per_device is None or str(trials_per_device).strip().lower() == "auto"
    if auto:
        n = 1 if on_gpu else max(1, cpu_count() // max(1, int(threads or 1)))
    else:
        text = str(trials_per_device).strip()
        if isinstance(trials_per_device, bool) or not text.isdigit() or int(text) < 1:
            raise InputError(f"must be auto or a positive integer, got {trials_per_device!r}",
                             where="study --trials_per_device")
        n = int(text)
        if on_gpu and n > 1:
            raise InputError(f"the study trains one run per GPU so that each run's device time is its own cost; "
                             f"got {n} (add GPUs with --devices instead)", where="study --trials_per_device")
    return [WorkerSlot(d, lane) for d in devices for lane in range(n)]


def _init(slots: Any, stop: Any, runner_spec: Mapping[str, Any], threads: int | None, log_dir: str) -> None:
    """Worker start: claim a slot, pin its device and threads, send its output to its log file, build the runner
    and the evaluator once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (see StudyWorkers)
    slot = WorkerSlot(**slots.get())
    # Library logging and warnings go to the worker's log, not between the parent's progress lines.
    log = open(Path(log_dir) / f"worker-{slot.label}.log", "ab", buffering=0)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    os.environ.update(slot.env)  # before torch is first imported in this process
    if threads is not None:
        os.environ.update({k: str(int(threads)) for k in _THREAD_VARS})
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    from proxy_bundle.hpo.workers import build_runner
    from proxy_bundle.study.evaluate import Evaluator
    from proxy_bundle.study.report import hardware

    _state.update(slot=slot, stop=stop, runner=build_runner(runner_spec), evaluator=Evaluator(),
                  hardware=hardware())


def _ready() -> str:
    return _state["slot"].label


def _train(job: tuple) -> dict[str, Any]:
    """Train and score one run in this worker (see :func:`proxy_bundle.study.runner.train_and_score`)."""
    from proxy_bundle.study.runner import train_and_score

    config, variant, fid, trial_dir, sets, keep_checkpoints = job
    rec = train_and_score(_state["runner"], _state["evaluator"], config, fid, Path(trial_dir), sets,
                          keep_checkpoints, variant.train_seed, stop=_state["stop"])
    rec["hardware"] = _state["hardware"]
    rec["worker"] = _state["slot"].label
    return rec


class StudyWorkers:
    """A pool of long-lived training processes, one per slot (use as a context manager).

    Args:
        slots: from :func:`study_slots`.
        runner_spec: the runner each worker builds (``proxy_bundle.hpo.workers.build_runner``'s argument).
        threads: CPU threads per worker (``OMP_NUM_THREADS`` and ``torch.set_num_threads``); ``None`` keeps the
            environment's.
        log_dir: folder of the workers' output, one ``worker-<device>.<lane>.log`` each (created).
    """

    def __init__(self, slots: Sequence[WorkerSlot], runner_spec: Mapping[str, Any], threads: int | None,
                 log_dir: str | os.PathLike) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        Path(log_dir).mkdir(parents=True, exist_ok=True)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        for s in slots:
            queue.put({"device": s.device, "lane": s.lane})
        self.stop = ctx.Event()
        self.size = len(slots)
        self._queue = queue
        self._mp = mp
        self.pool = ProcessPoolExecutor(max_workers=len(slots), mp_context=ctx, initializer=_init,
                                        initargs=(queue, self.stop, dict(runner_spec), threads, str(log_dir)))
        # Every worker starts now with Ctrl-C ignored (inherited through exec), so that a Ctrl-C in the terminal
        # reaches the parent alone: it stops the workers itself, without a traceback from each of them.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            for _ in slots:
                self.pool.submit(_ready)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)

    def submit(self, config: Any, variant: Any, fid: Any, trial_dir: str | os.PathLike,
               sets: Mapping[str, Sequence[Mapping[str, str]]], keep_checkpoints: bool) -> Any:
        """Queue one run; the future's result is its record (``status`` ok, failed or interrupted)."""
        return self.pool.submit(_train, (config, variant, fid, str(trial_dir), dict(sets), bool(keep_checkpoints)))

    def close(self, cancel: bool = False) -> None:
        """Stop the workers once their runs end; ``cancel`` (Ctrl-C, an error): at once, queued runs never start
        and running ones are not stored (their trial folders are started afresh by the next invocation)."""
        if cancel:
            self.stop.set()
            self.pool.shutdown(wait=False, cancel_futures=True)
            for proc in self._mp.active_children():
                proc.terminate()
            for proc in self._mp.active_children():
                proc.join(timeout=30)
        else:
            self.pool.shutdown(wait=True)
        self._queue.close()

    def __enter__(self) -> "StudyWorkers":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(cancel=exc_type is not None)
