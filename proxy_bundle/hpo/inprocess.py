"""Trials trained inside a long-lived worker process: MONAI is imported once, the process trains trial after trial.

:class:`InProcessAlgoRunner` exports each trial's bundle exactly as :class:`~proxy_bundle.hpo.runners.AlgoRunner`
does, then calls the template's in-process entry ``scripts/train.py:train(config_files, overrides, on_epoch)``
instead of starting ``python train.py run ...``. A template without that entry is launched as a process. A Python
error in the training (bad setting, CUDA out of memory) fails the trial and the worker goes on; a crash of the
process itself (segfault, killed) is the worker supervisor's business (:mod:`proxy_bundle.hpo.workers`): the
trial's heartbeat stops and the search retries it.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

from proxy_bundle.hpo.runners import (PROGRESS_FILE, AlgoRunner, Fidelity, ReportFn, TrialFailed, TrialResult,
                                      _find_model, progress_timing, resumable_trial_dir)

__all__ = ["InProcessAlgoRunner"]

_MODULES: dict[str, Any] = {}


def _train_module(scripts: Path) -> Any | None:
    """The template's ``train.py`` as a module, loaded once per distinct source (trial bundles are copies)."""
    path = scripts / "train.py"
    try:
        source = path.read_bytes() + (scripts / "pipeline.py").read_bytes()
    except OSError:
        return None
    key = hashlib.sha1(source).hexdigest()
    if key not in _MODULES:
        name = f"proxy_bundle_trainer_{key[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _MODULES[key] = module
    module = _MODULES[key]
    return module if callable(getattr(module, "train", None)) else None


class InProcessAlgoRunner(AlgoRunner):
    """:class:`AlgoRunner` whose trials train in this process (see the module docstring). Same arguments."""

    def run(self, params: Mapping[str, Any], fidelity: Fidelity, trial_dir: str | os.PathLike,
            report: ReportFn) -> TrialResult:
        n_devices = int(self.device_setting.get("n_devices", 0) or 0)
        if n_devices > 1 or self.adapter is not None:
            # One trial on several GPUs needs torchrun's processes; MONAI's own templates have no in-process entry.
            return super().run(params, fidelity, trial_dir, report)
        trial_dir = resumable_trial_dir(trial_dir)
        algo = self.export(params, fidelity, trial_dir)
        out = Path(algo.get_output_path())
        module = _train_module(out / "scripts")
        if module is None:
            return super().run(params, fidelity, trial_dir, report)
        overrides = self.overrides(params, fidelity, trial_dir)
        configs = sorted(str(p.as_posix()) for p in (out / "configs").iterdir() if p.suffix in (".yaml", ".json"))
        ckpt = Path(overrides["ckpt_path"])
        reported: dict[int, float] = {}
        pruned = False
        start = time.monotonic()

        def on_epoch(epoch: int, entry: Mapping[str, Any] | None) -> bool:
            nonlocal pruned
            if entry is not None and int(entry["epoch"]) not in reported:
                reported[int(entry["epoch"])] = float(entry["avg_dice_score"])
                if report(int(entry["epoch"]), float(entry["avg_dice_score"])):
                    pruned = True
                    return True
            if self.timeout_s is not None and time.monotonic() - start > self.timeout_s:
                raise TrialFailed(f"training stopped after the {self.timeout_s:g} s trial time limit "
                                  f"(epoch {epoch}); log {trial_dir / 'train.log'}")
            return False

        handler = logging.FileHandler(trial_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        level = root.level
        root.setLevel(min(level, logging.INFO) if level else logging.INFO)
        cwd = os.getcwd()
        try:
            os.chdir(out)  # as BundleAlgo.train runs it
            # Epochs a resumed training already validated are this trial's history too.
            for entry in _read_history(ckpt):
                on_epoch(int(entry["epoch"]), entry)
            history = module.train(configs, overrides, on_epoch=on_epoch) if not pruned else _read_history(ckpt)
        except TrialFailed:
            raise
        except Exception as err:
            detail = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-6:])
            with open(trial_dir / "train.log", "a") as fh:
                fh.write(detail)
            raise TrialFailed(f"training raised {type(err).__name__}: {err}; log {trial_dir / 'train.log'}\n"
                              f"{detail}") from None
        finally:
            os.chdir(cwd)
            root.removeHandler(handler)
            root.setLevel(level)
            handler.close()
            _release_memory()
        wall = time.monotonic() - start
        scores = sorted(reported.items())
        best = None
        if history:
            best = float(history[-1]["best_avg_dice_score"])
        if best is None and not pruned:
            raise TrialFailed(f"training finished without any validation in {ckpt / PROGRESS_FILE}")
        result = TrialResult(score=best, scores=scores, pruned=pruned, wall_s=wall,
                             output_dir=str(out), model_path=_find_model(ckpt), timing=progress_timing(history))
        self.last_algo = algo
        return result


def _read_history(ckpt: Path) -> list[dict]:
    from proxy_bundle.hpo.runners import read_progress

    return [e for e in read_progress(ckpt / PROGRESS_FILE) if isinstance(e, dict) and "epoch" in e]


def _release_memory() -> None:
    """Free what the finished trial held (DataLoader workers, CUDA cache) before the next one starts."""
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
