"""Proxy fidelity for MONAI's own Auto3DSeg templates (segresnet, swinunetr, dints, segresnet2d).

MONAI's templates have no ``proxy`` block (unlike ``proxyseg``), but a proxy trial needs nothing they lack:

* *proxy data*: the template reads its cases from ``data_list_file_path``; pointing it at the proxy datalist
  (which keeps the validation fold unchanged) trains on the subset and validates on the same cases as a full run;
* *proxy network*: the template's own size settings (SegResNetDS ``init_filters``/``blocks_down``, SwinUNETR
  ``feature_size``/``depths``, DiNTS ``channel_mul``) shrunk by :func:`proxy_bundle.networks.scaling.scaled_kwargs`,
  the same function the cost model (``scale``) measures;
* *per-epoch validation Dice* for pruning: every one of these templates appends one row per validation to
  ``<ckpt_path>/accuracy_history.csv`` (tab-separated ``epoch``, ``metric``, ...), while their ``progress.yaml``
  only gets a row when the best score improves (what ``BundleAlgo.get_score`` reads at the end).

One :class:`TemplateAdapter` per template records those keys and limits; :data:`ADAPTERS` holds them, looked up
by template name with :func:`adapter_for`. Settings are in the template's own terms (ConfigParser ids such as
``learning_rate`` or ``training#learning_rate``), so the searched values drop into ``hyper_parameters.yaml`` and
``AutoRunner.set_training_params`` unchanged.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from monai.bundle import ConfigParser

from proxy_bundle.errors import InputError

__all__ = ["ADAPTERS", "TemplateAdapter", "adapter_for", "read_accuracy_history", "set_config_values"]

HISTORY_FILE = "accuracy_history.csv"


def read_accuracy_history(ckpt_dir: str | os.PathLike) -> list[tuple[int, float]]:
    """Per-validation ``(epoch, mean Dice)`` rows of ``<ckpt_dir>/accuracy_history.csv``, in file order.

    The templates write a header row at every (re)start and one row per validation; header rows and a row
    still being written (not yet numeric) are skipped. Epochs are the templates' own 0-based numbers.
    """
    path = Path(ckpt_dir) / HISTORY_FILE
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
    except FileNotFoundError:
        return []
    out: dict[int, float] = {}
    for row in rows:
        if len(row) < 2:
            continue
        try:
            out[int(float(row[0]))] = float(row[1])
        except ValueError:
            continue
    return sorted(out.items())


def _config_files(bundle_dir: Path) -> list[Path]:
    return sorted(p for p in (bundle_dir / "configs").iterdir() if p.suffix in (".yaml", ".json"))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def set_config_values(bundle_dir: str | os.PathLike, values: Mapping[str, Any]) -> None:
    """Write ``{config id: value}`` into an exported bundle's config files.

    Each id goes into the file that already defines its first segment (``network#init_filters`` into the file
    with ``network``), else into ``hyper_parameters.yaml``. MONAI's ``fill_template_config`` skips overrides
    whose template value is ``null`` (e.g. segresnet's ``num_epochs_per_validation``); writing them here makes
    the exported configs hold every setting, so ``AutoRunner`` retrains exactly what was searched.
    """
    bundle_dir = Path(bundle_dir)
    files = _config_files(bundle_dir)
    parsers = {}
    for f in files:
        p = ConfigParser(globals=False)
        p.read_config(str(f))
        parsers[f] = p
    default = bundle_dir / "configs" / "hyper_parameters.yaml"
    touched = set()
    for key, value in values.items():
        head = str(key).split("#")[0]
        target = next((f for f in files if head in (parsers[f].get() or {})), default)
        if target not in parsers:
            raise InputError("exported bundle has no configs/hyper_parameters.yaml", where=str(bundle_dir))
        parsers[target][str(key)] = _plain(value)
        touched.add(target)
    for f in touched:
        ConfigParser.export_config_file(parsers[f].get(), str(f), fmt="yaml", default_flow_style=None,
                                        sort_keys=False)


def merged_config(bundle_dir: str | os.PathLike) -> ConfigParser:
    """All of an exported bundle's configs in one parser (as the templates' ``train.py`` reads them)."""
    parser = ConfigParser(globals=False)
    parser.read_config([str(f) for f in _config_files(Path(bundle_dir))])
    return parser


@dataclass(frozen=True)
class TemplateAdapter:
    """How one MONAI Auto3DSeg template trains at proxy fidelity.

    Args:
        name: template folder name (``segresnet``).
        network: network family in :data:`proxy_bundle.networks.scaling.NETWORKS` (``segresnetds``), or ``None``
            when only ``width`` maps onto a template knob (DiNTS' searched topology fixes blocks and levels).
        network_key: config id of the network's constructor kwargs (``network``).
        size_keys: the kwargs a proxy network changes (all others stay the template's).
        datalist_key: config id of the datalist file (the proxy datalist replaces it).
        epochs_key: config id of the number of training epochs.
        validation_key: config id of the validation interval in epochs.
        ckpt_key: config id of the checkpoint folder (``progress.yaml``, ``accuracy_history.csv``, model).
        model_file: the checkpoint inference loads, relative to the checkpoint folder.
        defaults: settings every trial gets (below the user's overrides): what running offline needs.
        cpu_settings: settings added when the trial has no CUDA device (e.g. AMP off).
        cpu_patches: ``(script, old, new)`` text replacements in the *exported copy* when no CUDA device is
            present, for templates that hard-code ``torch.device("cuda:0")`` (swinunetr, dints); on a CUDA
            machine the copy is left as MONAI wrote it.
        space: default search space in the template's own config ids.
        env: environment variables a training needs (kept when the user set them).
        epoch_offset: added to ``accuracy_history.csv`` epochs to count epochs trained (segresnet numbers its
            epochs from 0, swinunetr and dints count epochs done).
    """

    name: str
    network: str | None
    network_key: str
    size_keys: tuple[str, ...]
    datalist_key: str = "data_list_file_path"
    epochs_key: str = "num_epochs"
    validation_key: str = "num_epochs_per_validation"
    ckpt_key: str = "ckpt_path"
    model_file: str = "model.pt"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    cpu_settings: Mapping[str, Any] = field(default_factory=dict)
    cpu_patches: tuple[tuple[str, str, str], ...] = ()
    space: Mapping[str, Any] = field(default_factory=dict)
    # mlflow >= 3.7 refuses the file store ('<ckpt_path>/mlruns') the templates log into unless allowed.
    env: Mapping[str, str] = field(default_factory=lambda: {"MLFLOW_ALLOW_FILE_STORE": "true"})
    epoch_offset: int = 0

    # ------------------------------------------------------------------ fidelity
    def fidelity_overrides(self, fidelity: Any) -> dict[str, Any]:
        """Config settings for a :class:`~proxy_bundle.hpo.runners.Fidelity` (datalist, epochs), network aside."""
        out: dict[str, Any] = {}
        if fidelity.datalist is not None:
            if not Path(str(fidelity.datalist)).is_file():
                raise InputError("proxy datalist not found", where=str(fidelity.datalist))
            out[self.datalist_key] = str(Path(str(fidelity.datalist)).resolve())
        if fidelity.epochs is not None:
            out[self.epochs_key] = int(fidelity.epochs)
        return out

    def check_fidelity(self, fidelity: Any) -> None:
        """Refuse a proxy network this template cannot build (raises :class:`InputError`), before any work."""
        if not fidelity.proxy_network:
            return
        if self.network is None:
            if fidelity.blocks != 1 or fidelity.levels is not None:
                raise InputError(f"template {self.name!r} scales only the network width (its searched topology "
                                 "fixes blocks and levels); use --blocks 1 and no --levels", where="--blocks/--levels")
            return
        from proxy_bundle.networks.scaling import supports_blocks

        if fidelity.blocks != 1 and not supports_blocks(self.network):
            raise InputError(f"template {self.name!r} ({self.network}) has no per-level block count; use --blocks 1",
                             where="--blocks")

    def network_overrides(self, bundle_dir: str | os.PathLike, fidelity: Any) -> dict[str, Any]:
        """The proxy network's size settings for an exported bundle (``{}`` at full network size).

        Reads the full network's kwargs from the exported configs (as ``fill_template_config`` sized them for
        this dataset) and scales them with ``ProxySpec(width, blocks, levels)``. Raises :class:`InputError` when
        the template cannot take the requested size (e.g. swinunetr levels).
        """
        if not fidelity.proxy_network:
            return {}
        self.check_fidelity(fidelity)
        parser = merged_config(bundle_dir)
        try:
            raw = parser[self.network_key]
        except KeyError:
            raise InputError(f"template {self.name!r} has no {self.network_key!r} section",
                             where=str(bundle_dir)) from None
        if self.network is None:
            mul = float(raw.get("channel_mul", 1.0)) * float(fidelity.width)
            return {f"{self.network_key}#channel_mul": mul}
        from proxy_bundle.networks.scaling import ProxySpec, scaled_kwargs

        base = {k: v for k, v in raw.items() if not str(k).startswith("_")}
        # References/expressions (in_channels: "@input_channels") are not sizes; keep them out of the scaler.
        sizes = {k: v for k, v in base.items() if not (isinstance(v, str) and v[:1] in "@$%")}
        scaled = scaled_kwargs(self.network, sizes, ProxySpec(fidelity.width, fidelity.blocks, fidelity.levels))
        return {f"{self.network_key}#{k}": _plain(scaled[k]) for k in self.size_keys if k in scaled}

    # ------------------------------------------------------------------ device
    def device_overrides(self, cuda: bool) -> dict[str, Any]:
        return {} if cuda else dict(self.cpu_settings)

    def patch_for_cpu(self, bundle_dir: str | os.PathLike) -> list[str]:
        """Apply :attr:`cpu_patches` to a copy of the template (its installed copy in a work dir or an exported
        bundle; never MONAI's original); returns the scripts changed."""
        changed = []
        for script, old, new in self.cpu_patches:
            path = Path(bundle_dir) / script
            if not path.is_file():
                continue
            text = path.read_text()
            if old in text:
                path.write_text(text.replace(old, new))
                changed.append(script)
        return changed

    # ------------------------------------------------------------------ results
    def ckpt_dir(self, bundle_dir: str | os.PathLike) -> Path:
        """The checkpoint folder the exported configs name (``ckpt_path`` resolved)."""
        return Path(str(merged_config(bundle_dir).get_parsed_content(self.ckpt_key)))

    def read_scores(self, ckpt_dir: str | os.PathLike) -> list[tuple[int, float]]:
        """Per-validation ``(epochs trained, Dice)`` for pruning, counted like ``proxyseg``'s (1 after the first)."""
        return [(epoch + self.epoch_offset, dice) for epoch, dice in read_accuracy_history(ckpt_dir)]


_LR_WD = {
    "learning_rate": {"type": "float", "low": 5.0e-5, "high": 2.0e-3, "log": True},
    "optimizer#weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True},
}

_CUDA0 = 'torch.device("cuda:0")'
_CUDA0_OR_CPU = 'torch.device("cuda:0" if torch.cuda.is_available() else "cpu")'
# swinunetr and dints size batches and epochs from the free memory of the visible GPUs (min() of an empty list
# without one); with no GPU they are sized as for the smallest GPU (batch 1).
_GPU_MEM = "    return available_mem_visible_gpus\n"
# "one GPU or rank 0" checks call dist.get_rank() (no process group) when there are zero GPUs.
_ONE_GPU = "torch.cuda.device_count() == 1 or dist.get_rank() == 0"
_AT_MOST_ONE_GPU = "torch.cuda.device_count() <= 1 or dist.get_rank() == 0"
_GPU_MEM_OR_NONE = "    return available_mem_visible_gpus or [0]\n"

ADAPTERS: dict[str, TemplateAdapter] = {
    "segresnet": TemplateAdapter(
        name="segresnet", network="segresnetds", network_key="network",
        size_keys=("init_filters", "blocks_down", "blocks_up", "dsdepth"), epoch_offset=1,
        cpu_settings={"amp": False, "channels_last": False},
        space=dict(_LR_WD),
    ),
    "segresnet2d": TemplateAdapter(
        name="segresnet2d", network="segresnetds", network_key="network",
        size_keys=("init_filters", "blocks_down", "blocks_up", "dsdepth"), epoch_offset=1,
        cpu_settings={"amp": False, "channels_last": False},
        space=dict(_LR_WD),
    ),
    "swinunetr": TemplateAdapter(
        name="swinunetr", network="swinunetr", network_key="network", size_keys=("feature_size", "depths"),
        model_file="best_metric_model.pt",
        # The pretrained weights come from a download and fit only feature_size 48.
        defaults={"use_pretrain": False},
        # amp stays on without CUDA: the template imports autocast only when amp is on, and torch turns CUDA
        # autocast and GradScaler into no-ops on a machine without CUDA.
        cpu_patches=(("scripts/train.py", _CUDA0, _CUDA0_OR_CPU), ("scripts/train.py", _ONE_GPU, _AT_MOST_ONE_GPU),
                     ("scripts/algo.py", _GPU_MEM, _GPU_MEM_OR_NONE)),
        space=dict(_LR_WD),
    ),
    "dints": TemplateAdapter(
        name="dints", network=None, network_key="training_network#dints_space", size_keys=("channel_mul",),
        epochs_key="training#num_epochs", validation_key="training#num_epochs_per_validation",
        model_file="best_metric_model.pt",
        # training#amp stays on without CUDA, as for swinunetr (autocast is imported only when amp is on).
        cpu_settings={
            "training_network#arch_ckpt": "$torch.load(@training_network#arch_ckpt_path, "
                                          "map_location=torch.device('cpu'), weights_only=False)",
            "training_network#dints_space#device": "$torch.device('cpu')",
        },
        cpu_patches=(("scripts/train.py", _CUDA0, _CUDA0_OR_CPU), ("scripts/train.py", _GPU_MEM, _GPU_MEM_OR_NONE),
                     ("scripts/train.py", _ONE_GPU, _AT_MOST_ONE_GPU),
                     ("scripts/algo.py", _GPU_MEM, _GPU_MEM_OR_NONE)),
        space={
            "training#learning_rate": {"type": "float", "low": 0.02, "high": 0.5, "log": True},
            "training#optimizer#weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True},
        },
    ),
}


def adapter_for(template: str) -> TemplateAdapter | None:
    """The adapter of a MONAI template by folder name, ``None`` for a template with its own ``proxy`` block."""
    return ADAPTERS.get(str(template))
