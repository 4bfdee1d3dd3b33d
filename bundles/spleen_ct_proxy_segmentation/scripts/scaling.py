"""Scaled-down ("proxy") versions of MONAI segmentation networks.

A proxy network keeps the architecture family of the full network and shrinks it along three axes:

* ``width``  multiplies every channel count (``init_filters`` / ``channels`` / ``filters``);
* ``blocks`` multiplies the number of residual blocks per resolution level (each level keeps at least one);
* ``levels`` keeps only the first ``levels`` resolution levels of the encoder and the matching decoder levels.

:func:`scaled_kwargs` is a pure function from the full network's constructor kwargs to the proxy's, and
:func:`scaled_network` builds the MONAI module from them. Everything not named above (activation, norm type,
kernel sizes, upsampling mode, ...) is passed through unchanged so that a proxy and its full network differ only
in size.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch.nn as nn
from monai.networks.layers.factories import split_args
from monai.networks.nets import DynUNet, SegResNet, SegResNetDS, SwinUNETR, UNet

try:
    from proxy_bundle.errors import InputError
except ImportError:  # pragma: no cover - the copy in a MONAI bundle's scripts/ (bundles/*/scripts)
    from .errors import InputError  # type: ignore[no-redef]

__all__ = [
    "MIN_CHANNELS",
    "NETWORKS",
    "ProxySpec",
    "full_kwargs",
    "num_levels",
    "scaled_kwargs",
    "scaled_network",
    "supports_blocks",
]

# Below a handful of channels a 3D conv layer stops being a meaningful stand-in for the full one.
MIN_CHANNELS = 4


@dataclass(frozen=True)
class ProxySpec:
    """How much to shrink a network: ``width`` x channels, ``blocks`` x residual blocks, ``levels`` kept.

    ``width`` may exceed 1 (a wider network), ``blocks`` likewise; ``levels=None`` keeps the full network's
    number of resolution levels.
    """

    width: float = 1.0
    blocks: float = 1.0
    levels: int | None = None

    def __post_init__(self) -> None:
        # Normalise numpy scalars and YAML ints so that equal specs compare and hash equal.
        for field in ("width", "blocks"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
                raise InputError(f"must be a positive number, got {value!r}", where=f"ProxySpec.{field}")
            object.__setattr__(self, field, float(value))
        if self.levels is not None:
            if isinstance(self.levels, bool) or not isinstance(self.levels, numbers.Integral) or self.levels < 1:
                raise InputError(f"must be an integer >= 1 or None, got {self.levels!r}", where="ProxySpec.levels")
            object.__setattr__(self, "levels", int(self.levels))

    @property
    def is_full(self) -> bool:
        return self.width == 1 and self.blocks == 1 and self.levels is None

    def label(self) -> str:
        """Short human-readable form, e.g. ``w0.5 b1 L4``."""
        levels = "full" if self.levels is None else str(self.levels)
        return f"w{self.width:g} b{self.blocks:g} L{levels}"


@dataclass(frozen=True)
class _Family:
    cls: type[nn.Module]
    # Values for arguments MONAI makes mandatory (documented in docs/networks.md); everything else follows the
    # MONAI constructor's own defaults.
    required_defaults: Mapping[str, Any]
    levels: Callable[[dict], int]
    scale: Callable[[dict, ProxySpec], dict]
    min_levels: int
    has_blocks: bool


def _half_up(x: float) -> int:
    # Python's round() is banker's rounding, which would map 2.5 -> 2 but 3.5 -> 4.
    return int(math.floor(x + 0.5))


def _channels(c: int, width: float) -> int:
    return max(min(c, MIN_CHANNELS), _half_up(c * width))


def _blocks(n: int, factor: float) -> int:
    return max(1, _half_up(n * factor))


def _fit_group_norm(norm: Any, channels: Sequence[int]) -> Any:
    """Make a GroupNorm spec valid for the scaled channel counts.

    GroupNorm needs every normalised channel count to be divisible by ``num_groups``. Keeping the user's group
    count where it still divides everything and otherwise dropping to the greatest common divisor changes the
    normalisation as little as possible (with power-of-two widths the group *size* stays unchanged).
    """
    try:
        name, args = split_args(norm)
    except (TypeError, ValueError):
        return norm
    if not (isinstance(name, str) and name.lower() == "group") or "num_groups" not in args:
        return norm
    groups = int(args["num_groups"])
    fitted = math.gcd(groups, *[int(c) for c in channels])
    if fitted == groups:
        return norm
    return (name, {**args, "num_groups": fitted})


def _check_levels(name: str, spec: ProxySpec, full: int, minimum: int) -> int:
    levels = full if spec.levels is None else spec.levels
    if levels > full:
        raise InputError(f"{name} has {full} resolution levels; a proxy cannot have {levels}", where="ProxySpec.levels")
    if levels < minimum:
        raise InputError(f"{name} needs at least {minimum} resolution levels, got {levels}", where="ProxySpec.levels")
    return levels


# --- SegResNet ---------------------------------------------------------------------------------------------------


def _segresnet_levels(kw: dict) -> int:
    return len(kw["blocks_down"])


def _segresnet_scale(kw: dict, spec: ProxySpec) -> dict:
    full = _segresnet_levels(kw)
    levels = _check_levels("segresnet", spec, full, 1)
    init = _channels(int(kw["init_filters"]), spec.width)
    blocks_down = tuple(_blocks(b, spec.blocks) for b in kw["blocks_down"][:levels])
    # blocks_up is ordered deepest decoder level first; dropping encoder levels removes the deepest ones.
    n_up = levels - 1
    blocks_up = tuple(_blocks(b, spec.blocks) for b in kw["blocks_up"][len(kw["blocks_up"]) - n_up :]) if n_up else ()
    out = {**kw, "init_filters": init, "blocks_down": blocks_down, "blocks_up": blocks_up}
    channels = [init * 2**i for i in range(levels)]
    if kw.get("norm_name"):
        # Legacy SegResNet spelling: norm_name="group" + num_groups overrides `norm`.
        out["num_groups"] = _fit_group_norm(("group", {"num_groups": kw["num_groups"]}), channels)[1]["num_groups"]
    else:
        out["norm"] = _fit_group_norm(kw["norm"], channels)
    return out


# --- SegResNetDS -------------------------------------------------------------------------------------------------


def _segresnetds_scale(kw: dict, spec: ProxySpec) -> dict:
    full = _segresnet_levels(kw)
    levels = _check_levels("segresnetds", spec, full, 1)
    init = _channels(int(kw["init_filters"]), spec.width)
    blocks_down = tuple(_blocks(b, spec.blocks) for b in kw["blocks_down"][:levels])
    full_up = kw["blocks_up"] if kw["blocks_up"] is not None else (1,) * (full - 1)
    n_up = levels - 1
    blocks_up = tuple(_blocks(b, spec.blocks) for b in full_up[len(full_up) - n_up :]) if n_up else ()
    channels = [init * 2**i for i in range(levels)]
    return {
        **kw,
        "init_filters": init,
        "blocks_down": blocks_down,
        "blocks_up": blocks_up,
        "dsdepth": max(1, min(int(kw["dsdepth"]), n_up)),
        "norm": _fit_group_norm(kw["norm"], channels),
    }


# --- UNet --------------------------------------------------------------------------------------------------------


def _unet_levels(kw: dict) -> int:
    return len(kw["channels"])


def _unet_scale(kw: dict, spec: ProxySpec) -> dict:
    levels = _check_levels("unet", spec, _unet_levels(kw), 2)
    channels = tuple(_channels(int(c), spec.width) for c in kw["channels"][:levels])
    units = int(kw["num_res_units"])
    # num_res_units=0 means plain convolutions (no residual units) and stays so.
    return {
        **kw,
        "channels": channels,
        "strides": tuple(kw["strides"][: levels - 1]),
        "num_res_units": _blocks(units, spec.blocks) if units > 0 else 0,
        "norm": _fit_group_norm(kw["norm"], channels),
    }


# --- DynUNet -----------------------------------------------------------------------------------------------------


def _dynunet_levels(kw: dict) -> int:
    return len(kw["strides"])


def _dynunet_scale(kw: dict, spec: ProxySpec) -> dict:
    if spec.blocks != 1:
        raise InputError("dynunet has one convolution block per level; use blocks=1", where="ProxySpec.blocks")
    levels = _check_levels("dynunet", spec, _dynunet_levels(kw), 3)
    filters = tuple(_channels(int(c), spec.width) for c in kw["filters"][:levels])
    return {
        **kw,
        "filters": filters,
        "kernel_size": tuple(kw["kernel_size"][:levels]),
        "strides": tuple(kw["strides"][:levels]),
        "upsample_kernel_size": tuple(kw["upsample_kernel_size"][: levels - 1]),
        "deep_supr_num": max(1, min(int(kw["deep_supr_num"]), levels - 2)),
        "norm_name": _fit_group_norm(kw["norm_name"], filters),
    }


# --- SwinUNETR -----------------------------------------------------------------------------------------------------

# MONAI's SwinUNETR needs feature_size divisible by 12 (its attention heads split the embedding that way).
SWIN_FEATURE_MULTIPLE = 12


def _swinunetr_levels(kw: dict) -> int:
    return len(kw["depths"])


def _swinunetr_scale(kw: dict, spec: ProxySpec) -> dict:
    full = _swinunetr_levels(kw)
    if spec.levels is not None and spec.levels != full:
        raise InputError(f"swinunetr has a fixed {full}-stage encoder; a proxy keeps all levels (no --levels)",
                         where="ProxySpec.levels")
    step = SWIN_FEATURE_MULTIPLE
    feature = max(step, _half_up(int(kw["feature_size"]) * spec.width / step) * step)
    return {**kw, "feature_size": feature, "depths": tuple(_blocks(int(d), spec.blocks) for d in kw["depths"])}


NETWORKS: dict[str, _Family] = {
    "segresnet": _Family(SegResNet, {}, _segresnet_levels, _segresnet_scale, 1, True),
    "segresnetds": _Family(SegResNetDS, {}, _segresnet_levels, _segresnetds_scale, 1, True),
    "unet": _Family(
        UNet,
        # MONAI requires these; the values are the 3D spleen tutorial's UNet.
        {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": (16, 32, 64, 128, 256),
         "strides": (2, 2, 2, 2)},
        _unet_levels,
        _unet_scale,
        2,
        True,
    ),
    "dynunet": _Family(
        DynUNet,
        # MONAI requires these; five isotropic levels as nnU-Net plans for a 3D isotropic patch.
        {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "kernel_size": (3, 3, 3, 3, 3),
         "strides": (1, 2, 2, 2, 2), "upsample_kernel_size": (2, 2, 2, 2)},
        _dynunet_levels,
        _dynunet_scale,
        3,
        False,
    ),
    # Required channels only; the rest are MONAI's defaults (Auto3DSeg's swinunetr template sets feature_size 48).
    "swinunetr": _Family(SwinUNETR, {"in_channels": 1, "out_channels": 2}, _swinunetr_levels, _swinunetr_scale, 4,
                         True),
}


def _family(name: str) -> _Family:
    key = str(name).lower()
    if key not in NETWORKS:
        raise InputError(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}", where="network")
    return NETWORKS[key]


def _as_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def full_kwargs(name: str, base_kwargs: Mapping[str, Any] | None = None) -> dict:
    """Complete constructor kwargs of the full network: MONAI's defaults, overridden by ``base_kwargs``.

    Arguments MONAI makes mandatory get the values in :data:`NETWORKS` (see docs/networks.md). DynUNet's
    ``filters=None`` is expanded to MONAI's computed default so that ``width`` can scale it.
    """
    family = _family(name)
    params = inspect.signature(family.cls.__init__).parameters
    base = dict(base_kwargs or {})
    unknown = sorted(set(base) - set(params) - {"self"})
    if unknown:
        raise InputError(f"{family.cls.__name__} has no argument(s) {', '.join(unknown)}", where=f"{name} kwargs")
    kw = {k: p.default for k, p in params.items() if k != "self" and p.default is not inspect.Parameter.empty}
    kw.update(family.required_defaults)
    kw.update({k: _as_tuples(v) for k, v in base.items()})
    if family.cls is DynUNet and kw.get("filters") is None:
        kw["filters"] = tuple(min(2 ** (5 + i), 320 if kw["spatial_dims"] == 3 else 512) for i in range(len(kw["strides"])))
    return kw


def num_levels(name: str, base_kwargs: Mapping[str, Any] | None = None) -> int:
    """Number of resolution levels of the full network described by ``base_kwargs``."""
    return _family(name).levels(full_kwargs(name, base_kwargs))


def supports_blocks(name: str) -> bool:
    """Whether the network has a per-level block count that ``ProxySpec.blocks`` can scale."""
    return _family(name).has_blocks


def scaled_kwargs(name: str, base_kwargs: Mapping[str, Any] | None, spec: ProxySpec) -> dict:
    """Constructor kwargs of the proxy of network ``name`` (pure: ``base_kwargs`` is not modified).

    ``base_kwargs`` are the MONAI constructor kwargs of the full network (missing ones take MONAI's defaults).
    The result is complete: it lists every constructor argument.
    """
    if not isinstance(spec, ProxySpec):
        raise InputError(f"expected a ProxySpec, got {type(spec).__name__}", where="spec")
    family = _family(name)
    return family.scale(full_kwargs(name, base_kwargs), spec)


def scaled_network(name: str, base_kwargs: Mapping[str, Any] | None, spec: ProxySpec | None = None) -> nn.Module:
    """Build the proxy network (``spec=None`` or ``ProxySpec()`` builds the full network)."""
    kwargs = scaled_kwargs(name, base_kwargs, spec or ProxySpec())
    try:
        return _family(name).cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise InputError(f"cannot build {name} with {kwargs}: {err}", where=f"{name} kwargs") from None
