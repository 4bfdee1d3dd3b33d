"""Scaled-down proxy versions of MONAI segmentation networks and their measured cost.

The public names are loaded on first use so that the ``scale`` command can reject bad options before torch
and MONAI are imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ProxySpec": "proxy_bundle.networks.scaling",
    "full_kwargs": "proxy_bundle.networks.scaling",
    "num_levels": "proxy_bundle.networks.scaling",
    "scaled_kwargs": "proxy_bundle.networks.scaling",
    "scaled_network": "proxy_bundle.networks.scaling",
    "CostReport": "proxy_bundle.networks.cost",
    "measure_cost": "proxy_bundle.networks.cost",
    "pick_proxy": "proxy_bundle.networks.cost",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
