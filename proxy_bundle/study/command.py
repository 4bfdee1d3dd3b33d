"""``python -m proxy_bundle study``: train K configurations at every fidelity and report how well proxies rank them."""

from __future__ import annotations

import json
import os
import shlex
import sys
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from proxy_bundle.atomic import ensure_dir, write_json
from proxy_bundle.defaults import DATA_FRACTION, PROXY_BLOCKS
from proxy_bundle.errors import InputError
from proxy_bundle.options import PhantomTask, SelectionMode
from proxy_bundle.study.plan import PROXY_DATA, SHORT_BUDGETS, WIDTHS, Config, Variant, build_variants, sample_configs

ALGO = "proxyseg"


def study(
    task: PhantomTask = "spleen_ct",
    work_dir: str = "study_work",
    dataset: str | None = None,
    n_configs: int = 24,
    epochs: int = 8,
    size: int = 32,
    num_cases: int = 16,
    num_external: int = 6,
    data_fraction: float = DATA_FRACTION,
    widths: str | Sequence[float] = WIDTHS,
    proxy_data: str | Sequence[str] = PROXY_DATA,
    random_seeds: int = 3,
    both_width: float | None = None,
    both_data: str = "mi-representative",
    short_budgets: str | Sequence[float] = SHORT_BUDGETS,
    blocks: float = PROXY_BLOCKS,
    levels: int | None = None,
    init_filters: int = 16,
    roi: int | None = None,
    seed: int = 0,
    variants: str | Sequence[str] | None = None,
    mode: SelectionMode = "roi",
    search_space: str | None = None,
    fold: int = 0,
    top_k: int = 3,
    table: str | None = None,
    max_minutes: float | None = None,
    replay_seeds: int = 200,
    bootstrap: int = 200,
    eta: int = 2,
    include_startup: bool = False,
    train: bool = True,
    templates: str | None = None,
    val_every: int = 1,
    devices: str = "auto",
    trials_per_device: int | str = "auto",
    threads: int | None = 1,
    keep_checkpoints: bool = False,
    rescore_val: bool = False,
    progress: bool = True,
) -> None:
    """Build a tabular benchmark of K configurations x every fidelity and replay search methods from it.

    Samples N_CONFIGS configurations from the search space and trains each one at every variant (see
    proxy_bundle.study.plan): the reference, its repeat with another training seed (the noise ceiling),
    the proxy network at each width, proxy data per metric-strategy pair, random subsets, both proxies and
    shorter training. Every run's per-epoch validation curve and load-independent cost are stored; the table
    (one JSON line per run) is imported from and exported to TABLE, so a study resumes and extends across
    invocations and machines. Search methods are then replayed from the table (random search, ASHA,
    Hyperband, two-phase proxy searches, proxy + ASHA, short training), and WORK_DIR/report.md, the figures
    and results.json are written.

    Args:
        task: phantom task to generate when no DATASET is given: spleen_ct or prostate_mr.
        work_dir: output folder (also holds the generated dataset, trials and stored runs).
        dataset: an MSD-layout dataset folder with datalist.json (folds), dataset.json and optionally
            external.json (without it: validation fold only); default: generate phantoms in WORK_DIR/data.
        n_configs: number of sampled configurations K (>= 3; 24 or more for intervals worth reading).
        epochs: training epochs at full fidelity.
        size: phantom grid size (voxels per axis) when generating.
        num_cases: phantom training cases when generating.
        num_external: phantom external-site cases when generating.
        data_fraction: proxy-data fraction of the training cases.
        widths: proxy-network channel multipliers (comma-separated), one network variant each.
        proxy_data: proxy-data selections as METRIC-STRATEGY pairs (comma-separated; metric mi, nmi or ncc,
            strategy representative, diverse or coverage).
        random_seeds: number of random subsets.
        both_width: proxy-network width of the both-proxies variant (default: the smallest of WIDTHS).
        both_data: the subset of the both-proxies variant, as METRIC-STRATEGY.
        short_budgets: shorter-training budgets as fractions of EPOCHS (comma-separated).
        blocks: proxy-network residual-block multiplier.
        levels: proxy-network resolution levels (default: the full network's).
        init_filters: channels of the full network's first level.
        roi: training patch and sliding-window size (voxels per axis; default: the template's from the data).
        seed: configuration sampling seed.
        variants: comma-separated variant or family names to run (reference always runs); families:
            reference, repeat, network, data, random, both, short. Default: all.
        mode: how cases are compared for selection: roi (label bounding box + margin) or image.
        search_space: search-space YAML (default: the built-in segmentation space).
        fold: validation fold.
        top_k: k of the top-k overlap.
        table: the benchmark table (JSON Lines) to resume from and write back (default WORK_DIR/table.jsonl).
        max_minutes: stop starting runs and stop running ones (they are not stored) after this many minutes
            of training, then replay and report what the table holds; the next invocation resumes.
        replay_seeds: random orderings per replayed search method.
        bootstrap: bootstrap resamples of the configurations for the 95% bands and intervals.
        eta: reduction factor of ASHA and Hyperband.
        include_startup: count every trial's process start-up in the replayed costs (default: training and
            validation only, as with the search engine's long-lived workers).
        train: train the runs the table lacks (False: only replay and report what the table holds).
        templates: Auto3DSeg templates folder (default: WORK_DIR/algorithm_templates if present, else the
            bundled algorithm_templates).
        val_every: validate every this many epochs (1 stores the full per-epoch curve that ASHA needs).
        devices: auto (every visible GPU, else the CPU) | cpu | GPU ordinals as this process sees them, e.g. 0,1
            (the parent's CUDA_VISIBLE_DEVICES is respected). Each device gets long-lived worker processes that
            train run after run (MONAI is imported once per worker, not once per run).
        trials_per_device: runs trained side by side per device. On a GPU 1 (a run's device time is its cost, so
            runs do not share a GPU; more GPUs train more runs at once); on the CPU auto fills the cores at
            THREADS threads per run.
        threads: CPU threads per run (OMP_NUM_THREADS and torch threads of the workers); empty keeps the
            environment's.
        keep_checkpoints: keep each trial's resumable last.pt (large); model.pt is always kept.
        rescore_val: score the validation fold again with the study's evaluator instead of taking the
            template's own validation Dice of the same checkpoint (they agree; this checks it).
        progress: show a progress bar.
    """
    t_start = time.time()
    command = "python -m proxy_bundle study " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "study" else f"study(task={task!r}, work_dir={work_dir!r}, ...)"
    from proxy_bundle.hpo.space import load_space, suggest
    from proxy_bundle.study.analysis import analyse
    from proxy_bundle.study.prepare import (
        content_hash,
        dataset_paths,
        ensure_analysis,
        ensure_phantoms,
        ensure_subsets,
        gate_dataset,
        template_hash,
    )
    from proxy_bundle.study.report import hardware, hardware_summary, write_report

    from proxy_bundle.hpo.devices import resolve_devices
    from proxy_bundle.hpo.runners import _cuda_count
    from proxy_bundle.study.workers import study_slots

    device_list = resolve_devices(devices, os.environ, _cuda_count())  # bad device settings stop before any work
    slots = study_slots(device_list, trials_per_device, threads)
    if dataset is not None:  # the gate runs before anything is written
        gate_dataset(Path(dataset), Path(work_dir).resolve() / "analysis" / ".validated")
    w = ensure_dir(Path(work_dir).resolve())
    budgets = _floats(short_budgets, "short_budgets")
    plan = build_variants(
        epochs=int(epochs), fraction=float(data_fraction), proxy_data=_names(proxy_data, "proxy_data"),
        random_seeds=tuple(range(int(random_seeds))), widths=_floats(widths, "widths"),
        both_width=both_width, both_data=both_data, short_budgets=budgets,
        include=_names(variants, "variants") if variants else None,
    )
    shorts = [v.name for v in plan if v.family == "short"]
    if (variants is None or "short" in _names(variants, "variants")) and len(shorts) < len(budgets):
        print(f"study: short budgets {', '.join(f'{b:g}' for b in budgets)} of {epochs} epochs give "
              f"{len(shorts)} distinct run length(s) ({', '.join(shorts) or 'none shorter than the reference'})")
    if max_minutes is not None and float(max_minutes) <= 0:
        raise InputError(f"max_minutes must be > 0, got {max_minutes}", where="study --max_minutes")
    if roi is not None and int(roi) < 8:
        raise InputError(f"roi must be >= 8 voxels, got {roi}", where="study --roi")
    space = load_space(search_space)
    configs = sample_configs(lambda trial: suggest(trial, space), int(n_configs), seed=int(seed))

    if dataset is None:
        root = ensure_phantoms(task, w / "data", int(num_cases), int(num_external), int(size), int(seed))
    else:
        root = Path(dataset)
    data = ensure_analysis(dataset_paths(root, w / "analysis"))
    subset_keys = {v.subset: {"metric": v.metric or "mi", "strategy": v.strategy, "seed": v.seed}
                   for v in plan if v.subset}
    subsets = ensure_subsets(data, w / "subsets", subset_keys, float(data_fraction), int(fold),
                             mode) if subset_keys else {}

    from proxy_bundle.hpo.command import templates_dir as find_templates
    from proxy_bundle.hpo.devices import CPU, cpu_count, dataloader_workers, describe_slots
    from proxy_bundle.hpo.runners import AlgoRunner
    from proxy_bundle.study.evaluate import read_cases
    from proxy_bundle.study.runner import fidelity, run_spec
    from proxy_bundle.study.store import RunStore
    on_gpu = device_list != [CPU]
    templates_dir = find_templates(templates, w, ALGO)
    base_overrides = {"num_epochs_per_validation": int(val_every), "cache_dir": str(w / "cache"),
                      "num_workers": dataloader_workers(cpu_count(), len(slots), on_gpu),
                      "network#init_filters": int(init_filters),
                      **({"roi_size": [int(roi)] * 3} if roi is not None else {})}
    # Built here once so that a missing or broken template stops the study before any worker starts.
    AlgoRunner.from_templates(templates_dir, ALGO, ensure_dir(w / "algo"), data.datastats, data.input_yaml,
                              fold=int(fold), base_overrides=base_overrides)
    runner_spec = {"templates": str(templates_dir), "algo": ALGO, "work_dir": str(w / "algo"),
                   "datastats": str(data.datastats), "input_file": str(data.input_yaml), "fold": int(fold),
                   "base_overrides": base_overrides, "timeout_s": None, "kind": "in-process"}
    val_cases = read_cases(data.datalist, "training", data.dataroot, fold=int(fold))
    sets = {"ext": read_cases(data.external, "testing", data.dataroot)} if data.external is not None else {}
    if rescore_val:
        sets["val"] = val_cases
    if not val_cases:
        raise InputError(f"no training case has fold {fold}", where=str(data.datalist))
    if data.external is not None and not sets["ext"]:
        raise InputError("the external set is empty", where=str(data.external))
    if data.external is None:
        print(f"study: {data.dataroot} has no external.json: agreement is measured on validation fold {fold} only")
    # Content hashes, not paths: the table is reused on another machine only for the same data and template.
    context = {"dataset": content_hash(*(p for p in (data.datalist, data.external, data.dataroot / "dataset.json",
                                                      data.dataroot / "phantom_meta.json") if p and p.is_file())),
               "fold": int(fold), "init_filters": int(init_filters), "val_every": int(val_every),
               "roi": int(roi) if roi is not None else None, "selection_mode": mode,
               "template": template_hash(Path(templates_dir) / ALGO)}

    store = RunStore(w / "runs")
    table_file = Path(table).resolve() if table else w / "table.jsonl"
    imported = store.import_table(table_file)
    jobs = []
    for c in configs:  # configuration-major: every block of runs costs about the same, so the ETA is steady
        for v in plan:
            fid = fidelity(v, subsets, float(blocks), levels)
            jobs.append((c, v, fid, run_spec(c, v, fid, context)))
    todo = [j for j in jobs if store.get(j[0].id, j[1].name, j[3]) is None]
    print(f"study: {len(configs)} configurations x {len(plan)} variants = {len(jobs)} runs "
          f"({len(jobs) - len(todo)} stored, {len(todo)} to train) in {w}"
          + (f"; {imported} imported from {table_file}" if imported else "")
          + (f"; {describe_slots(slots)}" if todo and train else ""), flush=True)
    n_stored = len(jobs) - len(todo)
    if not train and todo:
        print(f"study: --train False: {len(todo)} runs left untrained, replaying the stored ones", flush=True)
        todo = []

    from tqdm.auto import tqdm

    deadline = t_start + 60.0 * float(max_minutes) if max_minutes is not None else None
    walls: list[float] = []
    bar = tqdm(total=len(todo), desc="study", unit="run", disable=not progress or not todo, dynamic_ncols=True)
    try:
        if todo:
            walls = _train_all(todo, slots, runner_spec, threads, w, sets, keep_checkpoints, store, deadline, bar)
    finally:
        bar.close()

    records = [store.get(c.id, v.name, spec) for c, v, _, spec in jobs]
    records = [r for r in records if r is not None]
    # Every stored run goes back into the table, including imported runs of another spec that this invocation
    # did not retrain: a report-only or differently-configured invocation must never shrink a committed table.
    n_rows = store.export_table(table_file)
    print(f"study: table {table_file} ({n_rows} runs of {len(jobs)})", flush=True)
    trained = len(walls)
    analysis = analyse(records, plan, k=int(top_k), replay_seeds=int(replay_seeds), bootstrap=int(bootstrap),
                       eta=int(eta), seed=int(seed), include_startup=bool(include_startup),
                       sets=("val", "ext") if data.external is not None else ("val",))
    n_val = len(val_cases)
    n_train = sum(1 for _ in read_cases(data.datalist, "training", data.dataroot)) - n_val
    meta = {
        "task": task if dataset is None else Path(data.dataroot).name,
        "command": command,
        "hardware": hardware(),
        "wall_s": time.time() - t_start,
        "runs_trained": trained,
        "runs_reused": n_stored,
        "runs_missing": len(jobs) - len(records),
        "table": str(table_file),
        "max_minutes": max_minutes,
        "n_configs": int(n_configs),
        "seed": int(seed),
        "epochs": int(epochs),
        "short_epochs": [v.epochs for v in plan if v.family == "short"],
        "widths": sorted({v.width for v in plan if v.width is not None}, reverse=True),
        "roi": int(roi) if roi is not None else None,
        "replay_seeds": int(replay_seeds),
        "bootstrap": int(bootstrap),
        "eta": int(eta),
        "blocks": float(blocks),
        "levels": levels,
        "init_filters": int(init_filters),
        "val_every": int(val_every),
        "workers": len(slots),
        "devices": device_list,
        "threads": threads,
        "fraction": float(data_fraction),
        "selection_mode": mode,
        "fold": int(fold),
        "n_val": n_val,
        "n_train": n_train,
        "n_ext": len(sets.get("ext", [])),
        "dataset": _dataset_meta(data.dataroot, dataset is None, int(num_cases), int(num_external), int(size)),
        "search_space": space.to_dict(),
        "subsets": subsets,
        "environment": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if k in os.environ},
    }
    log_file = w / "invocations.json"
    try:
        invocations = json.loads(log_file.read_text())
    except (OSError, ValueError):
        invocations = []
    invocations.append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)), "command": command,
                        "wall_s": meta["wall_s"], "runs_trained": trained})
    write_json(log_file, invocations)
    meta["invocations"] = invocations
    results = {
        "n_configs": analysis["n_configs"],
        "hardware": hardware_summary(records),
        "noise_ceiling": analysis["noise_ceiling"],
        "replay": analysis["replay"],
        "meta": meta,
        "variants": [v.as_dict() for v in plan],
        "configs": [{"id": c.id, "params": c.params} for c in configs],
        "runs": records,
        "failed": [{"variant": r["variant"], "config_id": r["config_id"], "error": r.get("error", "")}
                   for r in records if r.get("status") != "ok"],
        "analysis": analysis,
    }
    report = write_report(w, results)
    print_summary(results, report)


def _train_all(todo: list, slots: Sequence[Any], runner_spec: dict, threads: int | None, w: Path,
               sets: dict, keep_checkpoints: bool, store: Any, deadline: float | None, bar: Any) -> list[float]:
    """Train the runs in ``todo`` on the workers, storing each as it finishes; returns the wall-clock seconds of
    the runs stored. Before ``deadline`` (epoch seconds) a run starts only if a median run would end in time; at
    the deadline running runs stop at their next validation and are not stored (the next invocation resumes)."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    from proxy_bundle.study.workers import StudyWorkers

    walls: list[float] = []
    pending = list(todo)
    inflight: dict[Any, tuple] = {}
    with StudyWorkers(slots, runner_spec, threads, w / "workers") as workers:
        timer = threading.Timer(max(0.0, deadline - time.time()), workers.stop.set) if deadline is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            while pending or inflight:
                while pending and len(inflight) < workers.size and not workers.stop.is_set():
                    if deadline is not None and walls and time.time() + statistics.median(walls) > deadline:
                        pending = []  # would not finish in time: left to the next invocation
                        break
                    c, v, fid, spec = job = pending.pop(0)
                    future = workers.submit(c, v, fid, w / "trials" / v.name / c.id, sets, keep_checkpoints)
                    inflight[future] = (job, time.monotonic())
                if not inflight:
                    break
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for future in done:
                    (c, v, _fid, spec), t_run = inflight.pop(future)
                    try:
                        rec = future.result()
                    except BrokenProcessPool:
                        if workers.stop.is_set():
                            continue
                        print(f"study: a worker process died while training {c.id} {v.name} (see "
                              f"{w / 'workers'}/worker-*.log and {w / 'trials' / v.name / c.id / 'train.log'}); "
                              f"the runs stored so far are kept, the same command resumes", flush=True)
                        workers.stop.set()
                        pending = []
                        continue
                    if rec["status"] != "interrupted":
                        walls.append(time.monotonic() - t_run)
                        rec = store.put(c.id, v.name, spec, rec)
                        bar.set_postfix_str(f"{rec['config_id']} {rec['variant']} {rec['status']}")
                    bar.update(1)
        finally:
            if timer is not None:
                timer.cancel()
    return walls


def _names(value: str | Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out = [str(i).strip() for i in items if str(i).strip()]
    if not out:
        raise InputError("empty list", where=f"study --{what}")
    return out


def _floats(value: str | Sequence[float] | None, what: str) -> list[float]:
    items = _names(value if isinstance(value, str) else [str(v) for v in (value or [])], what)
    try:
        return [float(v) for v in items]
    except ValueError:
        raise InputError(f"not a comma-separated list of numbers: {value!r}", where=f"study --{what}") from None


def _dataset_meta(root: Path, generated: bool, num_cases: int, num_external: int, size: int) -> dict[str, Any]:
    try:
        meta = json.loads((Path(root) / "phantom_meta.json").read_text())
        return {"phantoms": True, "generated": generated, "num_cases": meta.get("num_cases"),
                "num_external": meta.get("num_external"), "size": meta.get("size"), "path": str(root)}
    except (OSError, ValueError):
        return {"phantoms": False, "generated": False, "num_cases": None, "num_external": None, "size": None,
                "path": str(root)}


def print_summary(results: dict, report: Path) -> None:
    """The headline numbers on stdout."""
    from proxy_bundle.study.report import headline_table

    print("\n".join(headline_table(results)))
    fails = len(results["failed"])
    print(f"study: {len(results['runs'])} runs ({fails} failed), wall {results['meta']['wall_s'] / 60:.1f} min "
          f"this invocation; "
          f"report {report}")
