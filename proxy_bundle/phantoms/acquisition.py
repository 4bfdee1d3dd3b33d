"""Scanner effects applied to a rendered scene: point-spread blur, (correlated) noise, MR Rician noise, ghosts."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def _kernel_energy(sigma: float) -> float:
    """Sum of squared weights of scipy's discrete Gaussian kernel (how much it attenuates white noise)."""
    if sigma <= 0:
        return 1.0
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    return float((w**2).sum())


def blur_with_noise(
    image: np.ndarray, sigma_vox: Sequence[float], noise_std: float, rng: np.random.Generator
) -> np.ndarray:
    """Blur ``image`` by the point-spread ``sigma_vox`` after adding white noise.

    Filtering the noise with the same kernel gives it the grainy, spatially correlated texture of
    reconstructed CT/MR noise; its amplitude is pre-scaled so the final noise std is ``noise_std``.
    One filter pass does both (this is the costliest step of a case).
    """
    gain = float(np.sqrt(np.prod([_kernel_energy(s) for s in sigma_vox])))
    noisy = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_std / gain)
    return ndimage.gaussian_filter(noisy, sigma=list(sigma_vox), mode="nearest")


def rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise in both channels (MR magnitude images)."""
    s = np.float32(sigma)
    re = image + s * rng.standard_normal(image.shape, dtype=np.float32)
    im = s * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im)


def ghost(image: np.ndarray, axis: int, fraction: float, weight: float) -> np.ndarray:
    """Motion ghosting: a faint copy of the image shifted along the phase-encoding ``axis``."""
    shift = max(1, int(round(fraction * image.shape[axis])))
    return (1.0 - weight) * image + weight * np.roll(image, shift, axis=axis)
