"""``python -m proxy_bundle hpo``: two-phase proxy hyper-parameter search with an Auto3DSeg algorithm template.

Steps: read the data source (``input.yaml`` as for ``AutoRunner``, or a dataset folder), run the data analysis
when ``W/datastats.yaml`` is missing, build (or reuse) the proxy datalist, then search with
:class:`~proxy_bundle.hpo.engine.TwoPhaseSearch` and write ``W/hpo/<study>/results.json`` etc.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from proxy_bundle.atomic import ensure_dir, write_json, write_yaml
from proxy_bundle.defaults import DATA_FRACTION, PROXY_BLOCKS, PROXY_MODE, PROXY_WIDTH, TOP_K
from proxy_bundle.errors import InputError
from proxy_bundle.hpo.fidelities import build_fidelities
from proxy_bundle.options import PROXY_MODES, ProxyMode, SelectionMode, Similarity, Strategy

__all__ = ["build_fidelities", "ensure_analysis", "hpo", "load_input", "proxy_datalist", "templates_dir"]

log = logging.getLogger("proxy_bundle.hpo")


# ---------------------------------------------------------------------------------------------- data source
def _existing(value: str, base: Path) -> str:
    """A path as given if it exists from the current directory, else relative to the input file's folder."""
    p = Path(os.path.expanduser(str(value)))
    if p.is_absolute() or p.exists():
        return str(p.resolve())
    return str((base / p).resolve())


def load_input(input: str | os.PathLike | Mapping | None, work_dir: str | os.PathLike) -> dict:
    """The data source config (``dataroot``, ``datalist``, ``modality``, ...) with absolute paths.

    ``input``: an ``input.yaml``/JSON file, a dict, a dataset folder (MSD layout with ``datalist.json``), or
    ``None`` to reuse ``W/input.yaml`` from an earlier run (its ``source_datalist``, the user's file, is read
    again). The data themselves are checked by :func:`proxy_bundle.inputs.prepare_source`.
    """
    from proxy_bundle.inputs import FINGERPRINT_KEY

    work = Path(work_dir)
    where = "--input"
    if input is None:
        if not (work / "input.yaml").is_file():
            raise InputError("no --input given and no input.yaml in the work dir", where=str(work))
        input = work / "input.yaml"
    if isinstance(input, Mapping):
        cfg, base = dict(input), Path.cwd()
    else:
        path = Path(os.path.expanduser(str(input)))
        where = str(path)
        if path.is_dir():
            cfg, base = _from_dataset_dir(path), path
        elif path.is_file():
            try:
                cfg = yaml.safe_load(path.read_text())
            except yaml.YAMLError as err:
                raise InputError(f"not valid YAML/JSON ({str(err).splitlines()[0]})", where=where) from None
            if not isinstance(cfg, dict):
                raise InputError("must be a mapping with dataroot, datalist and modality", where=where)
            base = path.parent
        else:
            raise InputError("input file or dataset folder not found", where=where)
    if cfg.get("source_datalist"):  # written by an earlier run: the fold-form copy is derived again
        cfg["datalist"] = cfg.pop("source_datalist")
    cfg.pop(FINGERPRINT_KEY, None)
    missing = [k for k in ("dataroot", "datalist", "modality") if not cfg.get(k)]
    if missing:
        raise InputError(f"missing key(s) {missing} (need dataroot, datalist, modality)", where=where)
    cfg["dataroot"] = _existing(cfg["dataroot"], base)
    cfg["datalist"] = _existing(cfg["datalist"], base)
    if not Path(cfg["datalist"]).is_file():
        raise InputError("datalist file not found", where=cfg["datalist"])
    return cfg


def _from_dataset_dir(path: Path) -> dict:
    datalist = path / "datalist.json"
    if not datalist.is_file():
        raise InputError("dataset folder has no datalist.json (give an input.yaml instead)", where=str(path))
    modality = "CT"
    ds = path / "dataset.json"
    if ds.is_file():
        try:
            meta = json.loads(ds.read_text())
            modality = str((meta.get("modality") or {}).get("0", modality))
        except (OSError, ValueError, AttributeError):
            raise InputError("dataset.json is not valid JSON", where=str(ds)) from None
    return {"name": path.name, "dataroot": str(path), "datalist": str(datalist), "modality": modality}


# ---------------------------------------------------------------------------------------------- analysis
def _call_with_accepted(fn: Any, **kwargs: Any) -> Any:
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def ensure_analysis(input_file: Path, cfg: Mapping, work_dir: Path, *, fraction: float, fold: int, seed: int,
                    metric: str, mode: str, strategy: str, progress: bool = True,
                    fingerprint: str | None = None, select: bool = True) -> Path:
    """``W/datastats.yaml``, made by the ``analyze`` command (DataAnalyzer + proxy selection, the latter only when
    ``select``: a search on no proxy data skips it) unless it exists and was made from the same input
    (``fingerprint``, see :mod:`proxy_bundle.inputs`)."""
    from proxy_bundle.inputs import datastats_fingerprint

    stats = work_dir / "datastats.yaml"
    if stats.is_file() and (fingerprint is None or datastats_fingerprint(stats) == fingerprint):
        return stats
    if stats.is_file():
        print(f"hpo: {stats} was made from other input data: analysing again")
    from proxy_bundle.cli import COMMANDS, load_command

    analyze = None
    if "analyze" in COMMANDS:
        try:
            analyze = load_command("analyze")
        except ImportError:
            analyze = None
    if analyze is not None:
        if not stats.is_file():
            print(f"hpo: {stats} missing: running the data analysis (analyze)")
        _call_with_accepted(analyze, input=str(input_file), work_dir=str(work_dir), data_fraction=fraction,
                            fold=fold, seed=seed, similarity=metric, mode=mode, strategy=strategy,
                            progress=progress, reanalyze=stats.is_file(), select=select)
    else:
        from monai.apps.auto3dseg import DataAnalyzer

        print(f"hpo: {stats} missing: running MONAI's DataAnalyzer")
        DataAnalyzer(cfg["datalist"], cfg["dataroot"], output_path=str(stats), device="cpu",
                     worker=0).get_all_case_stats()
    if not stats.is_file():
        raise InputError("the data analysis did not produce datastats.yaml", where=str(work_dir))
    return stats


def proxy_datalist(cfg: Mapping, work_dir: Path, datastats: Path, *, fraction: float, fold: int, seed: int,
                   metric: str, mode: str, strategy: str, fingerprint: str | None = None) -> str:
    """The proxy datalist: the analysis' own (``proxy_data`` in datastats) when it has this fraction, else a
    selection made now (and kept in ``W/hpo/proxy_data`` for later runs)."""
    try:
        section = (yaml.safe_load(datastats.read_text()) or {}).get("proxy_data") or {}
    except (OSError, yaml.YAMLError):
        section = {}
    if isinstance(section, dict) and section.get("datalist"):
        path = Path(str(section["datalist"]))
        if not path.is_absolute():
            path = datastats.parent / path
        wanted = {"fraction": fraction, "metric": metric, "mode": mode, "strategy": strategy, "fold": fold}
        same = all(section.get(k) in (None, v) for k, v in wanted.items())
        if path.is_file() and same:
            return str(path.resolve())
    # Keyed to the input: a selection made from other data is never picked up.
    key = f"_{fingerprint[:12]}" if fingerprint else ""
    name = f"proxy_{metric}_{mode}_{strategy}_f{fraction:g}_fold{fold}{key}.json"
    out = ensure_dir(work_dir / "hpo" / "proxy_data") / name
    if out.is_file():
        return str(out.resolve())
    from proxy_bundle.selection.subset import run_selection, write_selection

    print(f"hpo: selecting a {fraction:g} proxy subset ({metric}, {mode}, {strategy})")
    selection = run_selection(cfg["datalist"], cfg["dataroot"], fraction=fraction, metric=metric, mode=mode,
                              strategy=strategy, seed=seed, fold=fold, modality=cfg.get("modality"), progress=False,
                              gate_input=False)
    write_selection(selection, out)
    return str(out.resolve())


# ---------------------------------------------------------------------------------------------- templates
def templates_dir(templates: str | os.PathLike | None, work_dir: Path, algo: str) -> Path:
    """Templates folder to use: ``templates``, else ``W/algorithm_templates``, else the shipped ones."""
    if templates is not None:
        path = Path(templates)
    elif (work_dir / "algorithm_templates" / algo / "scripts" / "algo.py").is_file():
        path = work_dir / "algorithm_templates"
    else:
        from proxy_bundle.templates.resources import templates_dir as shipped

        path = shipped()
    if not (path / algo / "scripts" / "algo.py").is_file():
        raise InputError(f"no algorithm template {algo!r} here (expected {algo}/scripts/algo.py); "
                         "pass --templates", where=str(path))
    return path.resolve()


def _install_templates(src: Path, work_dir: Path, algo: str) -> Path:
    """Copy the template into ``W/algorithm_templates`` once (atomic rename: concurrent workers never see half)."""
    dest_root = ensure_dir(work_dir / "algorithm_templates")
    dest = dest_root / algo
    if src.resolve() == dest_root.resolve() or dest.is_dir():
        return dest_root
    tmp = Path(tempfile.mkdtemp(prefix=f".{algo}.", dir=dest_root))
    shutil.copytree(src / algo, tmp / algo)
    try:
        os.rename(tmp / algo, dest)
    except OSError:
        if not dest.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest_root


# ---------------------------------------------------------------------------------------------- fidelities
def _positive(value: Any, name: str, *, integer: bool = False, upper: float | None = None,
              allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
    if ok and integer:
        ok = int(value) == value
    if ok and upper is not None:
        ok = value <= upper
    if not ok:
        rng = f"in (0, {upper}]" if upper is not None else "> 0"
        raise InputError(f"must be {'an integer' if integer else 'a number'} {rng}, got {value!r}", where=f"--{name}")
    return int(value) if integer else float(value)


# ---------------------------------------------------------------------------------------------- command
def hpo(input: str | None = None, work_dir: str = "work", n_trials: int = 8, proxy: ProxyMode = PROXY_MODE,
        data_fraction: float = DATA_FRACTION, width: float = PROXY_WIDTH, blocks: float = PROXY_BLOCKS,
        levels: int | None = None, top_k: int = TOP_K, storage: str | None = None, pruner: str = "none", search_space: str | None = None,
        seed: int = 0, epochs: int | None = None, proxy_epochs: int | None = None, study_name: str | None = None,
        sampler: str = "tpe", n_startup_trials: int | None = None, algo: str = "proxyseg",
        templates: str | None = None, fold: int = 0, overrides: Any = None, num_workers: int | str = "auto",
        similarity: Similarity = "mi", mode: SelectionMode = "roi", strategy: Strategy = "representative",
        baseline: str | None = None,
        grace_s: float = 60.0, trial_timeout: float | None = None, progress: bool = True, devices: str = "auto",
        trials_per_device: int | str = "auto", timeout: float | None = None, val_every: int | str | None = "auto",
        probe_s: float = 8.0, per_trial_process: bool = False, default_trial: bool = True) -> None:
    """Two-phase proxy hyper-parameter search: trials at proxy fidelity, then the top-k retrained at full fidelity.

    Re-running the same command resumes an interrupted search; several workers given the same --storage
    (e.g. postgresql://...) and work dir (shared file system) share one search.

    Args:
        input: data source: input.yaml (dataroot, datalist, modality) as for Auto3DSeg's AutoRunner, or a dataset
            folder with datalist.json (+ dataset.json); default: W/input.yaml of an earlier run.
        work_dir: work dir W (datastats.yaml, algorithm_templates, hpo/ with the results).
        n_trials: phase-1 trials.
        proxy: none (full-fidelity baseline, no phase 2) | data (proxy data) | network (proxy network) | both |
            short (full data and network, --proxy_epochs epochs).
        data_fraction: proxy data size as a fraction of the training candidates.
        width: proxy network channel multiplier.
        blocks: proxy network residual-block multiplier.
        levels: proxy network resolution levels (default: the full network's).
        top_k: phase-1 configurations retrained at full fidelity in phase 2.
        storage: Optuna RDB URL (default sqlite:///W/hpo/study.db); postgresql://user:pw@host/db for many workers.
        pruner: none | median | asha | hyperband (per-epoch validation Dice; phase 1 only).
        search_space: YAML search space (default: learning rate, weight decay, loss weights, augmentation).
        seed: sampler seed (same seed, same search).
        epochs: training epochs of every trial (default: the template's, derived from the dataset).
        proxy_epochs: phase-1 epochs (default: epochs; with --proxy short a quarter of the full run's).
        study_name: Optuna study name (default <algo>-<proxy>); phase 2 uses <name>-phase2.
        sampler: tpe | random.
        n_startup_trials: random trials before TPE (default: half of n_trials, 2..10).
        algo: algorithm template name: proxyseg, or MONAI's segresnet, swinunetr, dints, segresnet2d (their
            folder given with --templates; proxy fidelity through proxy_bundle.templates.adapters).
        templates: algorithm templates folder (default W/algorithm_templates, else the shipped ones).
        fold: validation fold of every trial.
        overrides: fixed template settings for every trial, e.g. '{"roi_size": [64,64,64], "batch_size": 1}'.
        num_workers: DataLoader workers per trial; auto: the CPU cores shared among the concurrent trials on a GPU
            machine (at most 8 each), 0 on the CPU.
        similarity: proxy data image similarity metric (mi | nmi | ncc) when a selection is made here.
        mode: proxy data comparison mode (roi | image).
        strategy: proxy data strategy (representative | diverse | coverage | random).
        baseline: results.json of a proxy=none search to measure the speedup against (default: found in W/hpo).
        grace_s: seconds without heartbeat after which another worker's running trial counts as interrupted.
        trial_timeout: wall-clock limit of one trial in seconds (a trial over it fails); default none.
        progress: show progress bars.
        devices: auto (every visible GPU, else the CPU) | cpu | GPU ordinals as this process sees them, e.g. 0,1
            (the parent's CUDA_VISIBLE_DEVICES is respected). One long-lived worker process per device and lane
            trains trial after trial.
        trials_per_device: proxy trials trained at once on one GPU; auto measures it (aggregate steps/s and memory
            of 1, 2, 4, 8 concurrent trainings, about --probe_s seconds each). Trials of the full-size network
            (full fidelity, short training) always get a GPU each. On the CPU: trials trained side by side, each
            using all cores (auto: 1).
        timeout: seconds for the whole search: no phase-1 trial starts after it; phase 2 then retrains the top-k
            of the trials that completed. Re-running the command continues the search.
        val_every: validate every this many epochs and after the last; auto: about 5 validations per trial when
            --epochs/--proxy_epochs are given (else the template's schedule).
        probe_s: seconds each concurrent training runs in the --trials_per_device auto probe.
        per_trial_process: start a fresh training process for every trial, as Auto3DSeg's BundleAlgo.train does
            (slower; the workers then only schedule), instead of training in the long-lived workers.
        default_trial: also train the template's default configuration at full fidelity and score it next to
            the winner (validation fold and external set).
    """
    from proxy_bundle.hpo.sampling import PRUNERS, SAMPLERS

    proxy = str(proxy).lower()
    if proxy not in PROXY_MODES:
        raise InputError(f"unknown proxy mode {proxy!r}; use one of {list(PROXY_MODES)}", where="--proxy")
    if str(pruner).lower() not in PRUNERS:
        raise InputError(f"unknown pruner {pruner!r}; use one of {list(PRUNERS)}", where="--pruner")
    if str(sampler).lower() not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; use one of {list(SAMPLERS)}", where="--sampler")
    n_trials = _positive(n_trials, "n_trials", integer=True)
    top_k = _positive(top_k, "top_k", integer=True)
    data_fraction = _positive(data_fraction, "data_fraction", upper=1.0)
    width = _positive(width, "width")
    blocks = _positive(blocks, "blocks")
    levels = _positive(levels, "levels", integer=True, allow_none=True)
    epochs = _positive(epochs, "epochs", integer=True, allow_none=True)
    proxy_epochs = _positive(proxy_epochs, "proxy_epochs", integer=True, allow_none=True)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"must be an integer >= 0, got {seed!r}", where="--seed")
    if top_k > n_trials:
        raise InputError(f"top_k ({top_k}) cannot exceed n_trials ({n_trials})", where="--top_k")
    if isinstance(overrides, str):
        try:
            overrides = yaml.safe_load(overrides)
        except yaml.YAMLError:
            raise InputError("not a YAML/JSON mapping", where="--overrides") from None
    if overrides is not None and not isinstance(overrides, Mapping):
        raise InputError(f"must be a mapping of template settings, got {overrides!r}", where="--overrides")

    from proxy_bundle.hpo.space import load_space

    from proxy_bundle.templates.adapters import adapter_for

    adapter = adapter_for(algo)
    if search_space is None and adapter is not None:
        from proxy_bundle.hpo.space import parse_space

        # MONAI's templates name their settings differently (e.g. dints' training#learning_rate).
        space = parse_space(adapter.space, source=f"<{algo} default>")
    else:
        space = load_space(search_space)
    from proxy_bundle.inputs import FINGERPRINT_KEY, prepare_source

    work = Path(work_dir).resolve()
    if work.exists() and not work.is_dir():
        raise InputError("output directory is an existing file", where=str(work))
    # The gate: every case is checked before any work and before anything but the gate's record is written.
    source = prepare_source(load_input(input, work), work, progress=bool(progress))
    cfg = {**source.config, FINGERPRINT_KEY: source.fingerprint}
    from proxy_bundle.hpo.heldout import external_cases

    external = external_cases(cfg)  # checked now: a bad held-out list must fail before any training
    hpo_dir = ensure_dir(work / "hpo")

    from proxy_bundle.hpo.api import run_search
    from proxy_bundle.hpo.engine import SearchConfig
    from proxy_bundle.hpo.fingerprint import search_identity, template_identity
    from proxy_bundle.hpo.runners import AlgoRunner
    from proxy_bundle.hpo.storage import mask_url, resolve_url

    # A search made from other input data is restarted or refused before anything is recomputed.
    from proxy_bundle.hpo.inputs import check_study_input

    name = study_name or f"{algo}-{proxy}"
    url = resolve_url(storage, work)
    check_study_input(url, name, source.fingerprint)
    # The rest of what identifies the search, checked before the analysis and selection run. An explicit
    # --num_workers is part of it (MONAI's augmentation random streams follow the DataLoader workers); "auto"
    # depends on the machine, so it is recorded as "auto" and a search can move between machines.
    identity = search_identity(data=source.fingerprint, fold=fold, template=None,
                               overrides={"num_workers": num_workers, **dict(overrides or {})})
    _check_study_settings(url, name, {**{k: v for k, v in identity.items() if k != "template"},
                                      "space": space.to_dict(), "seed": int(seed), "sampler": str(sampler).lower(),
                                      "pruner": str(pruner).lower(), "n_startup_trials": n_startup_trials})
    # Written only now: a refused command must not repoint W/input.yaml, which a plain re-run reads.
    input_file = work / "input.yaml"
    if not input_file.is_file() or (yaml.safe_load(input_file.read_text()) or {}) != cfg:
        write_yaml(input_file, cfg)

    stats = ensure_analysis(input_file, cfg, work, fraction=data_fraction, fold=fold, seed=seed, metric=similarity,
                            mode=mode, strategy=strategy, progress=bool(progress), fingerprint=source.fingerprint,
                            select=proxy in ("data", "both"))
    datalist = None
    if proxy in ("data", "both"):
        datalist = proxy_datalist(cfg, work, stats, fraction=data_fraction, fold=fold, seed=seed, metric=similarity,
                                  mode=mode, strategy=strategy, fingerprint=source.fingerprint)
    tpl = _install_templates(templates_dir(templates, work, algo), work, algo)
    if adapter is not None:
        import torch

        if not torch.cuda.is_available():
            # The template's own algo.py runs here (fill_template_config): it needs its CPU fallbacks too.
            adapter.patch_for_cpu(tpl / algo)
    identity["template"] = template_identity(tpl / algo)  # as installed (and patched): what trains
    t_epochs = None
    if proxy == "short" and epochs is None and proxy_epochs is None:
        # Short training is a share of the full run, whose length the template derives from the data.
        t_epochs = AlgoRunner.from_templates(tpl, algo, work, stats, input_file, fold=fold).default_epochs(
            hpo_dir / ".template_epochs")
    phase1_fid, full_fid = build_fidelities(proxy, datalist, width, blocks, levels, epochs, proxy_epochs, t_epochs)
    phase1_fid, full_fid = (with_validation_schedule(phase1_fid, val_every),
                            with_validation_schedule(full_fid, val_every))
    from proxy_bundle.hpo.devices import cpu_count, dataloader_workers, describe_slots, plan_workers, resolve_devices
    from proxy_bundle.hpo.engine import TwoPhaseSearch
    from proxy_bundle.hpo.inprocess import InProcessAlgoRunner
    from proxy_bundle.hpo.runners import _cuda_count
    from proxy_bundle.hpo.workers import WorkerSpec, run_workers, search_dict

    device_list = resolve_devices(devices, os.environ, _cuda_count())
    on_gpu = device_list != ["cpu"]
    packable = not phase1_fid.is_full
    if not (str(trials_per_device).lower() == "auto"):
        trials_per_device = _positive(trials_per_device, "trials_per_device", integer=True)
    timeout = _positive(timeout, "timeout", allow_none=True)
    probe_s = _positive(probe_s, "probe_s")
    trial_timeout = _positive(trial_timeout, "trial_timeout", allow_none=True)
    # proxyseg's preprocessing cache has no counterpart in MONAI's templates.
    base = {"cache_dir": str(hpo_dir / "preprocessed_cache")} if adapter is None else {}
    base.update(dict(overrides or {}))
    config = SearchConfig(study_name=name, space=space, proxy=phase1_fid, full=full_fid, n_trials=n_trials,
                          top_k=top_k, seed=seed, sampler=str(sampler).lower(), pruner=str(pruner).lower(),
                          n_startup_trials=n_startup_trials, out_dir=str(hpo_dir / name), grace_s=float(grace_s),
                          heartbeat_s=min(10.0, float(grace_s) / 4), progress_bar=bool(progress),
                          deadline=None if timeout is None else time.time() + timeout, identity=identity)
    # A search that exists with other settings is refused here, before any probe or worker starts.
    checker = TwoPhaseSearch(config, AlgoRunner.from_templates(tpl, algo, work, stats, input_file, fold=fold,
                                                               base_overrides=base), url)
    checker.prepare()
    todo = not checker.finished()

    if str(trials_per_device).lower() == "auto":
        trials_per_device = 1
        # The packing probe runs proxyseg's in-process training; MONAI's templates train one trial per GPU.
        if on_gpu and packable and todo and adapter is None:
            trials_per_device = _probe(tpl, algo, work, stats, input_file, fold, base, phase1_fid, device_list[0],
                                       Path(config.out_dir) / "probe", probe_s)
    # On the CPU an explicit N is N trials side by side; on a GPU only proxy trials share a device.
    slots = plan_workers(device_list, int(trials_per_device), packable=packable or not on_gpu)
    if on_gpu and not packable and int(trials_per_device) > 1:
        print(f"hpo: phase-1 trials at {phase1_fid.name} train the full-size network, so each gets a GPU to itself "
              f"(--trials_per_device {trials_per_device} applies to proxy networks and proxy data)")
    if "num_workers" not in base and not (adapter is not None and str(num_workers).lower() == "auto"):
        # MONAI's templates keep their own DataLoader workers unless --num_workers is given (swinunetr and dints
        # need at least one: persistent workers).
        if str(num_workers).lower() == "auto":
            base["num_workers"] = dataloader_workers(cpu_count(), len(slots), on_gpu)
        elif isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise InputError(f"must be auto or an integer >= 0, got {num_workers!r}", where="--num_workers")
        else:
            base["num_workers"] = int(num_workers)
    runner_spec = {"templates": str(tpl), "algo": algo, "work_dir": str(work), "datastats": str(stats),
                   "input_file": str(input_file), "fold": int(fold), "base_overrides": base,
                   "timeout_s": trial_timeout, "kind": "process" if per_trial_process else "in-process"}
    def _epochs(fid: Any) -> str:
        if fid.epochs is not None:
            return f" ({fid.epochs} epoch{'s' if fid.epochs != 1 else ''})"
        return f" ({t_epochs} epochs, the template's)" if t_epochs else " (the template's epochs)"

    print(f"hpo: study {name!r} in {mask_url(url)}: {n_trials} trial(s) at {phase1_fid.name}{_epochs(phase1_fid)}"
          + (f", then top {top_k} at full fidelity{_epochs(full_fid)}" if config.two_phase else "")
          + f"; {describe_slots(slots)}"
          + (f" ({trials_per_device} per GPU)" if on_gpu and packable else ""))
    t0 = time.time()
    workers = {"workers": []}
    if todo:  # a finished search (re-run to report) starts no worker
        from proxy_bundle.hpo.console import StudyWatcher

        watcher = StudyWatcher(checker.storage, name, fidelities={1: phase1_fid, 2: full_fid}, n_trials=n_trials,
                               top_k=top_k if config.two_phase else None,
                               progress_bar=bool(progress))
        try:
            workers = run_workers(WorkerSpec(url=url, search=search_dict(config), runner=runner_spec), slots,
                                  Path(config.out_dir) / "workers", on_poll=watcher.poll)
        finally:
            watcher.close()
    # Everything is trained by now; this pass collects the result (and trains whatever workers left undone).
    runner = (AlgoRunner if per_trial_process else InProcessAlgoRunner).from_templates(
        tpl, algo, work, stats, input_file, fold=fold, base_overrides=base, timeout_s=trial_timeout)
    if checker.finished():  # nothing left to train: no progress bars that fill at once
        config = dataclasses.replace(config, progress_bar=False)
    summary = run_search(config, runner, url, proxy_mode=proxy, baseline=baseline, latest_dir=hpo_dir,
                         extra={"devices": {"workers": workers["workers"], "trials_per_device": int(trials_per_device),
                                            "devices": device_list, "num_workers": base.get("num_workers")}})
    from proxy_bundle.hpo.assess import assess

    summary["assessment"] = assess(summary, cfg, fold, runner=runner, full_fidelity=full_fid,
                                   searched=[p.name for p in space], out_dir=config.out_dir, external=external,
                                   default_trial=bool(default_trial))
    outputs = summary.pop("outputs")
    write_json(outputs["results"], summary)
    if "latest_results" in outputs:
        write_json(outputs["latest_results"], summary)
    summary["outputs"] = outputs
    _print_summary(summary, time.time() - t0)


def _check_study_settings(url: str, name: str, known: Mapping[str, Any]) -> None:
    """Refuse, before the data analysis and selection run, a study started with other data, fold, overrides,
    space or seed (the search checks the rest, e.g. template and fidelities, when it starts)."""
    from proxy_bundle.hpo.fingerprint import check_known_settings, stored_settings
    from proxy_bundle.hpo.storage import mask_url, open_storage

    storage = open_storage(url)
    try:
        check_known_settings(name, stored_settings(storage, name), json.loads(json.dumps(known, default=str)),
                             where=mask_url(url))
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()


def with_validation_schedule(fidelity, val_every: Any):
    """``fidelity`` with its validation schedule: ``auto`` validates about 5 times per trial when its epochs are
    known (every ceil(epochs / 5) epochs, and after the last); ``None`` keeps the template's."""
    import dataclasses
    import math

    if val_every is None:
        return fidelity
    if str(val_every).lower() == "auto":
        if fidelity.epochs is None:
            return fidelity
        return dataclasses.replace(fidelity, val_every=max(1, math.ceil(int(fidelity.epochs) / 5)))
    return dataclasses.replace(fidelity, val_every=_positive(val_every, "val_every", integer=True))


def _probe(tpl: Path, algo: str, work: Path, stats: Path, input_file: Path, fold: int, base: Mapping[str, Any],
           fidelity: Any, device: str, out: Path, seconds: float) -> int:
    """Trials per GPU from the packing probe (cached in ``out/probe.json``: a resumed search does not re-probe)."""
    from proxy_bundle.hpo.devices import WorkerSlot
    from proxy_bundle.hpo.probe import probe_packing
    from proxy_bundle.hpo.runners import AlgoRunner

    cached = out / "probe.json"
    if cached.is_file():
        return int(json.loads(cached.read_text())["trials_per_device"])
    runner = AlgoRunner.from_templates(tpl, algo, work, stats, input_file, fold=fold, base_overrides=base)
    bundle = runner.export({}, fidelity, out / "bundle")
    print(f"hpo: measuring how many {fidelity.name} trials one GPU runs best at once (about {seconds:g} s each)")
    summary = probe_packing(bundle.get_output_path(), WorkerSlot(device, 0).env, out, seconds=seconds)
    ratio = summary.get("throughput_ratio")
    print(f"hpo: {summary['trials_per_device']} trial(s) per GPU"
          + (f" ({ratio:.2f}x the steps/s of one)" if ratio else ""))
    return int(summary["trials_per_device"])


def _print_summary(s: Mapping[str, Any], elapsed: float) -> None:
    best = s["best"]
    print(f"best score {best['score']:.4f} (trial {best['trial']}, phase {best['phase']}"
          + (f", proxy score {best['proxy_score']:.4f}" if best.get("proxy_score") is not None else "") + ")")
    for k, v in best["params"].items():
        print(f"  {k} = {v:.4g}" if isinstance(v, float) else f"  {k} = {v}")
    for phase, st in s["phases"].items():
        states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(st.get("states", {}).items()))
        print(f"{phase}: {st.get('trials', 0)} trial(s) ({states}), compute {st.get('compute_s', 0):.1f} s")
    sp = s["speedup"]
    if sp.get("speedup"):
        print(f"speedup vs full-fidelity search: {sp['speedup']:.2f}x ({sp['kind']}: {sp['how']})")
    pv = s.get("proxy_vs_full")
    if pv and pv.get("spearman") is not None:
        print(f"proxy vs full rank correlation (phase-2 configs): Spearman {pv['spearman']:.2f}")
    from proxy_bundle.hpo.assess import format_assessment

    if s.get("assessment"):
        for line in format_assessment(s["assessment"]):
            print(line)
    print(f"model: {best.get('model_path')}")
    out = s["outputs"]
    files = [out[k] for k in ("results", "best_params", "latest_results", "latest_best_params") if out.get(k)]
    default = (s.get("assessment") or {}).get("default_trial")
    if default and default.get("model_path"):
        files.append(default["model_path"])
    print(f"wrote {', '.join(files)} ({elapsed:.0f} s)")
    plots = [v for k, v in out.items() if k.endswith("_png")]
    if plots:
        print(f"plots ({len(plots)}): {', '.join(plots)}")
