"""Acquisition sites of the phantom datasets and how cases are spread over them.

Each task has three training sites that differ in noise, contrast, intensity scale and resolution,
plus one external site that no training case comes from (shifted spacing, contrast and noise), as in
the paper's MSD -> external evaluation. A few training cases are atypical (tiny organ, low contrast,
strong artefact) so that which cases a proxy subset contains matters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Site:
    """One scanner/protocol. Ranges are (low, high), sampled uniformly per case."""

    name: str
    description: str
    weight: float  # share of the training pool (ignored for the external site)
    inplane_mm: tuple[float, float]
    slice_mm: tuple[float, float]
    noise: float  # CT: HU standard deviation; MR: noise sigma relative to fat signal
    blur_mm: float  # in-plane point-spread (reconstruction kernel / k-space filtering), Gaussian sigma
    params: dict[str, Any] = field(default_factory=dict)  # task-specific protocol settings

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


SPLEEN_SITES: tuple[Site, ...] = (
    Site("ct_site_a", "portal-venous phase, standard dose, 5 mm slices", 0.45, (0.70, 0.80), (4.0, 5.0), 12.0, 0.55,
         {"phase": "portal", "contrast": (0.9, 1.1), "hu_offset": 0.0}),
    Site("ct_site_b", "late-arterial phase, thin slices, soft kernel", 0.33, (0.60, 0.70), (1.5, 2.0), 22.0, 0.45,
         {"phase": "arterial", "contrast": (0.85, 1.15), "hu_offset": 0.0}),
    Site("ct_site_c", "low-dose portal-venous, older scanner, smooth kernel", 0.22, (0.80, 0.90), (2.5, 3.0), 32.0, 0.8,
         {"phase": "portal", "contrast": (0.6, 0.8), "hu_offset": 5.0}),
)
SPLEEN_EXTERNAL = Site("ct_site_ext", "delayed phase, sharp kernel, coarser pixels, calibration drift", 0.0,
                       (0.90, 1.00), (3.0, 3.5), 20.0, 0.3,
                       {"phase": "delayed", "contrast": (0.9, 1.1), "hu_offset": -15.0})

PROSTATE_SITES: tuple[Site, ...] = (
    Site("mr_site_a", "3 T with endorectal coil, high SNR, 3.6 mm slices", 0.45, (0.60, 0.65), (3.6, 3.6), 0.025, 0.35,
         {"endorectal": True, "bias": 0.25, "scale": (400.0, 900.0), "pz_tz": 1.0, "dtype": "int16"}),
    Site("mr_site_b", "1.5 T pelvic phased array, low SNR, 4 mm slices", 0.33, (0.65, 0.70), (4.0, 4.0), 0.06, 0.45,
         {"endorectal": False, "bias": 0.35, "scale": (80.0, 200.0), "pz_tz": 0.8, "dtype": "int16"}),
    Site("mr_site_c", "3 T surface coil, long TE, 3 mm slices, vendor float export", 0.22, (0.55, 0.60), (3.0, 3.0),
         0.04, 0.3, {"endorectal": False, "bias": 0.2, "scale": (1.0, 3.0), "pz_tz": 1.25, "dtype": "float32"}),
)
PROSTATE_EXTERNAL = Site("mr_site_ext", "other vendor, compressed T2 contrast, coarse in-plane, strong bias", 0.0,
                         (0.70, 0.80), (3.0, 3.5), 0.05, 0.5,
                         {"endorectal": False, "bias": 0.5, "scale": (5000.0, 12000.0), "pz_tz": 0.65, "dtype": "float32"})

SPLEEN_ATYPICAL = ("tiny_spleen", "non_contrast", "metal_artefact", "splenomegaly", "motion")
PROSTATE_ATYPICAL = ("small_gland", "low_contrast", "motion", "large_bph", "strong_bias")


def assign_sites(sites: tuple[Site, ...], n: int, rng: np.random.Generator) -> list[Site]:
    """Spread ``n`` cases over ``sites`` by weight (each site gets one when ``n`` allows), shuffled."""
    w = np.array([s.weight for s in sites], dtype=float)
    counts = np.floor(w / w.sum() * n).astype(int)
    counts[counts == 0] = 1 if n >= len(sites) else 0
    while counts.sum() > n:  # the minimum-one rule can overshoot for small n
        counts[np.argmax(counts)] -= 1
    order = np.argsort(-(w / w.sum() * n - np.floor(w / w.sum() * n)))
    i = 0
    while counts.sum() < n:
        counts[order[i % len(sites)]] += 1
        i += 1
    out = [s for s, c in zip(sites, counts) for _ in range(c)]
    return [out[i] for i in rng.permutation(n)]


def assign_atypical(kinds: tuple[str, ...], n: int, rng: np.random.Generator) -> list[str | None]:
    """About one case in six (at least one) gets an atypical kind, kinds cycled in a shuffled order."""
    k = max(1, int(round(n / 6)))
    picked = rng.choice(n, size=k, replace=False)
    kind_order = rng.permutation(len(kinds))
    out: list[str | None] = [None] * n
    for j, idx in enumerate(sorted(picked.tolist())):
        out[idx] = kinds[int(kind_order[j % len(kinds)])]
    return out
