"""Bring every case to a common proxy grid before cases are compared (MONAI transforms, each file read once).

Per case: load, channel first, RAS orientation, resample to one common spacing, modality-specific intensity
normalisation to [0, 1] (CT: a fixed HU window; any other modality: 0.5-99.5 percentile scaling per channel), then

* ``roi`` mode: crop to the bounding box of the label's foreground plus a margin in mm (the organ and its
  surroundings), or
* ``image`` mode: crop to the image's foreground (drops the empty air/padding around the body),

and resize the crop, keeping its aspect ratio, into a ``grid^3`` cube (zero padded). The result is one float32
vector per case. In ``roi`` mode a case whose label has no foreground (or that has no label) falls back to ``image``
mode; the fallback is returned with the features so that callers can warn and record it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from proxy_bundle.errors import InputError

__all__ = [
    "MODES",
    "DEFAULT_CT_WINDOW",
    "DEFAULT_MR_PERCENTILES",
    "PreprocessConfig",
    "CaseFeatures",
    "modality_kind",
    "header_spacing",
    "common_spacing",
    "load_transform",
    "proxy_features",
    "load_case",
    "iter_case_features",
]

MODES = ("roi", "image")
#: Abdominal soft-tissue window (HU) used for CT unless another one is given.
DEFAULT_CT_WINDOW = (-175.0, 250.0)
DEFAULT_MR_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class PreprocessConfig:
    """How cases are brought to the proxy grid.

    Attributes:
        mode: ``"roi"`` (label bounding box + ``margin_mm``) or ``"image"`` (image foreground).
        grid: edge length of the cubic proxy grid in voxels.
        spacing: common voxel size (mm, RAS order) everything is resampled to before cropping.
        modality: ``"ct"`` (HU window) or ``"mr"`` (percentile scaling; used for every non-CT modality).
        ct_window: HU range mapped to [0, 1] for CT.
        mr_percentiles: percentiles mapped to [0, 1] for other modalities.
        margin_mm: context kept around the label's bounding box in ``roi`` mode.
    """

    mode: str = "roi"
    grid: int = 48
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    modality: str = "ct"
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW
    mr_percentiles: tuple[float, float] = DEFAULT_MR_PERCENTILES
    margin_mm: float = 10.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r} (use roi or image)", where="mode")
        if isinstance(self.grid, bool) or not isinstance(self.grid, (int, np.integer)) or not 4 <= self.grid <= 512:
            raise InputError(f"grid must be an integer in [4, 512], got {self.grid!r}", where="grid")
        if len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise InputError(f"spacing must be three positive numbers (mm), got {self.spacing!r}", where="spacing")
        if self.modality not in ("ct", "mr"):
            raise InputError(f"modality kind must be 'ct' or 'mr', got {self.modality!r}", where="modality")
        lo, hi = self.ct_window
        if not hi > lo:
            raise InputError(f"CT window must be (low, high) with high > low, got {self.ct_window!r}", where="window")
        plo, phi = self.mr_percentiles
        if not 0 <= plo < phi <= 100:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.mr_percentiles!r}",
                             where="percentiles")
        if not (math.isfinite(self.margin_mm) and self.margin_mm >= 0):
            raise InputError(f"margin must be a non-negative number of mm, got {self.margin_mm!r}", where="margin")

    @property
    def voxels(self) -> int:
        return int(self.grid) ** 3

    def provenance(self) -> dict[str, Any]:
        """The settings as plain JSON/YAML values."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "grid": int(self.grid),
            "spacing": [float(s) for s in self.spacing],
            "modality": self.modality,
            "margin_mm": float(self.margin_mm),
        }
        if self.modality == "ct":
            out["ct_window"] = [float(v) for v in self.ct_window]
        else:
            out["mr_percentiles"] = [float(v) for v in self.mr_percentiles]
        return out


@dataclass
class CaseFeatures:
    """One case on the proxy grid: ``features`` (float32, ``channels * grid^3``) and what happened on the way."""

    features: np.ndarray
    mode_used: str
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def modality_kind(modality: Any) -> str:
    """``"ct"`` or ``"mr"`` from a modality string or a dataset.json ``{"0": "CT"}`` mapping (first channel)."""
    if isinstance(modality, Mapping):
        if not modality:
            raise InputError("modality mapping is empty", where="modality")
        first = sorted(modality, key=lambda k: str(k))[0]
        modality = modality[first]
    if not isinstance(modality, str) or not modality.strip():
        raise InputError(f"modality must be a name such as CT or MRI, got {modality!r}", where="modality")
    return "ct" if modality.strip().lower() in ("ct", "ct-scan", "computed tomography") else "mr"


def _as_paths(image: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(image, (str, os.PathLike)):
        return [os.fspath(image)]
    return [os.fspath(p) for p in image]


def header_spacing(image: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[float, float, float]:
    """Voxel size (mm) of an image in RAS axis order, from the NIfTI header only (the data are not read)."""
    import nibabel as nib

    path = _as_paths(image)[0]
    try:
        img = nib.load(path)
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        ornt = nib.orientations.io_orientation(img.affine)
    except FileNotFoundError:
        raise InputError("image file not found", where=path) from None
    except Exception as err:  # nibabel raises many types for unreadable headers
        raise InputError(f"cannot read the image header ({type(err).__name__}: {err}); pass --spacing", where=path) \
            from None
    ras = [0.0, 0.0, 0.0]
    for axis, (out_axis, _) in enumerate(ornt[:3]):
        ras[int(out_axis)] = zooms[axis]
    return ras[0], ras[1], ras[2]


def common_spacing(images: Iterable[str | os.PathLike | Sequence[str | os.PathLike]]) -> tuple[float, float, float]:
    """Per-axis median voxel size over the given images (headers only), to 6 significant digits.

    Significant digits, not decimals: float32 header noise (1.5000001) goes, and 0.001 mm data keep their size.
    """
    spacings = np.array([header_spacing(im) for im in images], dtype=np.float64)
    if spacings.size == 0:
        raise InputError("no images to take a spacing from", where="spacing")
    med = [float(f"{v:.6g}") for v in np.median(spacings, axis=0)]
    return med[0], med[1], med[2]


def load_transform(with_label: bool):
    """LoadImaged (channel first, float32) + RAS orientation, as Auto3DSeg's DataAnalyzer loads cases."""
    from monai.transforms import Compose, EnsureTyped, LoadImaged, Orientationd

    keys = ["image", "label"] if with_label else ["image"]
    return Compose(
        [
            LoadImaged(keys=keys, image_only=True, ensure_channel_first=True),
            EnsureTyped(keys=keys, data_type="tensor", dtype=torch.float32, track_meta=True),
            # explicit labels: the RAS convention DataAnalyzer uses (and no deprecation warning on every load)
            Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        ]
    )


def _positive(x: torch.Tensor) -> torch.Tensor:
    return x > 0


class _Pipeline:
    """The transforms after loading, built once per configuration (MONAI transforms are stateless here)."""

    def __init__(self, config: PreprocessConfig) -> None:
        from monai.transforms import (
            CropForegroundd,
            Resized,
            ResizeWithPadOrCropd,
            ScaleIntensityRanged,
            ScaleIntensityRangePercentilesd,
            Spacingd,
        )

        c = config
        self.config = c
        self.spacing_image = Spacingd(keys="image", pixdim=c.spacing, mode="bilinear")
        self.spacing_both = Spacingd(keys=["image", "label"], pixdim=c.spacing, mode=("bilinear", "nearest"))
        if c.modality == "ct":
            self.intensity = ScaleIntensityRanged(
                keys="image", a_min=c.ct_window[0], a_max=c.ct_window[1], b_min=0.0, b_max=1.0, clip=True
            )
        else:
            self.intensity = ScaleIntensityRangePercentilesd(
                keys="image", lower=c.mr_percentiles[0], upper=c.mr_percentiles[1], b_min=0.0, b_max=1.0,
                clip=True, channel_wise=True,
            )
        margin = [int(math.ceil(c.margin_mm / s)) for s in c.spacing]
        self.crop_roi = CropForegroundd(keys="image", source_key="label", margin=margin, allow_smaller=True)
        self.crop_image = CropForegroundd(keys="image", source_key="image", select_fn=_positive, allow_smaller=True)
        # longest side to the grid keeps the aspect ratio; the pad makes the cube (background is 0 after scaling).
        self.resize = Resized(keys="image", spatial_size=int(c.grid), size_mode="longest", mode="trilinear",
                              anti_aliasing=True)
        self.pad = ResizeWithPadOrCropd(keys="image", spatial_size=(int(c.grid),) * 3, mode="constant")

    def __call__(self, data: Mapping[str, Any]) -> CaseFeatures:
        d = dict(data)
        label = d.get("label")
        if label is not None:
            if not isinstance(label, torch.Tensor):
                label = torch.as_tensor(label)
            if label.ndim == 3:  # SegSummarizer hands over labels without their channel axis
                label = label.unsqueeze(0)
            d["label"] = label
            d = self.spacing_both(d)
        else:
            d = self.spacing_image(d)
        d = self.intensity(d)
        note = None
        mode_used = self.config.mode
        if self.config.mode == "roi":
            if label is None:
                mode_used, note = "image", "no label: image mode used"
            elif not bool((d["label"] > 0).any()):
                mode_used, note = "image", "empty label: image mode used"
        if mode_used == "roi":
            d = self.crop_roi(d)
        else:
            cropped = self.crop_image(d)
            # a blank image (all zero after scaling) has no foreground: keep it whole rather than crop to nothing.
            if min(cropped["image"].shape[1:]) > 0:
                d = cropped
        d = self.pad(self.resize({"image": d["image"]}))
        feats = torch.as_tensor(d["image"]).detach().to("cpu", torch.float32).numpy().reshape(-1)
        return CaseFeatures(features=np.ascontiguousarray(feats), mode_used=mode_used, note=note)


_PIPELINES: dict[PreprocessConfig, _Pipeline] = {}


def proxy_features(data: Mapping[str, Any], config: PreprocessConfig) -> CaseFeatures:
    """Proxy-grid features of an already loaded case: ``data["image"]`` channel first and RAS (MetaTensor with its
    affine), optional ``data["label"]`` (``[1, H, W, D]`` or ``[H, W, D]``)."""
    pipe = _PIPELINES.get(config)
    if pipe is None:
        pipe = _PIPELINES[config] = _Pipeline(config)
    return pipe(data)


def _case_name(image: str | Sequence[str]) -> str:
    return Path(_as_paths(image)[0]).name


def load_case(image: str | os.PathLike | Sequence[str], label: str | os.PathLike | None,
              config: PreprocessConfig) -> CaseFeatures:
    """Read one case (each file once) and return its proxy-grid features; unreadable files become InputError."""
    with_label = label is not None and config.mode == "roi"
    files: dict[str, Any] = {"image": _as_paths(image) if not isinstance(image, (str, os.PathLike)) else
                             os.fspath(image)}
    if with_label:
        files["label"] = os.fspath(label)  # type: ignore[arg-type]
    for key in files:
        for p in _as_paths(files[key]):
            if not os.path.isfile(p):
                raise InputError(f"{key} file not found: {p}", where=_case_name(image))
    try:
        loaded = load_transform(with_label)(files)
    except Exception as err:  # MONAI wraps reader errors in RuntimeError with a long chain
        root = err
        while root.__cause__ is not None:
            root = root.__cause__
        msg = " ".join(str(root).split())[:300]
        raise InputError(f"cannot load case ({type(root).__name__}: {msg})", where=_case_name(image)) from None
    if with_label and tuple(loaded["label"].shape[1:]) != tuple(loaded["image"].shape[1:]):
        raise InputError(
            f"label shape {tuple(loaded['label'].shape[1:])} differs from image shape "
            f"{tuple(loaded['image'].shape[1:])}",
            where=_case_name(image),
        )
    if not with_label and config.mode == "roi":
        loaded["label"] = None
    try:
        return proxy_features(loaded, config)
    except InputError:
        raise
    except Exception as err:
        msg = " ".join(str(err).split())[:300]
        raise InputError(f"cannot preprocess case ({type(err).__name__}: {msg})", where=_case_name(image)) from None


class _CaseJob:
    """Picklable per-case job for DataLoader workers; errors travel back as values (clean one-line messages)."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config

    def __call__(self, item: Mapping[str, Any]) -> tuple[int, CaseFeatures | None, tuple[str, str | None] | None]:
        index, image, label = item["index"], item["image"], item["label"]
        try:
            return index, load_case(image, label, self.config), None
        except InputError as err:
            message = str(err)
            if err.where is not None and message.startswith(f"{err.where}: "):
                message = message[len(err.where) + 2 :]
            return index, None, (message, err.where)


def iter_case_features(
    cases: Sequence[tuple[Any, Any]], config: PreprocessConfig, workers: int = 0
) -> Iterator[tuple[int, CaseFeatures]]:
    """Yield ``(index, features)`` for ``cases`` = ``[(image, label_or_None), ...]`` in input order.

    ``workers > 0`` loads cases in that many DataLoader worker processes.
    """
    job = _CaseJob(config)
    # dict items: MONAI's Dataset would map the job over the elements of a tuple
    items = [{"index": i, "image": im, "label": lb} for i, (im, lb) in enumerate(cases)]
    if workers <= 0:
        from proxy_bundle.selection.similarity import torch_threads

        for item in items:
            # one small volume at a time: single-threaded, as in a DataLoader worker
            with torch_threads(1):
                index, feats, error = job(item)
            if error is not None:
                raise InputError(error[0], where=error[1])
            yield index, feats  # type: ignore[misc]
        return
    from monai.data import DataLoader, Dataset
    from monai.data.utils import no_collation

    loader = DataLoader(Dataset(items, transform=job), batch_size=1, num_workers=int(workers), shuffle=False,
                        collate_fn=no_collation)
    for batch in loader:
        index, feats, error = batch[0]
        if error is not None:
            raise InputError(error[0], where=error[1])
        yield index, feats
