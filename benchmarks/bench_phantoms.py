"""Phantom generation speed: both tasks at the default size (claim: 32 cases per task at 96^3 in < 20 s on 2 cores).

Usage: python benchmarks/bench_phantoms.py [--num_cases 32] [--num_external 8] [--size 96] [--n_jobs 1] [--out DIR]
Prints per-task wall and CPU time and a one-line summary; exit code 1 when the wall time exceeds
--budget seconds. On a shared machine compare the CPU time with the budget as well: wall time there
mostly measures the other jobs (CPU time is reported with --n_jobs 1).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from proxy_bundle.phantoms.generate import generate_dataset


def _cpu_s() -> float:
    """CPU seconds of this process (meaningful with --n_jobs 1: worker processes are not its children)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num_cases", type=int, default=32)
    ap.add_argument("--num_external", type=int, default=8)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n_jobs", type=int, default=1, help="generator processes (the files do not depend on it)")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds allowed for both tasks together")
    ap.add_argument("--out", default=None, help="keep the datasets here (default: a temporary directory)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out or tmp)
        total, total_cpu, lines = 0.0, 0.0, []
        for task in ("spleen_ct", "prostate_mr"):
            t0, c0 = time.perf_counter(), _cpu_s()
            root = generate_dataset(task, base / task, args.num_cases, args.num_external, args.size, args.seed,
                                    n_jobs=args.n_jobs)
            dt, cpu = time.perf_counter() - t0, _cpu_s() - c0
            total += dt
            total_cpu += cpu
            meta = json.loads((root / "phantom_meta.json").read_text())
            n = args.num_cases + args.num_external
            voxels = sum(int(c["shape"][0] * c["shape"][1] * c["shape"][2]) for c in meta["cases"].values())
            mb = sum(f.stat().st_size for f in root.rglob("*.nii.gz")) / 1e6
            cpu_txt = f"{cpu:6.2f} s CPU" if args.n_jobs == 1 else "     - s CPU"
            lines.append(f"{task:12s} {n:4d} cases  {dt:6.2f} s wall  {cpu_txt}  {dt / n * 1000:6.1f} ms/case  "
                         f"{voxels / n / 1e6:5.2f} Mvox/case  {mb:6.1f} MB")
            print(lines[-1], flush=True)
    ok = total < args.budget
    print(f"bench_phantoms: {2 * args.num_cases} training + {2 * args.num_external} external cases at size "
          f"{args.size} (both tasks, {args.n_jobs} process(es)) in {total:.1f} s wall"
          + (f", {total_cpu:.1f} s CPU " if args.n_jobs == 1 else " ")
          + f"({'<' if ok else '>='} {args.budget:.0f} s budget: "
          f"{'PASS' if ok else 'FAIL'})")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
