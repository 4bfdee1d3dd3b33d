"""Measured training cost of a (proxy) network at a given ROI.

One training step at batch size 1 is traced: forward, a scalar loss, backward. Nothing is estimated by hand:

* parameters: ``sum(p.numel())`` of the built MONAI module;
* FLOPs: counted by :class:`torch.utils.flop_counter.FlopCounterMode` separately for the forward and the backward
  pass (convolutions, transposed convolutions and matrix products, 2 FLOPs per multiply-add; normalisation,
  activations and interpolation are not counted by PyTorch's counter and are cheap next to the convolutions);
* activation memory: bytes of the distinct tensor storages autograd saves for the backward pass
  (:func:`torch.autograd.graph.saved_tensors_hooks`), parameters excluded. This is what a training step keeps
  alive at the end of the forward pass, i.e. the part of GPU memory that scales with the ROI; weights, gradients,
  optimiser state and cuDNN workspaces come on top.

By default the step runs on PyTorch's ``meta`` device, where only shapes are computed: a full SegResNet at
96^3 is measured in well under a second on a CPU, and the counts are identical to a real run (see the tests).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from proxy_bundle.errors import InputError
from proxy_bundle.networks.scaling import NETWORKS, ProxySpec, full_kwargs, scaled_kwargs, supports_blocks

__all__ = [
    "CostReport",
    "StepCost",
    "default_candidates",
    "evaluate_candidates",
    "measure_cost",
    "measure_module",
    "parse_roi",
    "pick_proxy",
]

# Widths, block multipliers and level reductions tried by pick_proxy when no candidates are given.
DEFAULT_WIDTHS: tuple[float, ...] = (1.0, 0.75, 0.5, 0.375, 0.25, 0.125)
DEFAULT_BLOCKS: tuple[float, ...] = (1.0, 0.5)


@dataclass(frozen=True)
class CostReport:
    """Cost of one training step (batch 1) of a network at ``roi``."""

    network: str
    spec: ProxySpec
    roi: tuple[int, ...]
    params: int
    flops_forward: int
    flops_backward: int
    activation_bytes: int
    kwargs: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def flops(self) -> int:
        """Forward + backward FLOPs."""
        return self.flops_forward + self.flops_backward

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def activation_mb(self) -> float:
        return self.activation_bytes / 2**20

    def relative_to(self, full: "CostReport") -> dict[str, float]:
        """Ratios of this report's params, FLOPs and activation memory to ``full``'s."""
        return {
            "params": self.params / full.params,
            "flops": self.flops / full.flops,
            "activation": self.activation_bytes / full.activation_bytes,
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["spec"] = asdict(self.spec)
        out["roi"] = list(self.roi)
        out["flops"] = self.flops
        out.pop("kwargs")
        return out


def parse_roi(roi: str | int | Sequence[int], spatial_dims: int = 3) -> tuple[int, ...]:
    """``"96,96,96"``, ``96``, ``(96, 96, 96)`` or ``[96, 96, 96]`` -> ``(96, 96, 96)``."""
    try:
        if isinstance(roi, str):
            parts = [p for p in roi.replace("x", ",").replace(" ", ",").split(",") if p]
            values = tuple(int(p) for p in parts)
        elif isinstance(roi, (int, float)):
            values = (int(roi),) * spatial_dims
        else:
            values = tuple(int(v) for v in roi)
    except (TypeError, ValueError):
        raise InputError(f"expected integers like 96,96,96, got {roi!r}", where="roi") from None
    if len(values) == 1:
        values = values * spatial_dims
    if len(values) != spatial_dims or any(v < 1 for v in values):
        raise InputError(f"expected {spatial_dims} positive sizes, got {roi!r}", where="roi")
    return values


def _storage_key(t: torch.Tensor) -> int:
    # The StorageImpl address identifies a storage across views and in-place ops, on real and meta tensors alike;
    # every saved storage stays alive until backward, so addresses are not reused while we collect them.
    return t.untyped_storage()._cdata


def _sum_outputs(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().sum()
    if isinstance(out, (list, tuple)):
        return sum((_sum_outputs(o) for o in out), torch.zeros((), device=_first_device(out)))
    if isinstance(out, dict):
        return _sum_outputs(list(out.values()))
    raise InputError(f"network returned {type(out).__name__}, expected tensors", where="network output")


def _first_device(out: Any) -> torch.device:
    for o in out:
        if isinstance(o, torch.Tensor):
            return o.device
    return torch.device("cpu")


@dataclass(frozen=True)
class StepCost:
    """Measured cost of one training step of a module: what :func:`measure_module` returns."""

    params: int
    flops_forward: int
    flops_backward: int
    activation_bytes: int


def measure_module(net: torch.nn.Module, input_shape: Sequence[int]) -> StepCost:
    """Trace one training step of ``net`` on a zero input of ``input_shape`` (batch included).

    The input lives on the device of the module's first parameter (``meta`` for a module built under
    ``torch.device("meta")``) and does not require grad, as in training, so the first layer computes no input
    gradient. RuntimeErrors from the network (typically an ROI that does not divide by its downsampling factor)
    propagate to the caller.
    """
    first = next(iter(net.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    x = torch.zeros(tuple(int(s) for s in input_shape), device=device)
    net.train()
    param_keys = {_storage_key(p) for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in param_keys:
            saved[key] = max(saved.get(key, 0), t.untyped_storage().nbytes())
        return t

    forward, backward = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with forward:
            loss = _sum_outputs(net(x))
    with backward:
        loss.backward()
    return StepCost(
        params=int(sum(p.numel() for p in net.parameters())),
        flops_forward=int(forward.get_total_flops()),
        flops_backward=int(backward.get_total_flops()),
        activation_bytes=int(sum(saved.values())),
    )


def measure_cost(
    name: str,
    base_kwargs: Mapping[str, Any] | None,
    roi: str | int | Sequence[int],
    spec: ProxySpec | None = None,
    device: str | torch.device = "meta",
) -> CostReport:
    """Measure parameters, forward/backward FLOPs and saved-activation bytes of one float32 training step."""
    spec = spec or ProxySpec()
    kwargs = scaled_kwargs(name, base_kwargs, spec)
    roi_t = parse_roi(roi, int(kwargs["spatial_dims"]))
    cls = NETWORKS[name.lower()].cls
    try:
        try:
            with torch.device(device):
                net = cls(**kwargs)
        except RuntimeError:
            if torch.device(device).type != "meta":
                raise
            # SwinUNETR's constructor reads tensor values (.item()), which meta tensors do not have: build it on
            # the CPU once and move the parameters to the meta device.
            net = cls(**kwargs).to(device)
    except (TypeError, ValueError, AssertionError) as err:
        raise InputError(f"cannot build {name} with {kwargs}: {err}", where=f"{name} kwargs") from None
    try:
        step = measure_module(net, (1, int(kwargs["in_channels"]), *roi_t))
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"{name} ({spec.label()}) cannot run on ROI {roi_t}: {first} "
            "(each ROI side must be divisible by the network's total downsampling factor and leave more than one "
            "voxel at the coarsest level)",
            where="roi",
        ) from None
    return CostReport(
        network=name.lower(),
        spec=spec,
        roi=roi_t,
        params=step.params,
        flops_forward=step.flops_forward,
        flops_backward=step.flops_backward,
        activation_bytes=step.activation_bytes,
        kwargs=kwargs,
    )


def default_candidates(
    name: str,
    base_kwargs: Mapping[str, Any] | None = None,
    widths: Iterable[float] = DEFAULT_WIDTHS,
    blocks: Iterable[float] = DEFAULT_BLOCKS,
    levels: Iterable[int | None] | None = None,
) -> list[ProxySpec]:
    """Grid of proxy specs: ``widths`` x ``blocks`` x ``levels``.

    ``levels=None`` tries the full depth and one level less (where the network allows it). Networks without a
    per-level block count only get ``blocks=1``.
    """
    if str(name).lower() not in NETWORKS:
        raise InputError(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}", where="network")
    family = NETWORKS[name.lower()]
    full = family.levels(full_kwargs(name, base_kwargs))
    if levels is None:
        levels = [None] + ([full - 1] if full - 1 >= family.min_levels else [])
    block_values = list(blocks) if supports_blocks(name) else [1.0]
    return [
        ProxySpec(width=float(w), blocks=float(b), levels=None if lv is None or lv == full else int(lv))
        for lv, b, w in itertools.product(list(levels), block_values, list(widths))
    ]


def pick_proxy(
    name: str,
    base_kwargs: Mapping[str, Any] | None,
    roi: str | int | Sequence[int],
    budget: float = 1 / 8,
    candidates: Iterable[ProxySpec] | None = None,
    metric: str = "flops",
    device: str | torch.device = "meta",
) -> tuple[ProxySpec, CostReport]:
    """The largest proxy whose ``metric`` ("flops" or "params") is at most ``budget`` x the full network's.

    "Largest" means the highest FLOPs (ties broken by parameters, then activation memory). Candidates default to
    :func:`default_candidates`. Candidates that produce the same network as one already measured are measured
    once.
    """
    if metric not in ("flops", "params"):
        raise InputError(f"must be 'flops' or 'params', got {metric!r}", where="metric")
    if not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise InputError(f"must be a positive fraction of the full network's cost, got {budget!r}", where="budget")
    full = measure_cost(name, base_kwargs, roi, ProxySpec(), device=device)
    specs = list(candidates) if candidates is not None else default_candidates(name, base_kwargs)
    reports = evaluate_candidates(name, base_kwargs, roi, specs, device=device, full=full)
    limit = budget * getattr(full, metric)
    fitting = [r for r in reports if getattr(r, metric) <= limit]
    if not fitting:
        smallest = min(reports, key=lambda r: getattr(r, metric), default=full)
        ratio = getattr(smallest, metric) / getattr(full, metric)
        raise InputError(
            f"no candidate proxy of {name} is within {budget:g} of the full network's {metric}; "
            f"the smallest ({smallest.spec.label()}) needs {ratio:.3g}",
            where="budget",
        )
    best = max(fitting, key=lambda r: (r.flops, r.params, r.activation_bytes))
    return best.spec, best


def evaluate_candidates(
    name: str,
    base_kwargs: Mapping[str, Any] | None,
    roi: str | int | Sequence[int],
    specs: Iterable[ProxySpec],
    device: str | torch.device = "meta",
    full: CostReport | None = None,
) -> list[CostReport]:
    """Cost reports of ``specs`` in order; a spec yielding the same kwargs as an earlier one reuses its numbers."""
    seen: dict[str, CostReport] = {}
    if full is not None:
        seen[repr(sorted(full.kwargs.items()))] = full
    out = []
    for spec in specs:
        key = repr(sorted(scaled_kwargs(name, base_kwargs, spec).items()))
        if key not in seen:
            seen[key] = measure_cost(name, base_kwargs, roi, spec, device=device)
        report = seen[key]
        out.append(report if report.spec == spec else _with_spec(report, spec))
    return out


def _with_spec(report: CostReport, spec: ProxySpec) -> CostReport:
    return CostReport(
        network=report.network,
        spec=spec,
        roi=report.roi,
        params=report.params,
        flops_forward=report.flops_forward,
        flops_backward=report.flops_backward,
        activation_bytes=report.activation_bytes,
        kwargs=report.kwargs,
    )
