"""Measured cost of a proxy search vs the same search at full fidelity (the product's main claim).

Runs, in one work dir on one phantom dataset, ``hpo --proxy none`` (n_trials full-fidelity trials) and
``hpo --proxy both`` (n_trials proxy trials + top_k full retrains) with the same seed and search space, then prints
the measured speedup (compute seconds, from results.json) and the full-fidelity Dice each search ends with.

    python benchmarks/bench_hpo_speedup.py [--cases 16] [--size 48] [--n_trials 6] [--top_k 2] [--epochs 4]

Timings depend on the machine's load: re-run on a quiet machine for figures to publish.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--n_trials", type=int, default=6)
    ap.add_argument("--top_k", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--data_fraction", type=float, default=0.25)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--task", default="spleen_ct")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from proxy_bundle.hpo.command import hpo
    from proxy_bundle.phantoms.generate import generate_dataset

    root = Path(args.work or tempfile.mkdtemp(prefix="bench_hpo_"))
    data = generate_dataset(args.task, root / "data", num_cases=args.cases, num_external=0, size=args.size, seed=0)
    overrides = {"roi_size": [args.size] * 3, "batch_size": 1, "num_epochs_per_validation": 1, "num_workers": 0}
    common = dict(input=str(data), work_dir=str(root / "work"), n_trials=args.n_trials, top_k=args.top_k,
                  epochs=args.epochs, seed=0, data_fraction=args.data_fraction, width=args.width,
                  overrides=overrides, progress=False)
    wall = {}
    for proxy in ("none", "both"):
        t0 = time.time()
        hpo(proxy=proxy, **common)
        wall[proxy] = time.time() - t0
    full = json.loads((root / "work" / "hpo" / "proxyseg-none" / "results.json").read_text())
    prox = json.loads((root / "work" / "hpo" / "proxyseg-both" / "results.json").read_text())
    sp = prox["speedup"]
    assert sp["kind"] == "measured", sp
    print(f"hpo speedup: proxy search (data {args.data_fraction:g}, width {args.width:g}, {args.n_trials} trials + top "
          f"{args.top_k} full) used {sp['search_compute_s']:.0f} s compute vs {sp['full_fidelity_search_s']:.0f} s for "
          f"the full-fidelity search = {sp['speedup']:.2f}x (measured; wall {wall['both']:.0f} s vs {wall['none']:.0f} s); "
          f"final full-fidelity Dice {prox['best']['score']:.3f} (proxy search) vs {full['best']['score']:.3f} (full search); "
          f"{args.cases} cases {args.size}^3, {args.epochs} epochs, {os.cpu_count()} CPU(s)")


if __name__ == "__main__":
    main()
