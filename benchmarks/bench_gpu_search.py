"""Wall-clock of a full-fidelity search (as Auto3DSeg runs it) vs the two-phase packed proxy search, on one machine.

Both searches use the same phantom dataset, work dir (analysis, preprocessing cache), seed, search space and
sampler (slot-seeded random sampling, so slot i is the same configuration in both), through the ``hpo`` command:

* ``--part full``: ``proxy=none``, ``n`` configurations trained one at a time on one device, each in a fresh
  training process, as Auto3DSeg's ``OptunaGen``/``BundleAlgo.train`` run trial after trial (``--full_in_worker``:
  in one long-lived worker instead);
* ``--part proxy``: ``proxy=both`` (proxy data + width-scaled network), trials packed ``--trials_per_device`` per GPU
  (``auto``: measured by the search's own probe), then the top-1 retrained at full fidelity;
* ``--part report``: writes the JSON (``--out``) and prints the figures.

Each part may be run in several commands (``--budget_s`` stops starting trials after that many seconds; re-running
the part resumes); wall-clock is summed over a part's commands. ``--part all`` runs the three in one go.

Figures: ``speedup`` = full_search_s / proxy_search_s (wall-clock; the proxy search includes its probe and phase 2);
``regret`` = best full-fidelity Dice among the n configurations - full-fidelity Dice of the configuration the
proxy search returns (both from the full search's trials of those configurations); ``packed_throughput_ratio`` =
aggregate training steps/s of the packed proxy trials / one proxy trial alone (probe); ``overhead_fraction`` =
mean over proxy trials of (trial wall - training - validation seconds) / trial wall (export, data loaders, model).

    python benchmarks/bench_gpu_search.py --part all --work runs/gpu_search --out benchmarks/results/gpu_search.json

H200 sizing (defaults): 24 training cases of 96^3, SegResNetDS 32 filters, roi 96^3, batch 2, AMP, 16
configurations, 8 epochs (benchmarks/gpu_search_h200.sh). A small CPU size: ``--size 32 --cases 12 --n 6 --epochs 4 --filters 8``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _state(work: Path) -> dict[str, Any]:
    path = work / "bench_state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(work: Path, state: dict[str, Any]) -> None:
    from proxy_bundle.atomic import write_json

    write_json(work / "bench_state.json", state)


def prepare(args: argparse.Namespace, work: Path) -> Path:
    """The phantom dataset and its data analysis with the proxy-data selection (once, untimed: both searches
    start from the same analysed dataset, as an Auto3DSeg run does after its DataAnalyzer step)."""
    from proxy_bundle.atomic import write_yaml
    from proxy_bundle.hpo.command import ensure_analysis, load_input
    from proxy_bundle.phantoms.generate import generate_dataset

    data = work / "data"
    if not (data / "datalist.json").is_file():
        generate_dataset(args.task, data, num_cases=args.cases, num_external=0, size=args.size, seed=args.seed)
    w = work / "work"
    w.mkdir(parents=True, exist_ok=True)
    cfg = load_input(str(data), w)
    if not (w / "input.yaml").is_file():
        write_yaml(w / "input.yaml", cfg)
    ensure_analysis(w / "input.yaml", cfg, w, fraction=args.data_fraction, fold=0, seed=args.seed, metric="mi",
                    mode="roi", strategy="representative", progress=False)
    return data


def _common(args: argparse.Namespace, work: Path, data: Path) -> dict[str, Any]:
    overrides = {"roi_size": [args.roi] * 3, "batch_size": args.batch_size, "network#init_filters": args.filters,
                 "network#name": "segresnetds", "amp": True}
    if args.spacing:
        overrides["spacing"] = [float(v) for v in args.spacing.split(",")]
    return dict(input=str(data), work_dir=str(work / "work"), n_trials=args.n, top_k=1, seed=args.seed,
                sampler="random", epochs=args.epochs, proxy_epochs=args.proxy_epochs or args.epochs,
                data_fraction=args.data_fraction, width=args.width, overrides=overrides, progress=False,
                devices=args.devices, val_every=args.val_every,
                # the search alone is timed: no baseline trial or held-out scoring after it
                default_trial=False)


def run_part(args: argparse.Namespace, part: str, work: Path) -> None:
    from proxy_bundle.hpo.command import hpo

    data = prepare(args, work)
    state = _state(work)
    rec = state.setdefault(part, {"wall_s": 0.0, "invocations": 0})
    if rec.get("done"):
        print(f"{part}: already done ({rec['wall_s']:.0f} s over {rec['invocations']} command(s))")
        return
    common = _common(args, work, data)
    if part == "full":
        kwargs = dict(common, proxy="none", trials_per_device=1, study_name="bench-full",
                      per_trial_process=args.full_trial_process)
    else:
        kwargs = dict(common, proxy="both", trials_per_device=args.trials_per_device, study_name="bench-proxy",
                      probe_s=args.probe_s)
    if args.budget_s:
        kwargs["timeout"] = float(args.budget_s)
    t0 = time.time()
    hpo(**kwargs)
    rec["wall_s"] += time.time() - t0
    rec["invocations"] += 1
    res = json.loads((work / "work" / "hpo" / kwargs["study_name"] / "results.json").read_text())
    p1 = [t for t in res["trials"] if t["phase"] == 1]
    rec["done"] = sum(t["state"] in ("COMPLETE", "PRUNED") or bool(t.get("error")) for t in p1) >= args.n
    state[part] = rec
    _save_state(work, state)
    print(f"{part}: {'done' if rec['done'] else 'not finished (run the part again)'}; {rec['wall_s']:.0f} s over "
          f"{rec['invocations']} command(s)")


def _device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    import platform

    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def report(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from proxy_bundle.atomic import write_json

    state = _state(work)
    if not (state.get("full", {}).get("done") and state.get("proxy", {}).get("done")):
        raise SystemExit("error: run --part full and --part proxy to the end first")
    hpo_dir = work / "work" / "hpo"
    full = json.loads((hpo_dir / "bench-full" / "results.json").read_text())
    prox = json.loads((hpo_dir / "bench-proxy" / "results.json").read_text())
    by_params = {json.dumps(t["params"], sort_keys=True): t for t in full["trials"] if t["state"] == "COMPLETE"}
    reference = max(t["score"] for t in by_params.values())
    chosen = json.dumps(prox["best"]["params"], sort_keys=True)
    chosen_full = by_params.get(chosen)
    # Same sampler, seed and slots: the chosen configuration is one of the full search's; its phase-2 retrain
    # is the fallback (identical settings, so only run-to-run noise differs).
    chosen_score = chosen_full["score"] if chosen_full else prox["best"]["score"]
    p1 = [t for t in prox["trials"] if t["phase"] == 1 and t["state"] == "COMPLETE"]
    overheads = [(t["wall_s"] - t.get("train_s", 0.0) - t.get("val_s", 0.0)) / t["wall_s"]
                 for t in p1 if t.get("wall_s") and t.get("train_s") is not None]
    val_share = [t.get("val_s", 0.0) / t["wall_s"] for t in p1 if t.get("wall_s") and t.get("val_s") is not None]
    probe_file = hpo_dir / "bench-proxy" / "probe" / "probe.json"
    probe = json.loads(probe_file.read_text()) if probe_file.is_file() else None
    if probe is None:
        # No packing probe in the search (CPU, or a fixed --trials_per_device): measure the ratio now, outside
        # the timed search, on the same proxy network.
        probe = _probe_now(args, work, hpo_dir)
    ratio = probe.get("throughput_ratio") if probe else None
    ratio_n = probe.get("trials_per_device") if probe else None
    full_s, proxy_s = state["full"]["wall_s"], state["proxy"]["wall_s"]
    out = {
        "speedup": full_s / proxy_s,
        "regret": reference - chosen_score,
        "full_search_s": full_s,
        "proxy_search_s": proxy_s,
        "packed_throughput_ratio": ratio,
        "overhead_fraction": statistics.mean(overheads) if overheads else None,
        "validation_fraction": statistics.mean(val_share) if val_share else None,
        "gpu": _device_name(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "reference_dice": reference,
        "chosen_full_dice": chosen_score,
        "chosen_in_full_search": chosen_full is not None,
        "proxy_search_final_dice": prox["best"]["score"],
        "trials_per_device": prox.get("devices", {}).get("trials_per_device"),
        "packed_trials_in_ratio": ratio_n,
        "full_search_trial_process": bool(args.full_trial_process),
        "probe": probe,
        "probe_ratios": ({n: r["aggregate_steps_per_s"] / probe["candidates"]["1"]["aggregate_steps_per_s"]
                          for n, r in probe["candidates"].items()} if probe and "1" in probe.get("candidates", {})
                         else None),
        "invocations": {k: state[k]["invocations"] for k in ("full", "proxy")},
        "training_cases": args.cases,
        "resampled_min_shape": _resampled_min_shape(work / "data", args.spacing),
        "settings": {k: v for k, v in vars(args).items() if k not in ("part", "out", "work")},
        "full_trials": [{"slot": t["slot"], "score": t["score"], "wall_s": t["wall_s"], "train_s": t.get("train_s"),
                         "val_s": t.get("val_s")} for t in full["trials"] if t["phase"] == 1],
        "proxy_trials": [{"slot": t["slot"], "score": t["score"], "wall_s": t["wall_s"], "train_s": t.get("train_s"),
                          "val_s": t.get("val_s")} for t in prox["trials"] if t["phase"] == 1],
        "targets": {"speedup": ">= 8", "regret": "<= 0.01", "packed_throughput_ratio": ">= 3",
                    "overhead_fraction": "<= 0.05"},
    }
    if args.out:
        write_json(args.out, out)
    print(f"gpu search on {out['gpu']}: full-fidelity search {full_s:.0f} s ({args.n} configs one at a time) vs "
          f"packed proxy search {proxy_s:.0f} s = {out['speedup']:.2f}x; regret {out['regret']:.4f} Dice "
          f"(best {reference:.4f}, chosen {chosen_score:.4f}); packed throughput "
          + (f"{ratio:.2f}x with {ratio_n} concurrent" if ratio else "n/a")
          + f" (the search ran {out['trials_per_device']} per device); per-trial overhead "
          + (f"{out['overhead_fraction']:.1%}" if out["overhead_fraction"] is not None else "n/a")
          + (f", validation {out['validation_fraction']:.1%}" if out["validation_fraction"] is not None else "")
          + " of a proxy trial")
    return out


def _resampled_min_shape(data: Path, spacing: str | None) -> list[int] | None:
    """Smallest image side per axis after resampling to ``spacing`` (or to the median spacing, as the template)."""
    import nibabel as nib
    import numpy as np

    entries = json.loads((data / "datalist.json").read_text())["training"]
    shapes, zooms = [], []
    for e in entries:
        img = nib.load(str(data / e["image"]))
        shapes.append(np.asarray(img.shape[:3], float))
        zooms.append(np.asarray(img.header.get_zooms()[:3], float))
    target = (np.asarray([float(v) for v in spacing.split(",")]) if spacing else np.median(np.stack(zooms), axis=0))
    sides = [np.floor(sh * z / target) for sh, z in zip(shapes, zooms)]
    return [int(v) for v in np.min(np.stack(sides), axis=0)]


def _probe_now(args: argparse.Namespace, work: Path, hpo_dir: Path) -> dict[str, Any] | None:
    from proxy_bundle.hpo.probe import probe_packing

    trials = sorted((hpo_dir / "bench-proxy" / "phase1").glob("slot*/proxyseg"))
    if not trials:
        return None
    out = work / "probe_after"
    if (out / "probe.json").is_file():
        return json.loads((out / "probe.json").read_text())
    return probe_packing(trials[0], {}, out, candidates=(1, 2), seconds=args.probe_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("full", "proxy", "report", "all"), default="all")
    ap.add_argument("--work", default=str(REPO / "runs" / "gpu_search"), help="work folder shared by the parts")
    ap.add_argument("--out", default=None, help="JSON to write (report)")
    ap.add_argument("--task", default="spleen_ct")
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--roi", type=int, default=96)
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--batch_size", type=int, default=2)
    ap.add_argument("--n", type=int, default=16, help="configurations in each search")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--proxy_epochs", type=int, default=None)
    ap.add_argument("--val_every", default="auto")
    ap.add_argument("--data_fraction", type=float, default=0.25)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--devices", default="auto")
    ap.add_argument("--trials_per_device", default="auto")
    ap.add_argument("--probe_s", type=float, default=4.0)
    ap.add_argument("--budget_s", type=float, default=None,
                    help="stop starting trials after this many seconds of a command (re-run the part to go on)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spacing", default=None,
                    help="resampling spacing in mm, e.g. 0.7,0.7,1.4 (default: the template's, the median spacing)")
    ap.add_argument("--full_in_worker", dest="full_trial_process", action="store_false",
                    help="train the full search in a long-lived worker too (default: a fresh process per trial, "
                         "as Auto3DSeg's BundleAlgo.train)")
    args = ap.parse_args()
    if args.trials_per_device != "auto":
        args.trials_per_device = int(args.trials_per_device)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    parts = ["full", "proxy", "report"] if args.part == "all" else [args.part]
    for part in parts:
        if part == "report":
            report(args, work)
        else:
            run_part(args, part, work)


if __name__ == "__main__":
    main()
