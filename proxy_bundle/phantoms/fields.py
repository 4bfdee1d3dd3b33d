"""Smooth random fields: textures, shape perturbations, deformations and MR bias fields.

A field is a weighted sum of Gaussian bumps on a coarse control lattice. The bumps are separable,
so evaluating on a grid is three small matrix products (the "upsampling" of the coarse random
lattice) instead of a per-voxel loop or a full spline zoom; this keeps generation fast at 96^3+.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _basis(coords: np.ndarray, n_ctrl: int, lo: float, hi: float) -> np.ndarray:
    """(len(coords), n_ctrl) Gaussian bump weights, each row scaled to unit L2 norm."""
    centres = np.linspace(lo, hi, n_ctrl, dtype=np.float64)
    width = (hi - lo) / max(n_ctrl - 1, 1)
    b = np.exp(-0.5 * ((coords.astype(np.float64)[:, None] - centres[None, :]) / width) ** 2)
    return b / np.sqrt((b**2).sum(axis=1, keepdims=True))


def smooth_field(
    rng: np.random.Generator,
    axes: Sequence[np.ndarray],
    n_ctrl: int | Sequence[int] = 4,
    extent: tuple[float, float] | None = None,
) -> np.ndarray:
    """A random smooth field over the 3D grid spanned by ``axes`` (three 1D coordinate arrays), float32.

    Values are ~N(0, 1) at every voxel. ``n_ctrl`` control points per axis spread over ``extent``
    (default: the span of each axis, slightly widened) set the smoothness: 2-3 give a bias-field-like
    ramp, 6-10 an organ texture. On an organ's bounding box the lattice follows the box, so the
    texture scale follows the organ size.
    """
    nc = [n_ctrl] * 3 if isinstance(n_ctrl, int) else list(n_ctrl)
    coeff = rng.standard_normal(tuple(nc)).astype(np.float32)
    bases = []
    for ax, n in zip(axes, nc):
        if extent is None and ax.size:
            lo, hi = float(ax.min()), float(ax.max())
            pad = 0.1 * (hi - lo) + 1e-3
            lo, hi = lo - pad, hi + pad
        else:
            lo, hi = extent or (-1.0, 1.0)
        bases.append(_basis(ax, n, lo, hi).astype(np.float32))
    bx, by, bz = bases
    # Contract the small control axes first; the last step maps every (x, y) row to the slices.
    t = np.tensordot(bx, coeff, axes=([1], [0]))  # (nx, cy, cz)
    t = np.matmul(by, t)  # (nx, ny, cz)
    nx, ny = t.shape[0], t.shape[1]
    return _rows_times(t.reshape(nx * ny, -1), bz.T).reshape(nx, ny, bz.shape[0])


def _rows_times(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in row blocks small enough for BLAS to stay single-threaded.

    Generation runs next to training jobs and in worker processes; multi-threaded BLAS on such
    thin products mostly fights for the cores (measured 2-4x slower than one thread under load).
    """
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.float32)
    rows = max(1, 200_000 // max(1, b.shape[0] * b.shape[1]))
    for i in range(0, a.shape[0], rows):
        np.matmul(a[i : i + rows], b, out=out[i : i + rows])
    return out


def displacement(
    rng: np.random.Generator, axes: Sequence[np.ndarray], amplitude: float, n_ctrl: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """In-plane (x, y) displacement fields (normalised units) of a smooth random elastic deformation."""
    return (
        amplitude * smooth_field(rng, axes, n_ctrl, extent=(-1.2, 1.2)),
        amplitude * smooth_field(rng, axes, n_ctrl, extent=(-1.2, 1.2)),
    )
