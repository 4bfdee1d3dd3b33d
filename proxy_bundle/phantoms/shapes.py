"""Implicit organ shapes evaluated inside bounding boxes of a deformed coordinate frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from proxy_bundle.phantoms.fields import displacement, smooth_field
from proxy_bundle.phantoms.grid import Grid


@dataclass(frozen=True)
class Ellipsoid:
    """An (optionally rotated in the axial plane and bent) ellipsoid in normalised coordinates.

    ``angle`` (radians) turns the first semi-axis away from the subject's right; ``bend`` curves the
    first axis toward the second (a crescent, as the spleen wraps the body wall); ``tilt`` shifts the
    axial centre linearly with height (organs are not aligned with the scanner axis).
    """

    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    angle: float = 0.0
    bend: float = 0.0
    tilt: tuple[float, float] = (0.0, 0.0)

    def half_extent(self) -> tuple[float, float, float]:
        r = max(self.axes[0], self.axes[1]) * (1.0 + abs(self.bend)) + abs(self.bend) * self.axes[0]
        return (r + abs(self.tilt[0]) * self.axes[2], r + abs(self.tilt[1]) * self.axes[2], self.axes[2])

    def level(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """sqrt of the quadratic form: < 1 inside, 1 on the surface (about a normalised distance)."""
        cx, cy, cz = self.centre
        a, b, c = self.axes
        dz = z - cz
        dx = x - (cx + self.tilt[0] * dz)
        dy = y - (cy + self.tilt[1] * dz)
        cs, sn = np.float32(np.cos(self.angle)), np.float32(np.sin(self.angle))
        u = cs * dx + sn * dy
        v = cs * dy - sn * dx
        if self.bend:
            v = v - np.float32(self.bend / a) * u * u
        return np.sqrt((u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2 + (dz / np.float32(c)) ** 2)


class Canvas:
    """A case's image under construction plus its (deformed) normalised coordinates.

    The in-plane coordinates carry one smooth random elastic deformation shared by all structures
    (patient-to-patient anatomy), so neighbours stay neighbours while the whole scene warps.
    """

    def __init__(self, grid: Grid, rng: np.random.Generator, background: float, warp: float = 0.06):
        self.grid = grid
        self.rng = rng
        self.ax = grid.axes()
        ax, ay, az = self.ax
        dx, dy = displacement(rng, self.ax, warp, n_ctrl=4)
        self.x = ax[:, None, None] + dx
        self.y = ay[None, :, None] + dy
        self.image = np.full(grid.shape, background, dtype=np.float32)
        self.margin = 2.5 * warp + 0.05

    def box(self, centre: tuple[float, float, float], half: tuple[float, float, float]) -> tuple[slice, slice, slice]:
        """Index slices covering ``centre +- half`` (plus the deformation margin); may be empty."""
        out = []
        for d in range(3):
            ax = self.ax[d]
            m = self.margin if d < 2 else 0.02
            lo = np.searchsorted(ax, centre[d] - half[d] - m, side="left")
            hi = np.searchsorted(ax, centre[d] + half[d] + m, side="right")
            out.append(slice(int(lo), int(max(lo, hi))))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deformed x, y and the slice coordinate z (broadcastable) inside a box."""
        return self.x[sl], self.y[sl], self.ax[2][None, None, sl[2]]

    def level(self, shape: Ellipsoid, rough: float = 0.0, n_ctrl: int = 5) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """A shape's level set inside its box; ``rough`` adds a smooth random surface perturbation."""
        # The perturbation can push the surface outward by a few ``rough`` (a unit-variance field).
        sl = self.box(shape.centre, tuple(h * (1.0 + 3.0 * rough) for h in shape.half_extent()))  # type: ignore[arg-type]
        x, y, z = self.coords(sl)
        lev = shape.level(x, y, z)
        if rough and lev.size:
            sub = [a[s] for a, s in zip(self.ax, sl)]
            lev = lev + np.float32(rough) * smooth_field(self.rng, sub, n_ctrl)
        return sl, lev

    def paint(self, sl: tuple[slice, slice, slice], mask: np.ndarray, value: float | np.ndarray) -> None:
        """Set the voxels of ``mask`` (inside box ``sl``) to ``value`` (scalar or array over the box)."""
        if not mask.any():
            return
        region = self.image[sl]
        region[mask] = value[mask] if isinstance(value, np.ndarray) else np.float32(value)

    def texture(self, sl: tuple[slice, slice, slice], mean: float, amp: float, n_ctrl: int = 8) -> np.ndarray:
        """``mean`` plus a smooth random texture of amplitude ``amp`` over a box."""
        sub = [a[s] for a, s in zip(self.ax, sl)]
        return np.float32(mean) + np.float32(amp) * smooth_field(self.rng, sub, n_ctrl)
