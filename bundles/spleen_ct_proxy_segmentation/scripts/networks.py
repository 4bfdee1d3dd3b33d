"""``network_def`` of this bundle: a MONAI network or its proxy (see :mod:`scripts.scaling`)."""

from __future__ import annotations

from typing import Any, Mapping

from .data import refusing
from .scaling import ProxySpec, scaled_network

__all__ = ["proxy_network"]


@refusing
def proxy_network(name: str, base_kwargs: Mapping[str, Any], width: float = 1.0, blocks: float = 1.0,
                  levels: int | None = None) -> Any:
    """The MONAI network ``name`` built from ``base_kwargs`` and shrunk by ``width`` (channels), ``blocks``
    (residual blocks per level) and ``levels`` (resolution levels kept; ``None`` keeps all).

    ``width=blocks=1, levels=None`` is exactly the network ``base_kwargs`` describe. A bad size stops the run
    with one line (exit code 2).
    """
    return scaled_network(name, base_kwargs, ProxySpec(width=width, blocks=blocks, levels=levels))
