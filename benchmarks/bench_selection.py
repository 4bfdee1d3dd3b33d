"""Proxy-data selection speed: batched all-pairs similarity vs a per-pair loop, 1,000-case scoring, whole selection.

Three measurements, one summary line at the end:

1. ``speedup``: MI between all pairs of 100 synthetic cases on a 32^3 grid (32 bins), the batched kernel vs the
   straightforward per-pair loop with ``numpy.histogram2d`` (``pairwise_mi_reference``); also vs a per-pair loop
   around ``torch.bincount``, the fastest loop one would write by hand. Results are checked to agree.
2. ``scale``: 1,000 synthetic cases on a 32^3 grid: MI (32 bins), NCC, scores and all strategies, excluding file
   loading; run in a fresh subprocess whose peak resident memory (``ru_maxrss``) is reported with the resident
   memory after imports and data creation.
3. ``pipeline``: phantom files (``generate_dataset``): time to load and preprocess every candidate (each file read
   once) vs the whole ``run_selection`` (header pass, load, preprocess, MI on the default 48^3 grid, strategy).

Usage: ``python benchmarks/bench_selection.py [--cases 100] [--scale-cases 1000] [--phantom-cases 100]
[--phantom-size 96] [--threads N]``. Timings on a shared machine are noisy; re-run on a quiet one for the README.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from proxy_bundle.selection.similarity import (  # noqa: E402
    mean_similarity,
    pairwise_mi,
    pairwise_mi_reference,
    pairwise_ncc,
    quantize,
)


def synthetic_cases(n: int, grid: int, seed: int = 0) -> np.ndarray:
    """``n`` smooth random volumes in [0, 1] (a blob on a noisy background), flattened: images with structure, so
    joint histograms are not uniform."""
    rng = np.random.default_rng(seed)
    ax = np.linspace(-1, 1, grid, dtype=np.float32)
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    out = np.empty((n, grid**3), dtype=np.float32)
    for i in range(n):
        c = rng.uniform(-0.4, 0.4, 3)
        r = rng.uniform(0.2, 0.6)
        blob = np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * r * r))
        vol = 0.2 + rng.uniform(0.3, 0.7) * blob + 0.05 * rng.standard_normal(blob.shape)
        out[i] = np.clip(vol, 0, 1).reshape(-1)
    return out


def per_pair_bincount(x: np.ndarray, bins: int) -> np.ndarray:
    """A hand-written per-pair loop with torch.bincount (stronger baseline than histogram2d)."""
    codes = quantize(x, bins).to(torch.int64)
    n, v = codes.shape
    ent = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        p = torch.bincount(codes[i], minlength=bins).double() / v
        ent[i] = -(torch.special.xlogy(p, p)).sum()
    out = torch.diag(ent)
    for i in range(n):
        for j in range(i + 1, n):
            p = torch.bincount(codes[i] * bins + codes[j], minlength=bins * bins).double() / v
            out[i, j] = out[j, i] = ent[i] + ent[j] + torch.special.xlogy(p, p).sum()
    return out.numpy()


class Timer:
    """Wall-clock and process CPU time of a block (CPU time is the steadier figure on a loaded machine)."""

    def __enter__(self) -> "Timer":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def bench_speedup(cases: int, threads: int | None) -> dict:
    x = synthetic_cases(cases, 32, seed=1)
    pairwise_mi(x[:4], bins=32, threads=threads)  # warm-up
    with Timer() as fast_t:
        fast = pairwise_mi(x, bins=32, threads=threads).numpy()
    with Timer() as loop_t:
        loop_bc = per_pair_bincount(x, 32)
    with Timer() as ref_t:
        ref = pairwise_mi_reference(x, bins=32)
    err = float(max(np.abs(fast - ref).max(), np.abs(fast - loop_bc).max()))
    return {"cases": cases, "pairs": cases * (cases - 1) // 2,
            "batched_s": fast_t.wall, "batched_cpu_s": fast_t.cpu,
            "loop_histogram2d_s": ref_t.wall, "loop_histogram2d_cpu_s": ref_t.cpu,
            "loop_bincount_s": loop_t.wall, "loop_bincount_cpu_s": loop_t.cpu,
            "speedup_vs_histogram2d": ref_t.wall / fast_t.wall,
            "speedup_vs_histogram2d_cpu": ref_t.cpu / fast_t.cpu,
            "speedup_vs_bincount_loop": loop_t.wall / fast_t.wall, "max_abs_diff": err}


def bench_scale(cases: int, threads: int | None) -> dict:
    """Runs in a fresh process (see main) so that ru_maxrss is this measurement's peak."""
    from proxy_bundle.selection.strategies import choose

    x = synthetic_cases(cases, 32, seed=2)
    codes = quantize(x, 32)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with Timer() as mi_t:
        mi = pairwise_mi(codes, bins=32, threads=threads).numpy()
        scores = mean_similarity(mi)
    t_mi = mi_t.wall
    t0 = time.perf_counter()
    ncc = pairwise_ncc(x).numpy()
    mean_similarity(ncc)
    t_ncc = time.perf_counter() - t0
    t0 = time.perf_counter()
    k = max(1, round(0.25 * cases))
    for strategy in ("representative", "diverse", "coverage", "random"):
        choose(mi, strategy, k, seed=0)
    t_strat = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"cases": cases, "grid": 32, "mi_s": t_mi, "mi_cpu_s": mi_t.cpu, "ncc_s": t_ncc, "strategies_s": t_strat,
            "rss_after_data_mib": rss_before, "peak_rss_mib": peak, "score_range": [float(scores.min()),
                                                                                    float(scores.max())]}


def bench_pipeline(cases: int, size: int) -> dict:
    from proxy_bundle.phantoms.generate import generate_dataset
    from proxy_bundle.selection import run_selection
    from proxy_bundle.selection.preprocess import PreprocessConfig, common_spacing, iter_case_features
    from proxy_bundle.validation import resolve

    with tempfile.TemporaryDirectory(prefix="bench_selection_") as tmp:
        root = generate_dataset("spleen_ct", Path(tmp) / "spleen", num_cases=cases, num_external=0, size=size, seed=0)
        datalist = root / "datalist.json"
        entries = [e for e in json.loads(datalist.read_text())["training"] if e["fold"] != 0]
        files = [(str(resolve(e["image"], root)), str(resolve(e["label"], root))) for e in entries]
        spacing = common_spacing([f[0] for f in files])
        config = PreprocessConfig(mode="roi", grid=48, spacing=spacing, modality="ct")
        list(iter_case_features(files[:2], config))  # warm-up: MONAI imports and transform construction

        with Timer() as load_t:
            for _ in iter_case_features(files, config):
                pass
        with Timer() as all_t:
            sel = run_selection(datalist, fraction=0.25, metric="mi", mode="roi", grid=48, progress=False)
    return {"files": len(files), "phantom_size": size, "grid": 48, "load_preprocess_s": load_t.wall,
            "load_preprocess_cpu_s": load_t.cpu, "selection_s": all_t.wall, "selection_cpu_s": all_t.cpu,
            "ratio": all_t.wall / load_t.wall, "ratio_cpu": all_t.cpu / load_t.cpu, "selected": len(sel.selected)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--scale-cases", type=int, default=1000)
    ap.add_argument("--phantom-cases", type=int, default=100)
    ap.add_argument("--phantom-size", type=int, default=96, help="phantom edge (the generator's default: 96)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for the MI kernel (default: torch's)")
    ap.add_argument("--part", choices=["all", "speedup", "scale", "pipeline"], default="all")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.part == "scale":  # child process of the 'all' run
        print(json.dumps(bench_scale(args.scale_cases, args.threads)))
        return
    results: dict = {"threads": torch.get_num_threads(), "device": "cpu", "load_avg": os.getloadavg()[0]}
    if args.part in ("all", "speedup"):
        results["speedup"] = r = bench_speedup(args.cases, args.threads)
        print(f"speedup: {r['cases']} cases ({r['pairs']} pairs, 32^3, 32 bins): batched {r['batched_s']:.2f} s "
              f"(cpu {r['batched_cpu_s']:.2f} s), per-pair histogram2d loop {r['loop_histogram2d_s']:.1f} s "
              f"(cpu {r['loop_histogram2d_cpu_s']:.1f} s) -> {r['speedup_vs_histogram2d']:.0f}x wall, "
              f"{r['speedup_vs_histogram2d_cpu']:.0f}x cpu time, "
              f"per-pair bincount loop {r['loop_bincount_s']:.1f} s ({r['speedup_vs_bincount_loop']:.1f}x); "
              f"max |diff| {r['max_abs_diff']:.1e}", flush=True)
    if args.part in ("all", "scale"):
        cmd = [sys.executable, __file__, "--part", "scale", "--scale-cases", str(args.scale_cases)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results["scale"] = r = json.loads(out)
        print(f"scale: {r['cases']} cases at 32^3: MI {r['mi_s']:.1f} s (cpu {r['mi_cpu_s']:.1f} s), NCC {r['ncc_s']:.1f} s, 4 strategies "
              f"{r['strategies_s']:.1f} s; peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"({r['rss_after_data_mib']:.0f} MiB after imports and data)", flush=True)
    if args.part in ("all", "pipeline"):
        results["pipeline"] = r = bench_pipeline(args.phantom_cases, args.phantom_size)
        print(f"pipeline: {r['files']} phantom files ({r['phantom_size']}^3): load+preprocess {r['load_preprocess_s']:.1f}"
              f" s (cpu {r['load_preprocess_cpu_s']:.1f} s), whole selection {r['selection_s']:.1f} s "
              f"(cpu {r['selection_cpu_s']:.1f} s): ratio {r['ratio']:.2f} wall, {r['ratio_cpu']:.2f} cpu", flush=True)

    parts = []
    if "speedup" in results:
        s = results["speedup"]
        parts.append(f"{s['speedup_vs_histogram2d']:.0f}x vs per-pair loop on {s['cases']} cases "
                     f"({'PASS' if s['speedup_vs_histogram2d'] >= 20 else 'FAIL'} >=20x; "
                     f"{s['speedup_vs_histogram2d_cpu']:.0f}x in CPU time)")
    if "scale" in results:
        s = results["scale"]
        parts.append(f"{s['cases']} cases MI {s['mi_s']:.1f} s ({'PASS' if s['mi_s'] <= 60 else 'FAIL'} <=60 s; "
                     f"CPU time {s['mi_cpu_s']:.1f} s), peak {s['peak_rss_mib']:.0f} MiB")
    if "pipeline" in results:
        s = results["pipeline"]
        parts.append(f"selection/preprocess {s['ratio']:.2f} ({'PASS' if s['ratio'] <= 1.5 else 'FAIL'} <=1.5)")
    print(f"bench_selection [{results['threads']} threads, load {results['load_avg']:.1f}]: " + "; ".join(parts))


if __name__ == "__main__":
    main()
