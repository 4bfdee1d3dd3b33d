"""Pieces shared by proxyseg's training and inference: configuration, data lists, transforms, network.

Everything here is a pure function of the parsed configuration so that training, inference and the preprocessing
cache agree on what a run is. Training and inference load this file by path (see ``load_pipeline`` in train.py and
infer.py) because BundleAlgo imports ``infer.py`` as a loose module, without its package.
"""

from __future__ import annotations

import hashlib
import json
import os
from copy import deepcopy
from typing import Any, Mapping, Sequence

# Preprocessing settings that decide the content of a cached case; anything else (augmentation, network, optimiser,
# proxy) may change without invalidating the cache, which is what lets every trial and fold share it.
PREPROCESSING_KEYS = ("orientation", "spacing", "intensity", "modality", "input_channels")

NETWORK_CLASSES = {"segresnetds": "SegResNetDS", "segresnet": "SegResNet"}


class ConfigError(ValueError):
    """A setting or input file that cannot be used; the message names the key or file."""


def config_files(config_file: str | Sequence[str]) -> list[str]:
    """Normalise the ``config_file`` argument (a path, a comma-separated string as BundleAlgo passes it, or a list)."""
    if isinstance(config_file, (list, tuple)):
        files = [str(f) for f in config_file]
    else:
        files = [f for f in str(config_file).split(",")]
    files = [f.strip().strip("'\"") for f in files if f.strip()]
    return [f for f in files if f.endswith((".yaml", ".yml", ".json"))]


def _coerce(value: Any) -> Any:
    # fire keeps bare words such as `true`/`null` as strings; YAML spelling is what users type from the configs.
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "null", "none", "~"):
        return {"true": True, "false": False}.get(value.strip().lower())
    return value


def load_config(config_file: str | Sequence[str], override: Mapping[str, Any] | None = None):
    """Read the config files and apply ``key#sub=value`` overrides; returns a ``monai.bundle.ConfigParser``."""
    from monai.bundle import ConfigParser

    files = config_files(config_file)
    if not files:
        raise ConfigError(f"no .yaml/.json config file in {config_file!r}")
    for f in files:
        if not os.path.isfile(f):
            raise ConfigError(f"{f}: config file not found")
    parser = ConfigParser()
    parser.read_config(files)
    for key, value in (override or {}).items():
        key = str(key).replace("::", "#")
        parser[key] = _coerce(value)
    return parser


def settings(parser) -> dict:
    """The fully resolved configuration as a plain dict (references and expressions evaluated)."""
    if parser.get("bundle_root") is None:
        raise ConfigError("bundle_root is not set: generate the bundle with ProxysegAlgo/BundleGen or pass --bundle_root")
    keys = list(parser.get().keys())
    return {k: parser.get_parsed_content(k) for k in keys}


# --- data lists ---------------------------------------------------------------------------------------------------


def _read_json(path: str, what: str) -> dict:
    if not path or not os.path.isfile(path):
        raise ConfigError(f"{path}: {what} not found")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: {what} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("training"), list):
        raise ConfigError(f"{path}: {what} has no 'training' list")
    return data


def _resolve(entry: Mapping[str, Any], base_dir: str, path: str, index: int) -> dict:
    out = {}
    for key in ("image", "label"):
        value = entry.get(key)
        if value is None:
            raise ConfigError(f"{path}: training entry {index} has no '{key}'")
        if isinstance(value, (list, tuple)):
            out[key] = [os.path.normpath(os.path.join(base_dir, v)) for v in value]
        else:
            out[key] = os.path.normpath(os.path.join(base_dir, str(value)))
    return out


def _case_key(item: Mapping[str, Any]) -> str:
    image = item["image"]
    return json.dumps(image if isinstance(image, str) else list(image))


def split_datalists(cfg: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    """Training and validation items (absolute ``image``/``label`` paths only).

    Validation is always the ``fold`` of the full datalist, so full and proxy runs are scored on the same cases.
    A datalist without folds is read as AutoRunner reads it (a ``validation`` list is fold 0, see
    ``proxy_bundle.validation.auto3dseg_folds``). With ``proxy.enabled`` and ``proxy.datalist`` set, training is
    the proxy list's ``training`` entries; a proxy case that belongs to the validation fold is dropped so that no
    validation case is ever trained on.
    """
    from proxy_bundle.validation import auto3dseg_folds

    base_dir = str(cfg["data_file_base_dir"])
    full_path = str(cfg["data_list_file_path"])
    full = auto3dseg_folds(_read_json(full_path, "datalist"))
    fold = int(cfg["fold"])
    train, val = [], []
    for i, entry in enumerate(full["training"]):
        (val if int(entry["fold"]) == fold else train).append(_resolve(entry, base_dir, full_path, i))
    if not val:
        raise ConfigError(f"{full_path}: no training entry has fold {fold}, so there is nothing to validate on")

    proxy = cfg.get("proxy") or {}
    if proxy.get("enabled") and proxy.get("datalist"):
        proxy_path = str(proxy["datalist"])
        subset = _read_json(proxy_path, "proxy datalist")
        val_keys = {_case_key(v) for v in val}
        train = [_resolve(e, base_dir, proxy_path, i) for i, e in enumerate(subset["training"])]
        train = [t for t in train if _case_key(t) not in val_keys]
    if not train:
        raise ConfigError(f"{full_path}: no training cases left for fold {fold}")
    return train, val


# --- preprocessing ------------------------------------------------------------------------------------------------


def preprocessing(cfg: Mapping[str, Any]) -> dict:
    """The preprocessing settings, in a canonical plain form (also stored with the model for inference)."""
    prep = {k: deepcopy(cfg.get(k)) for k in PREPROCESSING_KEYS}
    prep["spacing"] = [float(s) for s in prep["spacing"]] if prep["spacing"] else None
    prep["modality"] = str(prep["modality"]).lower()
    prep["input_channels"] = int(prep["input_channels"])
    intensity = dict(prep["intensity"] or {})
    mode = str(intensity.get("mode", "range")).lower()
    if mode not in ("range", "meanstd"):
        raise ConfigError(f"intensity#mode must be 'range' or 'meanstd', got {mode!r}")
    intensity["mode"] = mode
    prep["intensity"] = intensity
    return prep


def preprocessing_hash(prep: Mapping[str, Any]) -> str:
    """Cache key of a preprocessing setting: equal settings share cached cases across runs."""
    blob = json.dumps(prep, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def deterministic_transforms(prep: Mapping[str, Any], keys: Sequence[str] = ("image", "label")) -> list:
    """Load, channel-first, orient, resample, normalise: the cacheable part of the pipeline."""
    from monai.transforms import (
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    keys = list(keys)
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    xforms: list = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        EnsureTyped(keys="image", dtype="float32"),
    ]
    if prep.get("orientation"):
        # Explicit labels: the default is changing in MONAI and would warn on every case.
        labels = (("L", "R"), ("P", "A"), ("I", "S"))
        xforms.append(Orientationd(keys=keys, axcodes=str(prep["orientation"]), labels=labels))
    if prep.get("spacing"):
        xforms.append(Spacingd(keys=keys, pixdim=prep["spacing"], mode=modes))
    it = prep["intensity"]
    if it["mode"] == "range":
        xforms.append(
            ScaleIntensityRanged(
                keys="image",
                a_min=float(it["a_min"]),
                a_max=float(it["a_max"]),
                b_min=float(it.get("b_min", 0.0)),
                b_max=float(it.get("b_max", 1.0)),
                clip=bool(it.get("clip", True)),
            )
        )
    else:
        xforms.append(
            NormalizeIntensityd(
                keys="image", nonzero=bool(it.get("nonzero", True)), channel_wise=bool(it.get("channel_wise", True))
            )
        )
    return xforms


def train_random_transforms(cfg: Mapping[str, Any]) -> list:
    """Patch sampling and augmentation (random, so recomputed every epoch after the cached part)."""
    from monai.transforms import (
        EnsureTyped,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandRotated,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandZoomd,
        SpatialPadd,
    )

    roi = [int(r) for r in cfg["roi_size"]]
    aug = cfg["augment"]
    keys = ["image", "label"]
    rot = float(aug.get("rotate_range", 0.26))
    scale = float(aug.get("scale_range", 0.1))
    # The list must start with a random transform: PersistentDataset caches everything before the first random
    # one, and the cache is shared with validation, which applies only the deterministic part.
    return [
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=roi,
            pos=float(cfg.get("pos_sample_ratio", 1.0)),
            neg=1.0,
            num_samples=int(cfg["num_patches_per_image"]),
            allow_smaller=True,
        ),
        SpatialPadd(keys=keys, spatial_size=roi),  # images smaller than the ROI were cropped to their own size
        RandRotated(
            keys=keys,
            range_x=rot,
            range_y=rot,
            range_z=rot,
            prob=float(aug["prob_rotate"]),
            mode=["bilinear", "nearest"],
            padding_mode="zeros",
        ),
        RandZoomd(
            keys=keys,
            min_zoom=1.0 - scale,
            max_zoom=1.0 + scale,
            prob=float(aug["prob_scale"]),
            mode=["trilinear", "nearest"],
            keep_size=True,
        ),
        RandFlipd(keys=keys, spatial_axis=0, prob=float(aug["prob_flip"])),
        RandFlipd(keys=keys, spatial_axis=1, prob=float(aug["prob_flip"])),
        RandFlipd(keys=keys, spatial_axis=2, prob=float(aug["prob_flip"])),
        RandScaleIntensityd(
            keys="image", factors=float(aug.get("intensity_scale_factor", 0.1)), prob=float(aug["prob_intensity_scale"])
        ),
        RandShiftIntensityd(
            keys="image",
            offsets=float(aug.get("intensity_shift_offset", 0.1)),
            prob=float(aug["prob_intensity_shift"]),
        ),
        RandGaussianNoised(keys="image", std=float(aug.get("noise_std", 0.1)), prob=float(aug["prob_noise"])),
        # Float labels: deep supervision resizes them to each head's resolution, which integer tensors do not allow.
        EnsureTyped(keys=keys, dtype="float32", track_meta=False),
    ]


# --- network ------------------------------------------------------------------------------------------------------


def base_network_kwargs(cfg: Mapping[str, Any]) -> tuple[str, dict]:
    """Network name and MONAI constructor kwargs of the full network."""
    net = dict(cfg["network"])
    name = str(net.pop("name", "segresnetds")).lower()
    if name not in NETWORK_CLASSES:
        raise ConfigError(f"network#name must be one of {sorted(NETWORK_CLASSES)}, got {name!r}")
    blocks_down = [int(b) for b in net["blocks_down"]]
    kwargs: dict[str, Any] = {
        "spatial_dims": 3,
        "init_filters": int(net["init_filters"]),
        "in_channels": int(cfg["input_channels"]),
        "out_channels": int(cfg["output_classes"]),
        "blocks_down": tuple(blocks_down),
        "blocks_up": tuple(int(b) for b in net["blocks_up"]) if net.get("blocks_up") else (1,) * (len(blocks_down) - 1),
        "norm": net.get("norm", "INSTANCE"),
    }
    if name == "segresnetds":
        kwargs["dsdepth"] = max(1, min(int(net.get("dsdepth", 1)), len(blocks_down)))
    return name, kwargs


def network_spec(cfg: Mapping[str, Any]) -> tuple[str, dict]:
    """Name and constructor kwargs of the network this run trains: the full one, or its proxy."""
    name, kwargs = base_network_kwargs(cfg)
    proxy = cfg.get("proxy") or {}
    if not proxy.get("enabled"):
        return name, kwargs
    # Imported only for proxy runs, so full-fidelity training needs nothing beyond MONAI.
    from proxy_bundle.networks.scaling import ProxySpec, scaled_kwargs

    levels = proxy.get("levels")
    spec = ProxySpec(
        width=float(proxy.get("width", 1.0)),
        blocks=float(proxy.get("blocks", 1.0)),
        levels=None if levels is None else int(levels),
    )
    return name, plain_kwargs(scaled_kwargs(name, kwargs, spec))


def plain_kwargs(value: Any) -> Any:
    """Constructor kwargs with enums replaced by their values, so checkpoints load with ``weights_only=True``."""
    from enum import Enum

    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain_kwargs(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_kwargs(v) for v in value)
    return value


def build_network(name: str, kwargs: Mapping[str, Any]):
    """Instantiate the MONAI network from :func:`network_spec` output."""
    import monai.networks.nets as nets

    return getattr(nets, NETWORK_CLASSES[name])(**dict(kwargs))


def network_levels(kwargs: Mapping[str, Any]) -> int:
    return len(kwargs["blocks_down"])


def check_roi(roi: Sequence[int], levels: int) -> None:
    """SegResNet(DS) halves the resolution ``levels - 1`` times, so every ROI side must divide by that factor."""
    factor = 2 ** (levels - 1)
    if any(int(r) % factor for r in roi):
        raise ConfigError(f"roi_size {list(roi)} must be divisible by {factor} for a {levels}-level network")
