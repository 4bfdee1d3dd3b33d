"""Cost-model speed and fidelity (claim: every network is measured at 96^3 in < 1 s on the meta device, with counts
identical to a real run).

Usage: python benchmarks/bench_network_cost.py [--roi 96] [--check_roi 32] [--device cpu|cuda] [--budget 1.0]
For each network: time of measure_cost on the meta device at --roi (after the small check run has warmed up the operators), and the same step on
real tensors at --check_roi compared with the meta counts. On CUDA it also compares the measured activation bytes
with the growth of torch.cuda.memory_allocated() over the forward pass. Prints a one-line summary; exit code 1
when a meta measurement takes longer than --budget seconds or the counts differ.
"""

from __future__ import annotations

import argparse
import time

import torch

from proxy_bundle.networks.cost import measure_cost
from proxy_bundle.networks.scaling import NETWORKS, ProxySpec, scaled_network

BASE = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}


def cuda_forward_bytes(name: str, roi: int) -> int:
    """Growth of allocated CUDA memory over one training forward pass (what the backward pass will consume)."""
    net = scaled_network(name, BASE, ProxySpec()).cuda().train()
    x = torch.zeros((1, 1, roi, roi, roi), device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out = net(x)
    loss = sum(o.float().sum() for o in (out if isinstance(out, (list, tuple)) else [out]))
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - before
    del loss, out
    return grown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roi", type=int, default=96)
    ap.add_argument("--check_roi", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds allowed per meta measurement")
    args = ap.parse_args()

    worst, mismatches = 0.0, []
    for name in NETWORKS:
        meta = measure_cost(name, BASE, args.check_roi)  # also warms up this network's operators
        t0 = time.perf_counter()
        full = measure_cost(name, BASE, args.roi)
        dt = time.perf_counter() - t0
        worst = max(worst, dt)
        real = measure_cost(name, BASE, args.check_roi, device=args.device)
        same = meta == real
        if not same:
            mismatches.append(name)
        line = (f"{name:12s} {args.roi}^3: {full.params:>11,} params {full.gflops:9.2f} GFLOPs "
                f"{full.activation_mb:8.1f} MB saved  measured in {dt:5.2f} s;  "
                f"{args.check_roi}^3 meta == {args.device}: {same}")
        if args.device == "cuda":
            grown = cuda_forward_bytes(name, args.roi)
            line += f";  CUDA forward growth {grown / 2**20:.1f} MB ({grown / full.activation_bytes:.3f} x model)"
        print(line, flush=True)
    ok = worst <= args.budget and not mismatches
    print(f"summary: slowest meta measurement at {args.roi}^3 {worst:.2f} s (budget {args.budget:g} s); "
          f"meta vs {args.device} counts at {args.check_roi}^3 "
          f"{'identical for all networks' if not mismatches else 'differ for ' + ', '.join(mismatches)}"
          f" -> {'PASS' if ok else 'FAIL'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
