"""Dice of a trained template checkpoint on a list of cases (the validation fold, the external set).

The checkpoint written by the template's ``train.py`` (``model.pt``) records the network (name and constructor
kwargs), the preprocessing and the sliding-window settings it was trained with. Evaluation rebuilds both with
the template's own ``pipeline.py`` and scores exactly like the template's validation: argmax of a sliding-window
prediction in the preprocessed space, MONAI ``DiceMetric`` over the foreground classes (empty classes ignored),
averaged over classes. Preprocessed cases are cached in memory per preprocessing setting, so evaluating many
runs on the same cases loads and resamples each file once.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from proxy_bundle.errors import InputError


def load_pipeline(bundle_dir: str | os.PathLike) -> Any:
    """Import ``<bundle_dir>/scripts/pipeline.py`` by path (the template is not an importable package)."""
    path = Path(bundle_dir) / "scripts" / "pipeline.py"
    if not path.is_file():
        raise InputError("template pipeline not found (expected scripts/pipeline.py)", where=str(bundle_dir))
    name = f"proxy_study_pipeline_{abs(hash(str(path.resolve())))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def read_cases(list_file: str | os.PathLike, key: str, dataroot: str | os.PathLike,
               fold: int | None = None) -> list[dict[str, str]]:
    """``image``/``label`` absolute paths of ``list_file[key]`` (only ``fold`` when given)."""
    path = Path(list_file)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read case list ({err.__class__.__name__})", where=str(path)) from None
    items = data.get(key)
    if not isinstance(items, list):
        raise InputError(f"no {key!r} list", where=str(path))
    out = []
    for i, e in enumerate(items):
        if fold is not None and int(e.get("fold", -1)) != int(fold):
            continue
        if "label" not in e:
            raise InputError(f"{key} entry {i} has no label, so it cannot be scored", where=str(path))
        out.append({k: os.path.normpath(os.path.join(str(dataroot), str(e[k]))) for k in ("image", "label")})
    return out


class Evaluator:
    """Scores checkpoints on fixed case lists; one instance serves a whole study."""

    def __init__(self, device: str | None = None) -> None:
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._cache: dict[tuple[str, str], list[tuple[Any, Any]]] = {}
        # Trials may finish together in worker threads; scoring one checkpoint at a time keeps the cache simple
        # and the evaluation from competing with itself for the cores.
        self._lock = threading.Lock()

    def _cases(self, pl: Any, prep: Mapping[str, Any], name: str, cases: Sequence[Mapping[str, str]]) -> list:
        key = (pl.preprocessing_hash(prep), name)
        if key not in self._cache:
            from monai.transforms import Compose

            xform = Compose(pl.deterministic_transforms(prep, keys=["image", "label"]))
            self._cache[key] = [(d["image"], d["label"]) for d in (xform(dict(c)) for c in cases)]
        return self._cache[key]

    def dice(self, bundle_dir: str | os.PathLike, model_path: str | os.PathLike,
             sets: Mapping[str, Sequence[Mapping[str, str]]]) -> dict[str, float]:
        """Mean foreground Dice of ``model_path`` on each named case list (``{"val": [...], "ext": [...]}``)."""
        with self._lock:
            return self._dice(bundle_dir, model_path, sets)

    def _dice(self, bundle_dir: str | os.PathLike, model_path: str | os.PathLike,
              sets: Mapping[str, Sequence[Mapping[str, str]]]) -> dict[str, float]:
        import torch
        from monai.inferers import sliding_window_inference
        from monai.metrics import DiceMetric
        from monai.networks.utils import one_hot

        pl = load_pipeline(bundle_dir)
        ckpt = torch.load(str(model_path), map_location="cpu", weights_only=True)
        record = ckpt["network"]
        model = pl.build_network(record["name"], record["kwargs"])
        model.load_state_dict(ckpt["state_dict"])
        model.to(self.device).eval()
        n_classes = int(record["output_classes"])
        out: dict[str, float] = {}
        for name, cases in sets.items():
            metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
            with torch.no_grad():
                for image, label in self._cases(pl, record["preprocessing"], name, cases):
                    logits = sliding_window_inference(
                        image[None].to(self.device),
                        roi_size=[int(r) for r in record["roi_size"]],
                        sw_batch_size=int(record.get("sw_batch_size", 1)),
                        predictor=model,
                        overlap=float(record.get("sw_overlap", 0.25)),
                        mode="gaussian",
                    )
                    if isinstance(logits, (list, tuple)):  # deep-supervision heads: the first is full resolution
                        logits = logits[0]
                    pred = one_hot(torch.argmax(logits.float(), dim=1, keepdim=True), num_classes=n_classes)
                    metric(y_pred=pred, y=one_hot(label[None].long().to(self.device), num_classes=n_classes))
            per_class = metric.aggregate()
            per_class = per_class[~torch.isnan(per_class)]
            out[name] = float(per_class.mean()) if per_class.numel() else math.nan
        return out
