"""Long-lived search workers, one per (device, lane), and the supervisor that keeps them running.

The ``hpo`` command prepares everything once (analysis, proxy datalist, template, study), writes a
:class:`WorkerSpec` and starts one worker process per :class:`~proxy_bundle.hpo.devices.WorkerSlot` with that slot's
``CUDA_VISIBLE_DEVICES``. Each worker imports MONAI once and trains trial after trial in its own process
(:class:`~proxy_bundle.hpo.inprocess.InProcessAlgoRunner`), taking trials from the Optuna storage like any other
worker (so several machines can join with the same ``--storage``). Lane 0 of a device also trains the
full-fidelity phase-2 trials, so those get the device to themselves once the packed phase 1 is over.

Crash isolation: a worker that dies (segfault, out of host memory, killed) takes only its trial down; the search
retries that trial (dead-pid check / Optuna heartbeat) and the supervisor starts the worker again, up to
``max_restarts`` times per lane.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from proxy_bundle.atomic import ensure_dir, write_json
from proxy_bundle.hpo.devices import WorkerSlot

__all__ = ["WorkerSpec", "run_workers", "worker_main"]

log = logging.getLogger("proxy_bundle.hpo")


@dataclass
class WorkerSpec:
    """Everything a worker process needs to rebuild the search and its runner (JSON file)."""

    url: str
    search: dict[str, Any]
    runner: dict[str, Any]
    slots: list[dict[str, Any]] = field(default_factory=list)

    def write(self, path: str | os.PathLike) -> Path:
        return write_json(path, asdict(self))

    @classmethod
    def read(cls, path: str | os.PathLike) -> "WorkerSpec":
        return cls(**json.loads(Path(path).read_text()))


def search_dict(config: Any) -> dict[str, Any]:
    """A :class:`~proxy_bundle.hpo.engine.SearchConfig` as plain data (inverse: :func:`search_config`)."""
    out = {k: v for k, v in asdict(config).items() if k not in ("space", "proxy", "full")}
    out.update(space=config.space.to_dict(), proxy=config.proxy.to_dict(), full=config.full.to_dict())
    return out


def search_config(data: Mapping[str, Any], **changes: Any) -> Any:
    from proxy_bundle.hpo.engine import SearchConfig
    from proxy_bundle.hpo.runners import Fidelity
    from proxy_bundle.hpo.space import parse_space

    d = dict(data)
    d.update(space=parse_space(d["space"], "search space"), proxy=Fidelity(**d["proxy"]), full=Fidelity(**d["full"]))
    d.update(changes)
    return SearchConfig(**d)


def build_runner(data: Mapping[str, Any]) -> Any:
    """The runner of a worker from ``WorkerSpec.runner``: an algorithm template trained in-process (default),
    ``"kind": "process"`` for one training process per trial (as ``BundleAlgo.train``), or
    ``{"kind": "command", "command": [...]}`` for any training command (:class:`CommandRunner`)."""
    from proxy_bundle.hpo.inprocess import InProcessAlgoRunner
    from proxy_bundle.hpo.runners import AlgoRunner, CommandRunner

    if data.get("kind") == "command":
        return CommandRunner(data["command"], base_overrides=data.get("base_overrides"),
                             poll_s=float(data.get("poll_s", 0.5)), timeout_s=data.get("timeout_s"))

    cls = AlgoRunner if data.get("kind") == "process" else InProcessAlgoRunner
    return cls.from_templates(
        data["templates"], data["algo"], data["work_dir"], data["datastats"], data["input_file"],
        fold=int(data["fold"]), base_overrides=dict(data["base_overrides"]), timeout_s=data.get("timeout_s"))


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``python -m proxy_bundle.hpo.workers SPEC INDEX``: run worker INDEX of SPEC until the search is done."""
    args = list(sys.argv[1:] if argv is None else argv)
    spec = WorkerSpec.read(args[0])
    slot = WorkerSlot(**spec.slots[int(args[1])])
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker {slot.label} %(levelname)s %(message)s")
    from proxy_bundle.hpo.engine import TwoPhaseSearch

    config = search_config(spec.search, phase2=slot.lane == 0, wait=slot.lane == 0, progress_bar=False)
    runner = build_runner(spec.runner)
    try:
        TwoPhaseSearch(config, runner, spec.url).run()
    except KeyboardInterrupt:
        return 130
    return 0


def _start(spec_path: Path, index: int, slot: WorkerSlot, log_dir: Path) -> subprocess.Popen:
    from proxy_bundle.hpo.runners import _die_with_parent

    env = {**os.environ, **slot.env}
    log_file = open(log_dir / f"worker-{slot.label}.log", "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "proxy_bundle.hpo.workers", str(spec_path), str(index)],
                                stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent if os.name == "posix" else None)
    finally:
        log_file.close()


def _tail(path: Path, n: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_workers(spec: WorkerSpec, slots: Sequence[WorkerSlot], work_dir: str | os.PathLike, *,
                max_restarts: int = 3, poll_s: float = 1.0, on_poll: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run one worker process per slot until all finish; restart a worker that died. Returns per-worker exit
    codes and restart counts. Ctrl-C / SIGTERM stops every worker (their trials are retried by the next run).
    ``on_poll`` runs every ``poll_s`` seconds while they train (the console's trial lines)."""
    out = ensure_dir(Path(work_dir))
    spec.slots = [asdict(s) for s in slots]
    spec_path = spec.write(out / "workers.json")
    from proxy_bundle.hpo.engine import _sigterm_as_interrupt

    with _sigterm_as_interrupt():
        return _supervise(spec_path, slots, out, max_restarts, poll_s, on_poll)


def _supervise(spec_path: Path, slots: Sequence[WorkerSlot], out: Path, max_restarts: int,
               poll_s: float, on_poll: Callable[[], None] | None = None) -> dict[str, Any]:
    procs = {i: _start(spec_path, i, s, out) for i, s in enumerate(slots)}
    restarts = {i: 0 for i in procs}
    codes: dict[int, int] = {}
    try:
        while procs:
            time.sleep(poll_s)
            if on_poll is not None:
                try:
                    on_poll()
                except Exception as err:  # a console hiccup (e.g. a busy database) must not stop the search
                    log.debug("console poll failed: %s", err)
            for i, proc in list(procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del procs[i]
                if code == 0:
                    codes[i] = 0
                    continue
                logfile = out / f"worker-{slots[i].label}.log"
                if restarts[i] >= max_restarts:
                    codes[i] = code
                    log.error("worker %s died (exit %s) %d times; not restarted. Log %s:\n%s", slots[i].label,
                              code, restarts[i] + 1, logfile, _tail(logfile))
                    continue
                restarts[i] += 1
                log.warning("worker %s died (exit %s); its trial is retried and the worker restarted (log %s)",
                            slots[i].label, code, logfile)
                procs[i] = _start(spec_path, i, slots[i], out)
    except BaseException:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 30
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    return {"workers": [{"slot": slots[i].label, "exit": codes.get(i), "restarts": restarts[i]}
                        for i in range(len(slots))]}


if __name__ == "__main__":
    raise SystemExit(worker_main())
