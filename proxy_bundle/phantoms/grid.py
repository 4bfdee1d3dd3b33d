"""Voxel grids of the phantoms: shape, spacing, NIfTI affine and normalised anatomical coordinates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A 3D voxel grid in RAS+ orientation (axis 0 -> subject right, 1 -> anterior, 2 -> superior).

    Anatomy is described in *normalised* coordinates: ``-1..1`` across the field of view on every
    axis, independent of the voxel spacing. A case with finer spacing therefore has more voxels over
    the same anatomy, as in real scans, and resampling to a common spacing recovers consistent organs.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    fov_mm: tuple[float, float, float] | None = None  # the span of -1..1; default: shape * spacing

    @classmethod
    def from_fov(cls, fov_mm: tuple[float, float, float], spacing: tuple[float, float, float], min_slices: int = 8) -> Grid:
        """The grid covering ``fov_mm`` at ``spacing``.

        The slice axis keeps at least ``min_slices``; extra slices extend the field of view (the
        anatomy keeps its physical size) rather than stretch it.
        """
        shape = [max(8, int(round(f / s))) for f, s in zip(fov_mm, spacing)]
        shape[2] = max(shape[2], min_slices)
        return cls(
            shape=(shape[0], shape[1], shape[2]),
            spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
            fov_mm=tuple(float(f) for f in fov_mm),  # type: ignore[arg-type]
        )

    @classmethod
    def for_site(cls, rng: np.random.Generator, inplane_mm: tuple[float, float], slice_mm: tuple[float, float],
                 size: int, fov_per_voxel: tuple[float, float, float]) -> Grid:
        """A case's grid: spacing drawn from its site's in-plane and slice ranges, a field of view that scales
        with ``size`` (the anatomy keeps its physical size whatever the spacing)."""
        inplane = float(rng.uniform(*inplane_mm))
        thick = float(rng.uniform(*slice_mm))
        fov = tuple(size * f for f in fov_per_voxel)
        return cls.from_fov(fov, (inplane, inplane, thick), min_slices=max(8, size // 4))  # type: ignore[arg-type]

    @property
    def affine(self) -> np.ndarray:
        """Voxel -> world (mm) matrix: spacing on the diagonal, origin so the grid centre is at 0."""
        aff = np.eye(4)
        for d in range(3):
            aff[d, d] = self.spacing[d]
            aff[d, 3] = -0.5 * (self.shape[d] - 1) * self.spacing[d]
        return aff

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised voxel-centre coordinates per axis (float32, -1..1 across the nominal field of view)."""
        fov = self.fov_mm or tuple(n * s for n, s in zip(self.shape, self.spacing))
        return tuple(  # type: ignore[return-value]
            (((np.arange(n, dtype=np.float64) + 0.5) * s - 0.5 * n * s) / (0.5 * f)).astype(np.float32)
            for n, s, f in zip(self.shape, self.spacing, fov)
        )

    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0
