"""Abdominal CT phantom with a spleen label (stands in for MSD Task09 Spleen).

Hounsfield-calibrated: air -1000, fat about -100, muscle ~50, bone > 300 (vertebrae, ribs), with
contrast enhancement of the organs depending on the acquisition phase. The spleen is a bent
(crescent) ellipsoid along the left posterolateral body wall, medial to the ribs, next to the
stomach, pancreatic tail, left kidney and the left lobe of the liver, whose enhancement overlaps
the spleen's in the portal and delayed phases. Coordinates: axis 0 -> subject right, 1 -> anterior,
2 -> superior (RAS+), so the spleen lies at low axis-0 and axis-1 indices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from proxy_bundle.phantoms.acquisition import blur_with_noise, ghost
from proxy_bundle.phantoms.case import PhantomCase
from proxy_bundle.phantoms.fields import smooth_field
from proxy_bundle.phantoms.grid import Grid
from proxy_bundle.phantoms.shapes import Canvas, Ellipsoid
from proxy_bundle.phantoms.sites import Site

#: Field of view per grid voxel at the nominal spacing (in-plane, in-plane, slice), in mm.
FOV_PER_VOXEL = (0.75, 0.75, 1.5)

#: Organ attenuation (HU) by contrast phase; enhancement over "native" is scaled by the site's
#: contrast dose factor. Values follow typical clinical ranges.
PHASE_HU: dict[str, dict[str, float]] = {
    "native": dict(spleen=48, liver=58, cortex=35, medulla=30, aorta=45, ivc=42, pancreas=42, wall=40, mottle=0),
    "arterial": dict(spleen=128, liver=74, cortex=200, medulla=75, aorta=290, ivc=75, pancreas=115, wall=95, mottle=30),
    "portal": dict(spleen=122, liver=110, cortex=175, medulla=150, aorta=165, ivc=150, pancreas=100, wall=85, mottle=6),
    "delayed": dict(spleen=94, liver=90, cortex=130, medulla=140, aorta=120, ivc=118, pancreas=82, wall=70, mottle=0),
}
AIR, FAT, MUSCLE, CSF, GAS = -1000.0, -100.0, 50.0, 12.0, -950.0


def organ_hu(phase: str, contrast: float) -> dict[str, float]:
    """Organ HU for a phase with the enhancement scaled by ``contrast``."""
    native, target = PHASE_HU["native"], PHASE_HU[phase]
    out = {k: native[k] + contrast * (target[k] - native[k]) for k in target if k != "mottle"}
    out["mottle"] = contrast * target["mottle"]
    return out


def render(rng: np.random.Generator, site: Site, size: int, atypical: str | None = None) -> PhantomCase:
    """Render one case of ``site`` on a grid of about ``size`` voxels per axis."""
    p = site.params
    grid = Grid.for_site(rng, site.inplane_mm, site.slice_mm, size, FOV_PER_VOXEL)
    inplane = grid.spacing[0]

    phase = "native" if atypical == "non_contrast" else p["phase"]
    hu = organ_hu(phase, float(rng.uniform(*p["contrast"])))
    hu["spleen"] += float(rng.normal(0.0, 8.0))
    hu["liver"] += float(rng.normal(0.0, 8.0))
    spleen_scale = float(np.exp(np.clip(rng.normal(0.0, 0.13), -0.25, 0.3)))
    spleen_scale *= {"tiny_spleen": 0.5, "splenomegaly": 1.35}.get(atypical or "", 1.0)

    cv = Canvas(grid, rng, background=AIR, warp=0.05)
    _body(cv, rng)
    _viscera(cv, rng, hu)
    spleen = _spleen(cv, rng, hu, spleen_scale)
    label = np.zeros(grid.shape, dtype=np.uint8)
    label[spleen[0]][spleen[1]] = 1

    image = cv.image
    if atypical == "metal_artefact":
        image = _metal_streaks(cv, rng)
    sigma = (site.blur_mm / inplane, site.blur_mm / inplane, 0.4)
    if atypical == "motion":
        image = ghost(image, axis=2, fraction=2.0 / grid.shape[2], weight=0.3)
        sigma = (2.0 * sigma[0], 2.0 * sigma[1], 0.8)
    image = blur_with_noise(image, sigma, site.noise, rng) + np.float32(p["hu_offset"])
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)

    meta: dict[str, Any] = {
        "phase": phase,
        "hu": {k: round(v, 1) for k, v in hu.items()},
        "spleen_scale": round(spleen_scale, 3),
        "spleen_voxels": int(label.sum()),
        "spleen_ml": round(float(label.sum()) * grid.voxel_ml(), 3),
        "noise_hu": site.noise,
    }
    return PhantomCase(image=image, label=label, grid=grid, meta=meta)


def _body(cv: Canvas, rng: np.random.Generator) -> None:
    """Body outline: subcutaneous fat, muscle wall, visceral fat, ribs."""
    a = 0.86 * float(rng.uniform(0.92, 1.04))
    b = 0.66 * float(rng.uniform(0.92, 1.04))
    y0 = -0.03
    fat_t = float(rng.uniform(0.05, 0.15))  # body habitus
    z = cv.ax[2][None, None, :]
    q = np.sqrt((cv.x / (a * (1.0 + 0.04 * z))) ** 2 + ((cv.y - y0) / b) ** 2)
    q += 0.015 * smooth_field(rng, cv.ax, 4)
    full = (slice(None),) * 3
    cv.paint(full, q < 1.0, cv.texture(full, FAT - 5.0, 8.0, 10))
    wall = 1.0 - fat_t
    cv.paint(full, q < wall, MUSCLE)
    inner = wall - 0.05
    cv.paint(full, q < inner, cv.texture(full, FAT + 5.0, 20.0, 12))
    # Ribs: oblique arcs just inside the muscle wall, absent anteriorly (costal cartilage ignored).
    band = (q > inner - 0.045) & (q < inner + 0.01)
    idx = np.nonzero(band)
    xs, ys = cv.x[idx], cv.y[idx] - y0
    theta = np.arctan2(ys, xs)
    zz = cv.ax[2][idx[2]]
    ribs = (np.abs(theta - np.pi / 2) > 0.7) & (np.cos(2 * np.pi * (2.5 * zz + 0.3 * theta / np.pi)) > 0.45)
    cv.image[tuple(i[ribs] for i in idx)] = np.float32(rng.uniform(450.0, 750.0))


def _viscera(cv: Canvas, rng: np.random.Generator, hu: dict[str, float]) -> None:
    j = lambda s=0.03: float(rng.normal(0.0, s))  # noqa: E731 - positional jitter
    # Liver: right lobe plus the left lobe reaching across anteriorly (toward the spleen in some cases).
    reach = float(rng.uniform(0.25, 0.8))
    for shape in (
        Ellipsoid((0.36 + j(), 0.02 + j(), 0.1), (0.42, 0.48, 0.9)),
        Ellipsoid((-0.05 - 0.2 * reach, 0.26 + j(), 0.35), (0.3 + reach * 0.3, 0.17, 0.5), angle=-0.25),
    ):
        sl, lev = cv.level(shape, rough=0.06)
        cv.paint(sl, lev < 1.0, cv.texture(sl, hu["liver"], 7.0, 8))
    # Stomach: enhancing wall, gas anteriorly (patient supine), fluid or oral contrast below.
    st = Ellipsoid((-0.2 + j(), 0.2 + j(), 0.3 + j(0.05)), (0.2, 0.19, 0.45), angle=0.4)
    sl, lev = cv.level(st, rough=0.08)
    cv.paint(sl, lev < 1.0, hu["wall"])
    lumen_val = 260.0 if rng.random() < 0.25 else 12.0
    y = cv.y[sl]
    cv.paint(sl, lev < 0.82, np.where(y > st.centre[1] + float(rng.uniform(0.0, 0.1)), GAS, lumen_val).astype(np.float32))
    # Splenic flexure of the colon: gas and stool.
    co = Ellipsoid((-0.48 + j(), 0.18 + j(), -0.55), (0.13, 0.12, 0.3))
    sl, lev = cv.level(co, rough=0.1)
    cv.paint(sl, lev < 1.0, hu["wall"] - 20.0)
    stool = cv.texture(sl, 0.0, 1.0, 6)
    cv.paint(sl, lev < 0.8, np.where(stool > 0.2, GAS, 20.0 + 40.0 * stool).astype(np.float32))
    # Small-bowel loops in the left upper quadrant: enhancing walls in the spleen's HU range.
    for _ in range(int(rng.integers(2, 6))):
        loop = Ellipsoid(
            (float(rng.uniform(-0.55, 0.0)), float(rng.uniform(-0.05, 0.4)), float(rng.uniform(-0.7, 0.1))),
            tuple(float(v) for v in rng.uniform(0.05, 0.11, size=3) * (1.0, 1.0, 2.0)),  # type: ignore[arg-type]
            angle=float(rng.uniform(0, np.pi)),
        )
        sl, lev = cv.level(loop, rough=0.1)
        cv.paint(sl, lev < 1.0, hu["wall"] + 15.0)
        cv.paint(sl, lev < 0.6, GAS if rng.random() < 0.3 else float(rng.uniform(5.0, 40.0)))
    # Pancreatic tail running toward the splenic hilum.
    pa = Ellipsoid((-0.2 + j(), -0.06 + j(), -0.05), (0.24, 0.06, 0.2), angle=-0.45)
    sl, lev = cv.level(pa, rough=0.1)
    cv.paint(sl, lev < 1.0, cv.texture(sl, hu["pancreas"], 12.0, 6))
    # Kidneys: cortex and medulla; the left upper pole touches the spleen tip.
    for side, zc in ((-1.0, -0.5), (1.0, -0.62)):
        kid = Ellipsoid((side * 0.31 + j(), -0.3 + j(), zc + j(0.05)), (0.11, 0.15, 0.36), angle=side * 0.5)
        sl, lev = cv.level(kid, rough=0.05)
        cv.paint(sl, lev < 1.0, hu["cortex"])
        cv.paint(sl, lev < 0.72, hu["medulla"])
    # Great vessels.
    for centre, axes, val in (((-0.07, -0.09), (0.055, 0.055), hu["aorta"]), ((0.1, -0.07), (0.065, 0.045), hu["ivc"])):
        sl, lev = cv.level(Ellipsoid((centre[0], centre[1], 0.0), (axes[0], axes[1], 10.0)))
        cv.paint(sl, lev < 1.0, val)
    # Spine: paraspinal muscles, vertebral body (cancellous bone, cortex, discs), arch, canal.
    for side in (-1.0, 1.0):
        sl, lev = cv.level(Ellipsoid((side * 0.15, -0.47, 0.0), (0.1, 0.09, 10.0)), rough=0.05)
        cv.paint(sl, lev < 1.0, MUSCLE)
    marrow = float(rng.uniform(240.0, 340.0))
    sl, lev = cv.level(Ellipsoid((0.0, -0.25, 0.0), (0.12, 0.1, 10.0)))
    z = cv.ax[2][None, None, sl[2]]
    disc = np.cos(2 * np.pi * 3.0 * z) > 0.85
    cv.paint(sl, lev < 1.0, np.where(lev > 0.78, 900.0, np.where(disc, 85.0, marrow)).astype(np.float32))
    sl, lev = cv.level(Ellipsoid((0.0, -0.42, 0.0), (0.1, 0.09, 10.0)))
    cv.paint(sl, lev < 1.0, 500.0)
    cv.paint(sl, lev < 0.6, CSF)
    sl, lev = cv.level(Ellipsoid((0.0, -0.55, 0.0), (0.03, 0.06, 10.0)))
    cv.paint(sl, lev < 1.0, 450.0)


def _spleen(cv: Canvas, rng: np.random.Generator, hu: dict[str, float], scale: float):
    """Crescent along the left posterolateral wall, concave toward the hilum; painted last."""
    sp = Ellipsoid(
        centre=(-0.45 + float(rng.normal(0, 0.05)), -0.18 + float(rng.normal(0, 0.05)), 0.15 + float(rng.normal(0, 0.1))),
        axes=(0.4 * scale, 0.18 * scale, 0.55 * min(scale, 1.3)),
        angle=-0.87 + float(rng.normal(0, 0.25)),
        bend=float(rng.uniform(0.2, 0.5)),
        tilt=(float(rng.normal(0, 0.1)), float(rng.normal(0, 0.1))),
    )
    sl, lev = cv.level(sp, rough=0.12, n_ctrl=5)
    mask = lev < 1.0
    val = cv.texture(sl, hu["spleen"], 6.0, 8)
    if hu["mottle"]:
        # Arterial-phase "zebra" enhancement of the red pulp.
        val += np.float32(hu["mottle"]) * np.sin(5.0 * smooth_field(rng, [a[s] for a, s in zip(cv.ax, sl)], 5))
    cv.paint(sl, mask, val)
    return sl, mask


def _metal_streaks(cv: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Beam-hardening streaks radiating from a small metal object (surgical clip) near the spleen."""
    cx, cy = float(rng.uniform(-0.4, -0.1)), float(rng.uniform(-0.2, 0.1))
    zc = float(rng.uniform(-0.2, 0.4))
    dx = cv.ax[0][:, None, None] - cx
    dy = cv.ax[1][None, :, None] - cy
    dz = cv.ax[2][None, None, :] - zc
    r = np.sqrt(dx * dx + dy * dy) + 1e-3
    streak = np.cos(9.0 * np.arctan2(dy, dx)) * np.exp(-r / 0.5) * np.exp(-((dz / 0.15) ** 2))
    image = cv.image + np.float32(rng.uniform(250.0, 400.0)) * streak.astype(np.float32)
    image[(r < 0.025) & (np.abs(dz) < 0.04)] = 3000.0
    return image
