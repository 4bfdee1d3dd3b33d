"""The result of rendering one phantom case."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from proxy_bundle.phantoms.grid import Grid


@dataclass
class PhantomCase:
    """Image (stored dtype), label (uint8) on ``grid``, and what was sampled (for phantom_meta.json)."""

    image: np.ndarray
    label: np.ndarray
    grid: Grid
    meta: dict[str, Any] = field(default_factory=dict)
