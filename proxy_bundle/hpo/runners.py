"""Trial runners: train one configuration at one fidelity and report its per-epoch validation Dice.

The engine only needs :class:`TrialRunner` (``run(params, fidelity, trial_dir, report) -> TrialResult``). A runner
calls ``report(epoch, dice)`` after each validation; ``True`` back means the trial was pruned and the runner stops
training at once. :func:`launch_and_poll` is the shared building block: it starts a training command in its own
process group, follows ``progress.yaml`` while it runs and kills the whole group when the trial is pruned or the
search is interrupted.

:class:`AlgoRunner` drives an Auto3DSeg ``BundleAlgo`` (the ``proxyseg`` template or any other): it exports one
bundle per trial with the trial's overrides (as MONAI's ``OptunaGen``/``NNIGen`` do) and launches
``scripts/train.py`` the way ``BundleAlgo.train`` does (``torchrun`` when several GPUs are visible).
"""

from __future__ import annotations

import copy
import ctypes
import math
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import yaml

from proxy_bundle.atomic import ensure_dir, write_yaml
from proxy_bundle.errors import InputError
from proxy_bundle.hpo.devices import algo_device_setting

__all__ = [
    "AlgoRunner",
    "CommandRunner",
    "Fidelity",
    "ReportFn",
    "TrialFailed",
    "TrialResult",
    "TrialRunner",
    "fire_value",
    "fresh_trial_dir",
    "launch_and_poll",
    "progress_timing",
    "read_progress",
    "resumable_trial_dir",
]

ReportFn = Callable[[int, float], bool]
PROGRESS_FILE = "progress.yaml"


@dataclass(frozen=True)
class Fidelity:
    """How cheaply a trial trains.

    ``datalist``: proxy datalist (path) or ``None`` for the full training data; ``width``/``blocks``/``levels``:
    proxy-network scaling (1, 1, None = the full network); ``epochs``: training epochs (``None`` keeps the
    template's); ``val_every``: validate every this many epochs and after the last (``None`` keeps the template's).
    ``name`` labels it in results (``proxy-both``, ``full``, ...). Validation always uses the full run's
    validation cases, so scores of all fidelities compare.
    """

    name: str = "full"
    datalist: str | None = None
    width: float = 1.0
    blocks: float = 1.0
    levels: int | None = None
    epochs: int | None = None
    val_every: int | None = None

    @property
    def proxy_data(self) -> bool:
        return self.datalist is not None

    @property
    def proxy_network(self) -> bool:
        return not (self.width == 1 and self.blocks == 1 and self.levels is None)

    @property
    def is_full(self) -> bool:
        return not (self.proxy_data or self.proxy_network)

    def overrides(self) -> dict[str, Any]:
        """The template's ``proxy#...``/``num_epochs`` settings for this fidelity."""
        out: dict[str, Any] = {
            "proxy#enabled": not self.is_full,
            "proxy#width": float(self.width),
            "proxy#blocks": float(self.blocks),
            "proxy#levels": self.levels,
            "proxy#datalist": self.datalist,
        }
        if self.epochs is not None:
            out["num_epochs"] = int(self.epochs)
        if self.val_every is not None:
            out["num_epochs_per_validation"] = int(self.val_every)
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["val_every"] is None:
            del out["val_every"]  # searches recorded before validation schedules keep their fingerprint
        return out


@dataclass
class TrialResult:
    """What one training run produced. ``score`` is the best validation Dice (``None`` when nothing validated)."""

    score: float | None
    scores: list[tuple[int, float]] = field(default_factory=list)
    pruned: bool = False
    wall_s: float = 0.0
    output_dir: str | None = None
    model_path: str | None = None
    timing: dict[str, Any] = field(default_factory=dict)


class TrialFailed(RuntimeError):
    """The training command failed (non-zero exit or no validation at all); the message carries the log tail."""


class TrialRunner(Protocol):
    """Trains one configuration; see the module docstring."""

    def run(self, params: Mapping[str, Any], fidelity: Fidelity, trial_dir: str | os.PathLike,
            report: ReportFn) -> TrialResult: ...


def read_progress(path: str | os.PathLike) -> list[dict]:
    """The validation history a template writes (``[{epoch, avg_dice_score, best_avg_dice_score, ...}]``)."""
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        return []
    except yaml.YAMLError:
        # The template replaces the file atomically, so this is a foreign writer; treat as not yet written.
        return []
    return data if isinstance(data, list) else []


def _die_with_parent() -> None:
    # Linux: the training process gets SIGKILL when the search process dies (even by SIGKILL), so a killed
    # search never leaves an orphan writing into a trial directory that the resumed search reuses.
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _kill_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


_ERROR_LINE = re.compile(r"^(error:|[\w.]*(Error|Exception|Interrupt)\b|Killed)")


def last_error_line(path: str | os.PathLike) -> str | None:
    """The cause of a failed trial as one line: the last line of its log that reads as an error
    (``error: <where>: <problem>`` from the templates, or the exception line of a traceback), else the log's
    last non-empty line; ``None`` when the log is missing or empty."""
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line[:500]
    return lines[-1][:500] if lines else None


def _cause(path: Path) -> str:
    line = last_error_line(path)
    return f": {line}" if line else ""


def _tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-n:])


def fresh_trial_dir(trial_dir: str | os.PathLike) -> Path:
    """An empty folder for one trial: a retried trial starts clean, because a stale progress.yaml would report
    epochs it has not trained."""
    trial_dir = Path(trial_dir)
    if trial_dir.exists():
        shutil.rmtree(trial_dir)
    ensure_dir(trial_dir)
    return trial_dir


def resumable_trial_dir(trial_dir: str | os.PathLike, ckpt: str = "model") -> Path:
    """The folder for a trial that may resume: everything but its checkpoint folder (``ckpt``, with ``last.pt``)
    is removed, so the re-exported bundle is fresh and the training continues from its last epoch (the template
    checks that ``last.pt`` belongs to the same configuration). Without a ``last.pt`` it is :func:`fresh_trial_dir`."""
    trial_dir = Path(trial_dir)
    if not (trial_dir / ckpt / "last.pt").is_file():
        return fresh_trial_dir(trial_dir)
    for child in trial_dir.iterdir():
        if child.name == ckpt:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return trial_dir


def launch_and_poll(cmd: Sequence[str], progress_file: str | os.PathLike, report: ReportFn, *,
                    log_file: str | os.PathLike, env: Mapping[str, str] | None = None,
                    cwd: str | os.PathLike | None = None, poll_s: float = 0.5,
                    on_poll: Callable[[], None] | None = None, timeout_s: float | None = None,
                    read_scores: Callable[[], Sequence[tuple[int, float]]] | None = None) -> TrialResult:
    """Run ``cmd`` to completion, reporting each new ``progress.yaml`` entry; kill it when ``report`` says prune.

    ``on_poll`` runs every ``poll_s`` seconds. ``read_scores`` returns the per-validation ``(epoch, Dice)``
    rows when a template keeps them elsewhere than ``progress.yaml`` (MONAI's own templates: see
    :mod:`proxy_bundle.templates.adapters`); ``progress.yaml`` still gives the final best score. Raises :class:`TrialFailed` when the command exits non-zero
    without having been pruned, or runs longer than ``timeout_s`` (a hung training must not stall the search).
    """
    progress = Path(progress_file)
    log_path = Path(log_file)
    ensure_dir(log_path.parent)
    reported: dict[int, float] = {}
    pruned = timed_out = False
    start = time.monotonic()

    def rows() -> list[tuple[int, float]]:
        if read_scores is not None:
            return list(read_scores())
        out = []
        for entry in read_progress(progress):
            try:
                out.append((int(entry["epoch"]), float(entry["avg_dice_score"])))
            except (KeyError, TypeError, ValueError):
                continue
        return out

    def drain() -> bool:
        for epoch, score in rows():
            if epoch in reported:
                continue
            reported[epoch] = score
            if report(epoch, score):
                return True
        return False

    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=dict(env or os.environ),
                                cwd=cwd, preexec_fn=_die_with_parent if os.name == "posix" else None)
        try:
            last_mtime = None
            while proc.poll() is None:
                time.sleep(poll_s)
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    timed_out = True
                    break
                if on_poll is not None:
                    on_poll()
                try:
                    mtime = progress.stat().st_mtime_ns if read_scores is None else len(rows())
                except FileNotFoundError:
                    continue
                if mtime != last_mtime:
                    last_mtime = mtime
                    if drain():
                        pruned = True
                        break
        finally:
            # Pruned, interrupted (KeyboardInterrupt/SIGTERM) or an engine error: never leave training behind.
            _kill_group(proc)
    if timed_out:
        raise TrialFailed(f"training killed after the {timeout_s:g} s trial time limit (log {log_path})\n"
                          f"{_tail(log_path)}")
    if not pruned:
        pruned = drain()
    wall = time.monotonic() - start
    history = read_progress(progress)
    scores = sorted(reported.items())
    if not pruned and proc.returncode != 0:
        raise TrialFailed(f"training exited with code {proc.returncode}{_cause(log_path)} (log {log_path})\n"
                          f"{_tail(log_path)}")
    best = None
    if history:
        try:
            best = float(history[-1]["best_avg_dice_score"])
        except (KeyError, TypeError, ValueError):
            best = max(s for _, s in scores) if scores else None
    elif scores:
        best = max(s for _, s in scores)
    if best is None and not pruned:
        raise TrialFailed(f"training finished without any validation in {progress}{_cause(log_path)} "
                          f"(log {log_path})\n{_tail(log_path)}")
    if best is not None and not math.isfinite(best):
        best = None
    return TrialResult(score=best, scores=scores, pruned=pruned, wall_s=wall, timing=progress_timing(history))


def progress_timing(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Training and validation seconds (``train_s``, ``val_s``) and the epoch a resumed run started from, as the
    template's last ``progress.yaml`` entry records them (empty for a trainer that does not)."""
    if not history:
        return {}
    last = history[-1]
    return {k: last[k] for k in ("train_s", "val_s", "resumed_from_epoch") if isinstance(last, Mapping) and k in last}


def fire_value(value: Any) -> str:
    """Format an override so that python-fire parses it back to the same Python value."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(fire_value(v) for v in value) + "]"
    if isinstance(value, str):
        # Quoted literal: fire would otherwise turn "1e-3" or "None" strings into numbers / None.
        return repr(value)
    return repr(value)


def _cuda_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _find_model(ckpt_dir: Path) -> str | None:
    for pattern in ("model.pt", "best_metric_model.pt", "*.pt", "*.pth", "*.ts"):
        hits = sorted(ckpt_dir.rglob(pattern))
        if hits:
            return str(hits[0])
    return None


class AlgoRunner:
    """Train trials with an Auto3DSeg ``BundleAlgo``.

    Args:
        algo: a configured ``BundleAlgo`` (data stats and data source set), e.g. from ``BundleGen(...).algos``;
            see :meth:`from_templates`.
        fold: the cross-validation fold every trial trains on (the same for all trials so scores compare).
        base_overrides: settings applied to every trial (e.g. ``num_epochs_per_validation``, ``cache_dir``).
        device_setting: as ``BundleAlgo.train``'s (``CUDA_VISIBLE_DEVICES``, ``n_devices``, ...).
        poll_s: how often ``progress.yaml`` is checked.
        timeout_s: wall-clock limit of one trial (``None``: none); a trial over it fails.
    """

    def __init__(self, algo: Any, fold: int = 0, base_overrides: Mapping[str, Any] | None = None,
                 device_setting: Mapping[str, Any] | None = None, poll_s: float = 0.5,
                 timeout_s: float | None = None) -> None:
        self.algo = algo
        self.timeout_s = timeout_s
        self.fold = int(fold)
        self.base_overrides = dict(base_overrides or {})
        self.device_setting = algo_device_setting(getattr(algo, "device_setting", {}) or {}, os.environ,
                                                  _cuda_count())
        if device_setting:
            self.device_setting.update(device_setting)
            if "CUDA_VISIBLE_DEVICES" in device_setting and "n_devices" not in device_setting:
                visible = str(device_setting["CUDA_VISIBLE_DEVICES"]).strip()
                self.device_setting["n_devices"] = len(visible.split(",")) if visible else 0
        self.poll_s = poll_s
        # The algo exported for the latest trial (its get_score()/get_inferer() work once training finished).
        self.last_algo: Any = None

    @classmethod
    def from_templates(cls, templates: str | os.PathLike, algo_name: str, work_dir: str | os.PathLike,
                       data_stats_file: str | os.PathLike, data_src_cfg: str | os.PathLike,
                       **kwargs: Any) -> "AlgoRunner":
        """Build the algo with MONAI's ``BundleGen`` from a templates folder (copied to ``work_dir``)."""
        from monai.apps.auto3dseg import BundleGen

        templates = Path(templates)
        if not (templates / algo_name / "scripts" / "algo.py").is_file():
            raise InputError(f"no algorithm template {algo_name!r} (expected {algo_name}/scripts/algo.py)",
                             where=str(templates))
        gen = BundleGen(algo_path=str(work_dir), algos=[algo_name], templates_path_or_url=str(templates),
                        data_stats_filename=str(data_stats_file), data_src_cfg_name=str(data_src_cfg))
        algo = copy.deepcopy(gen.algos[0])
        algo.set_data_stats(str(data_stats_file))
        algo.set_data_source(str(data_src_cfg))
        return cls(algo, **kwargs)

    @property
    def name(self) -> str:
        return str(getattr(self.algo, "name", "") or type(self.algo).__name__)

    def _has_proxy_block(self) -> bool | None:
        """Whether the template's hyper_parameters.yaml has a ``proxy`` section (None: cannot tell)."""
        cfg = Path(str(getattr(self.algo, "template_path", "") or "")) / self.name / "configs" / "hyper_parameters.yaml"
        try:
            data = yaml.safe_load(cfg.read_text())
        except (OSError, yaml.YAMLError):
            return None
        return isinstance(data, dict) and isinstance(data.get("proxy"), dict)

    @property
    def adapter(self) -> Any:
        """The :class:`~proxy_bundle.templates.adapters.TemplateAdapter` of a MONAI template (no ``proxy`` block)."""
        if self._has_proxy_block() is not False:
            return None
        from proxy_bundle.templates.adapters import adapter_for

        return adapter_for(self.name)

    def _cuda(self) -> bool:
        import torch

        visible = self.device_setting.get("CUDA_VISIBLE_DEVICES")
        return torch.cuda.is_available() and str(visible).strip() not in ("", "-1")

    def overrides(self, params: Mapping[str, Any], fidelity: Fidelity, trial_dir: Path) -> dict[str, Any]:
        """Everything a trial sets: base settings < fidelity < searched params < this trial's own paths."""
        adapter = self.adapter
        out = {**adapter.defaults, **adapter.device_overrides(self._cuda())} if adapter is not None else {}
        out.update(self.base_overrides)
        fid = fidelity.overrides()
        if adapter is not None:
            adapter.check_fidelity(fidelity)
            fid = adapter.fidelity_overrides(fidelity)
        elif self._has_proxy_block() is False:
            # A template without proxy support and without an adapter can still be searched at full fidelity.
            if not fidelity.is_full:
                raise InputError(f"template {self.name!r} has no 'proxy' block, so it cannot train at proxy "
                                 f"fidelity {fidelity.name!r}; use proxy=none", where=str(self.algo.template_path))
            fid = {k: v for k, v in fid.items() if not k.startswith("proxy#")}
        out.update(fid)
        out.update(params)
        if adapter is None:
            # MONAI's templates keep their own checkpoint folder (their log files are placed relative to it).
            out["ckpt_path"] = str(trial_dir / "model")
        out["fold"] = self.fold
        return out

    def export(self, params: Mapping[str, Any], fidelity: Fidelity, trial_dir: str | os.PathLike) -> Any:
        """Write the trial's bundle to ``trial_dir/<algo name>`` and return the exported algo."""
        return self._export(params, fidelity, Path(trial_dir))[0]

    def _export(self, params: Mapping[str, Any], fidelity: Fidelity, trial_dir: Path) -> tuple[Any, dict]:
        overrides = self.overrides(params, fidelity, trial_dir)
        algo = copy.deepcopy(self.algo)
        algo.device_setting = dict(self.device_setting)
        algo.export_to_disk(str(trial_dir), self.name, **overrides)
        adapter = self.adapter
        if adapter is not None:
            # MONAI's templates: the proxy network's sizes follow from the network fill_template_config sized;
            # every setting is written into the exported configs so the bundle alone reproduces the trial.
            bundle = Path(algo.get_output_path())
            overrides.update(adapter.network_overrides(bundle, fidelity))
            from proxy_bundle.templates.adapters import set_config_values

            set_config_values(bundle, overrides)
            if not self._cuda():
                adapter.patch_for_cpu(bundle)
            overrides["ckpt_path"] = str(adapter.ckpt_dir(bundle))
        write_yaml(trial_dir / "overrides.yaml", overrides)
        return algo, overrides

    def default_epochs(self, scratch_dir: str | os.PathLike) -> int | None:
        """The number of training epochs the template sets for this dataset (e.g. proxyseg's from the number of
        cases), read from a default-configuration export into ``scratch_dir`` (removed after); ``None`` when the
        exported configs do not hold an integer there."""
        from proxy_bundle.templates.adapters import merged_config

        adapter = self.adapter
        key = adapter.epochs_key if adapter is not None else "num_epochs"
        scratch = Path(scratch_dir)
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            algo = self.export({}, Fidelity(), scratch)
            value = merged_config(algo.get_output_path()).get(key)
        except (KeyError, OSError, ValueError):
            return None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    def command(self, algo: Any, overrides: Mapping[str, Any]) -> list[str]:
        """The training command, as ``BundleAlgo.train`` builds it (list form: paths with spaces survive)."""
        out = Path(algo.get_output_path())
        config_dir = out / "configs"
        configs = sorted(str(p.as_posix()) for p in config_dir.iterdir() if p.suffix in (".yaml", ".json"))
        args = [str(out / "scripts" / "train.py"), "run", f"--config_file='{','.join(configs)}'"]
        # The searched values also go on the command line (as OptunaGen/NNIGen train(params) do), so they win
        # even with a template whose fill_template_config ignores unknown overrides.
        args += [f"--{k}={fire_value(v)}" for k, v in overrides.items()]
        n_devices = int(self.device_setting.get("n_devices", 0) or 0)
        if int(self.device_setting.get("NUM_NODES", 1) or 1) > 1:
            raise InputError("multi-node training is not supported by the search runner; use one node per worker",
                             where="device_setting.NUM_NODES")
        if n_devices > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={n_devices}",
                    *args]
        prefix = str(self.device_setting.get("CMD_PREFIX") or "").split()
        return [*(prefix or [sys.executable]), *args]

    def run(self, params: Mapping[str, Any], fidelity: Fidelity, trial_dir: str | os.PathLike,
            report: ReportFn) -> TrialResult:
        trial_dir = resumable_trial_dir(trial_dir)
        algo, overrides = self._export(params, fidelity, trial_dir)
        env = dict(os.environ)
        visible = self.device_setting.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(visible)
        ckpt = Path(overrides["ckpt_path"])
        adapter = self.adapter
        if adapter is not None:
            for key, value in adapter.env.items():
                env.setdefault(key, value)
        result = launch_and_poll(self.command(algo, overrides), ckpt / PROGRESS_FILE, report,
                                 log_file=trial_dir / "train.log", env=env, cwd=algo.get_output_path(),
                                 poll_s=self.poll_s, timeout_s=self.timeout_s,
                                 read_scores=(lambda: adapter.read_scores(ckpt)) if adapter is not None else None)
        result.output_dir = str(algo.get_output_path())
        result.model_path = _find_model(ckpt)
        self.last_algo = algo
        return result


class CommandRunner:
    """Train trials with any command that writes ``progress.yaml`` like the template's ``train.py``.

    The command gets every override as ``--key=value`` (python-fire syntax), including ``ckpt_path`` (the
    directory where it must write ``progress.yaml``); e.g. ``[sys.executable, "my_train.py", "run"]``.
    """

    def __init__(self, command: Sequence[str], base_overrides: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None, poll_s: float = 0.5, timeout_s: float | None = None) -> None:
        if not command:
            raise InputError("empty training command", where="CommandRunner")
        self.command = [str(c) for c in command]
        self.base_overrides = dict(base_overrides or {})
        self.env = dict(env) if env is not None else None
        self.poll_s = poll_s
        self.timeout_s = timeout_s

    def run(self, params: Mapping[str, Any], fidelity: Fidelity, trial_dir: str | os.PathLike,
            report: ReportFn) -> TrialResult:
        trial_dir = fresh_trial_dir(trial_dir)
        overrides = {**self.base_overrides, **fidelity.overrides(), **params, "ckpt_path": str(trial_dir / "model")}
        write_yaml(trial_dir / "overrides.yaml", overrides)
        cmd = [*self.command, *(f"--{k}={fire_value(v)}" for k, v in overrides.items())]
        result = launch_and_poll(cmd, trial_dir / "model" / PROGRESS_FILE, report, log_file=trial_dir / "train.log",
                                 env=self.env, poll_s=self.poll_s, timeout_s=self.timeout_s)
        result.output_dir = str(trial_dir)
        result.model_path = _find_model(trial_dir / "model")
        return result
