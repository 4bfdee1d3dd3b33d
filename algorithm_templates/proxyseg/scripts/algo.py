"""Auto3DSeg algorithm ``proxyseg``: SegResNet(DS) trained at full or proxy fidelity.

``BundleGen`` registers this folder as ``proxyseg.scripts.algo.ProxysegAlgo`` and, for every fold, copies the
template, calls :meth:`ProxysegAlgo.fill_template_config` and saves the object to ``algo_object.json``.
"""

from __future__ import annotations

import math
import os
from copy import deepcopy
from typing import Any

import yaml
from monai.apps.auto3dseg import BundleAlgo
from monai.bundle import ConfigParser

from proxy_bundle.atomic import write_text

HYPER_PARAMETERS = "hyper_parameters.yaml"
DEFAULT_ROI = (96, 96, 96)
MAX_LEVELS = 5
# Residual blocks per level for a given number of levels (SegResNet's encoder pattern, cut to fit).
BLOCKS_DOWN = {5: [1, 2, 2, 4, 4], 4: [1, 2, 2, 4], 3: [1, 2, 2], 2: [1, 2], 1: [1]}
# Training length: about this many sampled patches per case budget, clipped to a sane epoch range.
EPOCH_BUDGET, MIN_EPOCHS, MAX_EPOCHS = 20000, 100, 1000
# ``proxy_data`` keys that may hold the selected case ids (only their count is copied into the config).
SELECTED_KEYS = ("selected", "selected_cases", "selected_ids", "case_ids", "cases")


def _get(stats: dict, path: str, default: Any = None) -> Any:
    node: Any = stats
    for part in path.split("#"):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _plain(value: Any) -> Any:
    """YAML-safe plain value (tuples -> lists, numpy scalars -> Python numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def choose_levels(image_size: list[float], max_levels: int = MAX_LEVELS, min_bottleneck: int = 4) -> int:
    """Most resolution levels such that the smallest image side still spans ``min_bottleneck`` voxels at the bottom."""
    smallest = max(1.0, min(image_size))
    levels = int(math.floor(math.log2(max(smallest / min_bottleneck, 1.0)))) + 1
    return max(1, min(max_levels, levels))


def choose_roi(image_size: list[float], levels: int, default: tuple[int, ...] = DEFAULT_ROI) -> list[int]:
    """Patch size: the default, or the (resampled) image when smaller, rounded up to a multiple of 2^(levels-1)."""
    factor = 2 ** (levels - 1)
    roi = []
    for size, cap in zip(image_size, default):
        side = min(float(cap), float(size))
        roi.append(int(max(factor, math.ceil(side / factor) * factor)))
    return roi


def choose_epochs(n_cases: int) -> int:
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(EPOCH_BUDGET / max(n_cases, 1)))))


def _is_ct(modality: str) -> bool:
    return str(modality).strip().lower().startswith("ct")


class ProxysegAlgo(BundleAlgo):
    """BundleAlgo whose configs are filled from Auto3DSeg's datastats and the proxy-data selection."""

    def __init__(self, template_path: str | None = None) -> None:
        super().__init__(template_path)
        # The datastats ``proxy_data`` section this algo was filled with (None when there was none).
        self.proxy_data: dict | None = None

    def derive_settings(self, data_stats: dict, data_src: dict) -> dict:
        """Config entries (``key#sub`` -> value) implied by the dataset statistics and data source config."""
        summary = data_stats.get("stats_summary")
        if not isinstance(summary, dict):
            raise ValueError(f"{self.data_stats_files}: datastats has no stats_summary")
        modality = "ct" if _is_ct(data_src.get("modality", "ct")) else "mri"

        spacing = [float(s) for s in _get(summary, "image_stats#spacing#median")]
        size_mm = _get(summary, "image_stats#sizemm#median")
        if size_mm is None:
            shape = _get(summary, "image_stats#shape#median")
            size_mm = [float(n) * s for n, s in zip(shape, spacing)]
        image_size = [float(mm) / s for mm, s in zip(size_mm, spacing)]
        levels = choose_levels(image_size)
        roi = choose_roi(image_size, levels)

        labels = [int(v) for v in (_get(summary, "label_stats#labels") or [0, 1])]
        output_classes = max(len(labels), max(labels) + 1)
        input_channels = int(_get(summary, "image_stats#channels#max", 1))
        n_cases = int(summary.get("n_cases") or len(data_stats.get("stats_by_cases") or []) or 1)

        if modality == "ct":
            lo = float(_get(summary, "image_foreground_stats#intensity#percentile_00_5"))
            hi = float(_get(summary, "image_foreground_stats#intensity#percentile_99_5"))
            if hi <= lo:  # a constant foreground would make a zero-width window
                hi = lo + 1.0
            intensity = {"mode": "range", "a_min": lo, "a_max": hi, "b_min": 0.0, "b_max": 1.0, "clip": True}
        else:
            intensity = {"mode": "meanstd", "nonzero": True, "channel_wise": True}

        out: dict[str, Any] = {
            "modality": modality,
            "spacing": spacing,
            "roi_size": roi,
            "network#blocks_down": BLOCKS_DOWN[levels],
            "input_channels": input_channels,
            "output_classes": output_classes,
            "num_epochs": choose_epochs(n_cases),
        }
        for key, value in intensity.items():
            out[f"intensity#{key}"] = value
        if isinstance(data_src.get("class_names"), list):
            out["class_names"] = data_src["class_names"]
        if data_src.get("dataroot"):
            out["data_file_base_dir"] = os.path.abspath(str(data_src["dataroot"]))
        if data_src.get("datalist"):
            out["data_list_file_path"] = os.path.abspath(str(data_src["datalist"]))

        proxy_data = data_stats.get("proxy_data")
        if isinstance(proxy_data, dict) and proxy_data.get("datalist"):
            path = str(proxy_data["datalist"])
            if not os.path.isabs(path):
                path = os.path.join(os.path.dirname(os.path.abspath(str(self.data_stats_files))), path)
            out["proxy#datalist"] = os.path.normpath(path)
            selection = {k: proxy_data[k] for k in ("metric", "mode", "strategy") if k in proxy_data}
            for key in SELECTED_KEYS:
                if isinstance(proxy_data.get(key), list):
                    selection["num_selected"] = len(proxy_data[key])
                    break
            out["proxy#selection"] = selection
        return out

    def fill_template_config(self, data_stats_filename: str, output_path: str, **kwargs: Any) -> dict:
        """Write the filled ``configs/hyper_parameters.yaml`` in ``output_path``; returns the fill records.

        ``kwargs``: ``fold`` (from BundleGen), ``fill_with_datastats=False`` to replay ``self.fill_records``, and any
        ``key#sub=value`` for an existing config key, which overrides both template and derived value.
        """
        kwargs.pop("gpu_customization", None)
        kwargs.pop("gpu_customization_specs", None)
        if kwargs.pop("fill_with_datastats", True):
            data_stats = self._read_yaml(data_stats_filename, "datastats")
            data_src = self._read_yaml(self.data_list_file, "data source config") if self.data_list_file else {}
            record = {"bundle_root": os.path.abspath(output_path)}
            # Beside datastats.yaml (the work dir): one cache for every fold and every search trial on this dataset.
            stats_dir = os.path.dirname(os.path.abspath(str(data_stats_filename)))
            record["cache_dir"] = os.path.join(stats_dir, "preprocessed_cache")
            record.update(self.derive_settings(data_stats, data_src))
            proxy_data = data_stats.get("proxy_data")
            self.proxy_data = _plain(proxy_data) if isinstance(proxy_data, dict) else None
        else:
            record = dict(deepcopy(self.fill_records.get(HYPER_PARAMETERS, {})))
            record["bundle_root"] = os.path.abspath(output_path)

        file_path = os.path.join(output_path, "configs", HYPER_PARAMETERS)
        parser = ConfigParser(globals=False)
        parser.read_config(file_path)
        for key, value in kwargs.items():
            if key in parser:
                record[key] = value
        for key, value in record.items():
            parser[key] = deepcopy(_plain(value))
        config = parser.get()
        if not config.get("_meta_"):
            config.pop("_meta_", None)  # ConfigParser adds an empty one
        self._write_config(file_path, config)
        return {HYPER_PARAMETERS: _plain(record)}

    @staticmethod
    def _read_yaml(path: str | None, what: str) -> dict:
        if isinstance(path, dict):
            return path
        if not path or not os.path.isfile(str(path)):
            raise FileNotFoundError(f"{path}: {what} not found")
        with open(str(path)) as fh:
            data = yaml.safe_load(fh)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: {what} is not a mapping")
        return data

    @staticmethod
    def _write_config(path: str, config: dict) -> None:
        text = "# Filled by ProxysegAlgo.fill_template_config; see the template's copy for what each key means.\n"
        write_text(path, text + yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None, width=120))

    def state_dict(self) -> dict:
        """BundleAlgo's state plus this class's own attributes (kept through MONAI's ``algo_object.json``)."""
        state = super().state_dict()
        state["proxy_data"] = self.proxy_data
        return state

    def load_state_dict(self, state: dict) -> None:
        self.proxy_data = None
        super().load_state_dict(state)
