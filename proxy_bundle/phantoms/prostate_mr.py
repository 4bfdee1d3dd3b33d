"""Pelvic T2-weighted MR phantom with prostate zones (stands in for MSD Task05 Prostate).

Labels as in Task05: 1 peripheral zone (posterior/lateral shell, bright on T2), 2 transition zone
(central gland incl. the anterior fibromuscular stroma, darker and nodular). Around the gland:
periprostatic fat (as bright as the peripheral zone, separated only by a thin dark capsule),
rectum, bladder, seminal vesicles (bright, unlabelled), pubic bones, obturator muscles. MR has no
absolute intensity unit: each case gets an arbitrary scale, a smooth multiplicative bias field
(strongly peaked posteriorly with an endorectal coil) and Rician noise. RAS+ axes as in the CT phantom.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from proxy_bundle.phantoms.acquisition import ghost, rician
from proxy_bundle.phantoms.case import PhantomCase
from proxy_bundle.phantoms.fields import smooth_field
from proxy_bundle.phantoms.grid import Grid
from proxy_bundle.phantoms.shapes import Canvas, Ellipsoid
from proxy_bundle.phantoms.sites import Site

#: Field of view per grid voxel at the nominal spacing (in-plane, in-plane, slice), in mm.
FOV_PER_VOXEL = (0.6, 0.6, 1.8)

#: T2 signal relative to fat.
FAT, MUSCLE, URINE, BONE_CORTEX, MARROW, TZ, CAPSULE = 1.0, 0.3, 1.9, 0.05, 0.7, 0.45, 0.3


def render(rng: np.random.Generator, site: Site, size: int, atypical: str | None = None) -> PhantomCase:
    """Render one case of ``site`` on a grid of about ``size`` voxels per axis."""
    p = site.params
    grid = Grid.for_site(rng, site.inplane_mm, site.slice_mm, size, FOV_PER_VOXEL)
    inplane = grid.spacing[0]

    gland = float(np.exp(rng.normal(0.0, 0.1))) * {"small_gland": 0.65, "large_bph": 1.2}.get(atypical or "", 1.0)
    tz_frac = float(rng.uniform(0.8, 1.1)) * (1.3 if atypical == "large_bph" else 1.0)
    pz_gap = float(p["pz_tz"]) * float(rng.uniform(0.32, 0.45)) * (0.25 if atypical == "low_contrast" else 1.0)

    cv = Canvas(grid, rng, background=FAT, warp=0.05)
    full = (slice(None),) * 3
    cv.paint(full, np.ones(grid.shape, bool), cv.texture(full, FAT, 0.06, 12))
    rectum_c = _surroundings(cv, rng, bool(p["endorectal"]))
    label = _prostate(cv, rng, gland, tz_frac, pz_gap)

    bias_amp = float(p["bias"]) * (3.0 if atypical == "strong_bias" else 1.0)
    bias = np.exp(np.float32(bias_amp) * smooth_field(rng, cv.ax, 3, extent=(-1.2, 1.2)))
    if p["endorectal"]:
        d = np.sqrt((cv.ax[0][:, None, None] - rectum_c[0]) ** 2 + (cv.ax[1][None, :, None] - rectum_c[1]) ** 2)
        bias = bias * (1.0 + np.float32(rng.uniform(1.5, 3.0)) * np.exp(-d / np.float32(0.3)))
    image = cv.image * bias.astype(np.float32)
    sigma = [site.blur_mm / inplane, site.blur_mm / inplane, 0.3]
    if atypical == "motion":
        image = ghost(image, axis=1, fraction=0.23, weight=0.25)
        sigma = [2.0 * sigma[0], 2.0 * sigma[1], 0.6]
    image = ndimage.gaussian_filter(image, sigma, mode="nearest")
    image = rician(image, site.noise, rng)
    scale = float(np.exp(rng.uniform(*np.log(p["scale"]))))
    image = image * np.float32(scale)
    if p["dtype"] == "int16":
        image = np.clip(np.rint(image), 0, 32767).astype(np.int16)
    else:
        image = image.astype(np.float32)

    meta: dict[str, Any] = {
        "intensity_scale": round(scale, 4),
        "gland_scale": round(gland, 3),
        "tz_fraction": round(tz_frac, 3),
        "pz_tz_contrast": round(pz_gap, 3),
        "bias_strength": bias_amp,
        "endorectal_coil": bool(p["endorectal"]),
        "pz_voxels": int((label == 1).sum()),
        "tz_voxels": int((label == 2).sum()),
        "noise_rel": site.noise,
    }
    return PhantomCase(image=image, label=label, grid=grid, meta=meta)


def _surroundings(cv: Canvas, rng: np.random.Generator, endorectal: bool) -> tuple[float, float]:
    j = lambda s=0.03: float(rng.normal(0.0, s))  # noqa: E731 - positional jitter
    for side in (-1.0, 1.0):  # obturator internus
        sl, lev = cv.level(Ellipsoid((side * (0.8 + j()), 0.0, 0.0), (0.16, 0.5, 10.0)), rough=0.05)
        cv.paint(sl, lev < 1.0, cv.texture(sl, MUSCLE, 0.04, 6))
    for side in (-1.0, 1.0):  # pubic bones
        sl, lev = cv.level(Ellipsoid((side * 0.16, 0.78 + j(), -0.1), (0.13, 0.14, 0.6)), rough=0.05)
        cv.paint(sl, lev < 1.0, BONE_CORTEX)
        cv.paint(sl, lev < 0.75, cv.texture(sl, MARROW, 0.08, 5))
    # Rectum (posterior): dark wall, content gas / fluid, or an air-filled endorectal balloon.
    rc = (j(0.05), -0.66 + j())
    axes = (0.32, 0.22, 10.0) if endorectal else (0.24, 0.18, 10.0)
    sl, lev = cv.level(Ellipsoid((rc[0], rc[1], 0.0), axes), rough=0.08)
    cv.paint(sl, lev < 1.0, 0.35)
    content = 0.03 if endorectal else float(rng.choice([0.03, 1.3, 0.6]))
    cv.paint(sl, lev < 0.72, content)
    # Bladder (superior, anterior): bright urine behind a dark wall.
    sl, lev = cv.level(Ellipsoid((j(), 0.2 + j(), 0.8 + j(0.05)), (0.5, 0.42, 0.45)), rough=0.06)
    cv.paint(sl, lev < 1.0, 0.4)
    cv.paint(sl, lev < 0.9, URINE)
    for side in (-1.0, 1.0):  # seminal vesicles: bright convoluted tubes, not part of the gland
        sv = Ellipsoid((side * 0.22 + j(), -0.28 + j(), 0.45 + j(0.05)), (0.22, 0.07, 0.22), angle=side * 0.35)
        sl, lev = cv.level(sv, rough=0.15)
        sept = cv.texture(sl, 0.0, 1.0, 7)
        cv.paint(sl, lev < 1.0, np.where(np.abs(sept) < 0.25, 0.5, 1.45).astype(np.float32))
    return rc


def _prostate(cv: Canvas, rng: np.random.Generator, gland: float, tz_frac: float, pz_gap: float) -> np.ndarray:
    a, b, c = 0.5 * gland, 0.38 * gland, 0.5 * min(gland, 1.15)
    centre = (float(rng.normal(0, 0.04)), -0.04 + float(rng.normal(0, 0.03)), -0.1 + float(rng.normal(0, 0.05)))
    pr = Ellipsoid(centre, (a, b, c), angle=float(rng.normal(0, 0.1)), tilt=(0.0, float(rng.uniform(0.1, 0.35))))
    sl, lev = cv.level(pr, rough=0.06)
    gland_mask = lev < 1.0
    x, y, z = cv.coords(sl)
    # Transition zone: anterior-central, superior (absent at the apex), enlarged by BPH.
    tz = Ellipsoid(
        (centre[0], centre[1] + 0.2 * b, centre[2] + 0.2 * c),
        (0.58 * a * tz_frac, 0.5 * b * tz_frac, 0.72 * c * tz_frac),
        angle=pr.angle,
        tilt=pr.tilt,
    )
    tz_lev = tz.level(x, y, z) + np.float32(0.08) * smooth_field(rng, [ax[s] for ax, s in zip(cv.ax, sl)], 5)
    tz_mask = gland_mask & (tz_lev < 1.0) & (lev < 0.9)
    # Anterior fibromuscular stroma: a lens-shaped cap in front of the transition zone.
    dx = (x - centre[0] - pr.tilt[0] * (z - centre[2])) / np.float32(a)
    anterior = (y - centre[1] - pr.tilt[1] * (z - centre[2])) / np.float32(b) > 0.55 + 0.6 * dx * dx
    tz_mask |= gland_mask & anterior  # anterior fibromuscular stroma belongs to the central gland label
    pz_mask = gland_mask & ~tz_mask

    tz_val = cv.texture(sl, TZ, 0.09, 9)  # BPH nodules
    pz_val = cv.texture(sl, TZ + pz_gap, 0.05, 6)
    if rng.random() < 0.3:  # a dark peripheral-zone lesion, as dark as the transition zone
        lesion = cv.texture(sl, 0.0, 1.0, 4) > 1.2
        pz_val = np.where(lesion, np.float32(TZ + 0.05), pz_val)
    cv.paint(sl, gland_mask, CAPSULE)  # the capsule is what remains at the rim
    cv.paint(sl, pz_mask & (lev < 0.9), pz_val)
    cv.paint(sl, tz_mask & (lev < 0.93), np.where(anterior, np.float32(0.3), tz_val).astype(np.float32))

    label = np.zeros(cv.grid.shape, dtype=np.uint8)
    region = label[sl]
    region[pz_mask] = 1
    region[tz_mask] = 2
    return label
