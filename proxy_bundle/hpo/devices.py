"""Which accelerator each search worker trains on: device lists, per-device packing and DataLoader sizing.

Pure functions of the environment they are given (no CUDA call here), so that the mapping is testable without a
GPU. A worker's ``CUDA_VISIBLE_DEVICES`` is always built from the *parent's* visible list: with the parent under
``CUDA_VISIBLE_DEVICES=3``, the worker for ``--devices 0`` gets ``CUDA_VISIBLE_DEVICES=3`` (physical GPU 3), never
``0``. (MONAI's ``BundleAlgo`` rebuilds the list as ``range(torch.cuda.device_count())``, which loses that
mapping; :func:`algo_device_setting` restores it.)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from proxy_bundle.errors import InputError

__all__ = ["CPU", "WorkerSlot", "algo_device_setting", "cpu_count", "dataloader_workers", "describe_slots",
           "pack_choice", "plan_workers", "resolve_devices", "visible_devices"]

CPU = "cpu"
ENV = "CUDA_VISIBLE_DEVICES"


def visible_devices(environ: Mapping[str, str]) -> list[str] | None:
    """The parent's visible CUDA devices as listed in ``CUDA_VISIBLE_DEVICES`` (ids or UUIDs, in order);
    ``None`` when the variable is unset (every device is visible), ``[]`` when it hides them all."""
    if ENV not in environ:
        return None
    raw = str(environ[ENV]).strip()
    if raw == "" or raw == "-1":
        return []
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part or part == "-1":  # CUDA stops at the first invalid entry
            break
        out.append(part)
    return out


def _physical(environ: Mapping[str, str], cuda_count: int) -> list[str]:
    visible = visible_devices(environ)
    if visible is None:
        return [str(i) for i in range(int(cuda_count))]
    # torch sees min(len(visible), really present) devices; keep the parent's names for them.
    return visible[: int(cuda_count)] if cuda_count < len(visible) else visible


def resolve_devices(spec: str | int | Sequence[Any] | None, environ: Mapping[str, str], cuda_count: int) -> list[str]:
    """Devices to run workers on, each as the value the worker's ``CUDA_VISIBLE_DEVICES`` gets (``"cpu"``: none).

    ``spec``: ``"auto"``/``None`` (every GPU this process sees, else the CPU), ``"cpu"``, or ordinals as this
    process numbers them (``"0,1"``, ``[0, 1]``, ``2``), mapped through the parent's ``CUDA_VISIBLE_DEVICES``.
    ``cuda_count``: ``torch.cuda.device_count()`` in this process. Raises :class:`InputError` (``--devices``) for
    an unknown or invisible device.
    """
    physical = _physical(environ, cuda_count)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "auto")):
        return physical or [CPU]
    if isinstance(spec, str) and spec.strip().lower() == CPU:
        return [CPU]
    items = list(spec) if isinstance(spec, (list, tuple)) else str(spec).split(",")
    out: list[str] = []
    for item in items:
        text = str(item).strip()
        if not text.isdigit():
            raise InputError(f"expected auto, cpu or GPU ordinals like 0,1; got {spec!r}", where="--devices")
        index = int(text)
        if index >= len(physical):
            raise InputError(f"GPU {index} is not visible here ({len(physical)} visible"
                             + (f", CUDA_VISIBLE_DEVICES={environ.get(ENV)!r}" if ENV in environ else "") + ")",
                             where="--devices")
        if physical[index] not in out:
            out.append(physical[index])
    return out


@dataclass(frozen=True)
class WorkerSlot:
    """One long-lived search worker: the device it trains on and its place among that device's workers.

    ``lane`` 0 is the device's main worker: it also trains full-fidelity (phase-2) trials, which get the device to
    themselves; lanes >= 1 only pack proxy (phase-1) trials beside it.
    """

    device: str
    lane: int

    @property
    def env(self) -> dict[str, str]:
        return {ENV: "" if self.device == CPU else self.device}

    @property
    def label(self) -> str:
        return f"{'cpu' if self.device == CPU else 'gpu' + self.device}.{self.lane}"


def plan_workers(devices: Sequence[str], trials_per_device: int, *, packable: bool) -> list[WorkerSlot]:
    """Workers for ``devices``: ``trials_per_device`` lanes per device when phase-1 trials are proxies
    (``packable``), else one per device (a full-fidelity trial gets a device of its own)."""
    n = max(1, int(trials_per_device)) if packable else 1
    return [WorkerSlot(d, lane) for d in devices for lane in range(n)]


def describe_slots(slots: Sequence[WorkerSlot]) -> str:
    """``"3 worker(s) on gpu0, gpu1"``: how many workers, on which devices (for the commands' first line)."""
    return f"{len(slots)} worker(s) on {', '.join(sorted({s.label.rsplit('.', 1)[0] for s in slots}))}"


def dataloader_workers(cpu_count: int, concurrent_trials: int, on_gpu: bool) -> int:
    """DataLoader workers per trial: on a GPU machine the CPU cores are split among the concurrent trials (the
    augmentations run there while the GPU trains), keeping one core per trial for its training loop, at most 8;
    on the CPU the training itself needs the cores, so data loads in the training process (0)."""
    if not on_gpu:
        return 0
    share = max(1, int(cpu_count)) // max(1, int(concurrent_trials))
    return int(max(0, min(8, share - 1)))


def algo_device_setting(setting: Mapping[str, Any], environ: Mapping[str, str], cuda_count: int) -> dict[str, Any]:
    """A ``BundleAlgo.device_setting`` whose ``CUDA_VISIBLE_DEVICES``/``n_devices`` keep the parent's visible list
    (``BundleAlgo`` builds them from ``range(device_count())``, i.e. ``"0"`` under ``CUDA_VISIBLE_DEVICES=3``)."""
    out = dict(setting)
    physical = _physical(environ, cuda_count)
    out[ENV] = ",".join(physical)
    out["n_devices"] = len(physical)
    return out


def cpu_count() -> int:
    """CPU cores this process may use (affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def pack_choice(throughputs: Mapping[int, float], peak_bytes: Mapping[int, float], total_bytes: float | None,
                *, min_gain: float = 1.10, headroom: float = 0.85) -> int:
    """Trials per device from a probe: the smallest N whose aggregate steps/s is within ``min_gain`` of the best
    measured, among the N whose memory fits (``N x peak <= headroom x total``). ``throughputs[N]`` is the
    aggregate steps/s of N concurrent trainings; ``peak_bytes[N]``: peak memory of one of them."""
    fits = [n for n in sorted(throughputs) if total_bytes is None or
            n * float(peak_bytes.get(n, 0.0)) <= headroom * float(total_bytes)]
    fits = [n for n in fits if math.isfinite(throughputs[n]) and throughputs[n] > 0]
    if not fits:
        return 1
    best = max(throughputs[n] for n in fits)
    for n in fits:
        if throughputs[n] * min_gain >= best:
            return n
    return fits[-1]
