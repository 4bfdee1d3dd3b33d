"""Fixed per-trial overhead of the proxyseg template once the preprocessing cache is warm.

A search launches one ``train.py`` process per trial. Everything before the first optimiser step (interpreter
and library start-up, config parsing, datalist reading, network construction, loading the cached preprocessed
cases) is paid again by every trial; with small proxy trials it can dominate. This script prepares a phantom
dataset and an Auto3DSeg bundle exactly as AutoRunner would (DataAnalyzer + BundleGen with the template), then runs
one cold proxy trial (fills the shared cache) and ``--trials`` warm proxy trials with different learning rates,
each in its own checkpoint folder, and reads the timestamps ``train.py`` writes to ``timing.yaml``.

Overhead of a trial = first training step - launch (measured by this script around ``subprocess``), as a share
of the trial's wall time (launch to exit). Target: <= 15 % for warm trials.

    python benchmarks/bench_trial_overhead.py [--cases 16 --size 64 --proxy_cases 8 --epochs 10 --trials 2]

Prints one summary line at the end. Timings depend on the machine and its load; re-run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "algorithm_templates"


def prepare(work: Path, cases: int, size: int, proxy_cases: int) -> tuple[Path, Path]:
    """Phantom dataset, datastats, the fold-0 bundle and a proxy datalist; returns (bundle, proxy datalist)."""
    from monai.apps.auto3dseg import BundleGen, DataAnalyzer

    from proxy_bundle.phantoms.generate import generate_dataset

    data = work / "data"
    generate_dataset("spleen_ct", data, num_cases=cases, num_external=0, size=size, seed=0)
    stats = work / "datastats.yaml"
    analyzer = DataAnalyzer(str(data / "datalist.json"), str(data), output_path=str(stats), device="cpu", worker=2)
    analyzer.get_all_case_stats()
    src = work / "input.yaml"
    src.write_text(yaml.safe_dump({"modality": "CT", "dataroot": str(data), "datalist": str(data / "datalist.json")}))
    gen = BundleGen(algo_path=str(work), algos="proxyseg", templates_path_or_url=str(TEMPLATES),
                    data_stats_filename=str(stats), data_src_cfg_name=str(src))
    gen.generate(str(work), num_fold=1)
    training = json.loads((data / "datalist.json").read_text())["training"]
    # A proxy subset stands in for the similarity selection: its size is what matters for the timing.
    subset = [e for e in training if e["fold"] != 0][:proxy_cases]
    proxy = work / "proxy_datalist.json"
    proxy.write_text(json.dumps({"training": subset}))
    return work / "proxyseg_0", proxy


def run_trial(bundle: Path, ckpt: Path, overrides: dict) -> dict:
    configs = ",".join(str(p) for p in sorted((bundle / "configs").glob("*.yaml")))
    cmd = [sys.executable, str(bundle / "scripts" / "train.py"), "run", f"--config_file={configs}",
           f"--ckpt_path={ckpt}"] + [f"--{k}={v}" for k, v in overrides.items()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    launch = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    done = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"error: trial in {ckpt} failed:\n{proc.stderr[-3000:]}")
    t = yaml.safe_load((ckpt / "timing.yaml").read_text())
    return {
        "wall_s": done - launch,
        "overhead_s": t["first_step"] - launch,
        "startup_s": t["imports_done"] - launch,
        "setup_s": t["data_ready"] - t["imports_done"],
        "monai_config_s": t["config_ready"] - t["imports_done"],
        "model_loaders_s": t["model_ready"] - t["config_ready"],
        "optim_tb_s": t["data_ready"] - t["model_ready"],
        "first_batch_s": t["first_step"] - t["data_ready"],
        "train_s": t["end"] - t["first_step"],
        "num_parameters": t["num_parameters"],
        "num_train_cases": t["num_train_cases"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--proxy_cases", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--trials", type=int, default=2, help="warm trials after the cold one")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--num_workers", type=int, default=2, help="DataLoader workers per trial")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle, proxy = prepare(work, args.cases, args.size, args.proxy_cases)
        base = {"num_epochs": args.epochs, "num_epochs_per_validation": 1, "num_workers": args.num_workers,
                "proxy#enabled": True, "proxy#width": args.width, "proxy#blocks": 0.5, "proxy#datalist": proxy}
        results = []
        for i in range(args.trials + 1):
            lr = 2e-4 * (2 ** i)  # every trial a different hyper-parameter, same preprocessing
            r = run_trial(bundle, work / f"trial{i}", {**base, "learning_rate": lr})
            r["share"] = r["overhead_s"] / r["wall_s"]
            results.append(r)
            kind = "cold" if i == 0 else "warm"
            print(f"trial {i} ({kind}): wall {r['wall_s']:.1f}s, overhead {r['overhead_s']:.1f}s"
                  f" ({100 * r['share']:.1f}%)"
                  f" = start-up+imports {r['startup_s']:.1f}s + setup {r['setup_s']:.1f}s"
                  f" (MONAI import+config {r['monai_config_s']:.1f}s, network+loaders {r['model_loaders_s']:.1f}s,"
                  f" optimiser+TensorBoard {r['optim_tb_s']:.1f}s)"
                  f" + first batch {r['first_batch_s']:.1f}s; training {r['train_s']:.1f}s;"
                  f" {r['num_train_cases']} cases, {r['num_parameters']} parameters", flush=True)
        warm = results[1:]
        share = statistics.median(r["share"] for r in warm)
        cold = results[0]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        overhead = statistics.median(r["overhead_s"] for r in warm)
        print(
            f"trial overhead (warm cache, median of {len(warm)}): {overhead:.1f}s"
            f" of {statistics.median(r['wall_s'] for r in warm):.1f}s = {100 * share:.1f}% (target <= 15%: "
            f"{'met' if share <= 0.15 else 'NOT met'}); cold first trial {cold['overhead_s']:.1f}s of "
            f"{cold['wall_s']:.1f}s; {args.proxy_cases} proxy cases at {args.size}^3, {args.epochs} epochs, "
            f"width {args.width}; {os.cpu_count()} CPUs, load {load:.1f}"
        )


if __name__ == "__main__":
    main()
