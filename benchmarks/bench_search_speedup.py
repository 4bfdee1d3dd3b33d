"""Two-phase proxy search vs full-fidelity search on phantoms: measured speedup and regret.

Trains K sampled configurations at full fidelity (the reference), with the proxy network, and with both proxies
(proxy network + proxy data) through the study command (every run via the search engine's trial runner), then
replays the searches from the measured table (definitions in ``proxy_bundle.study.search``):

* full-fidelity search: all K configurations at full fidelity (regret 0);
* two-phase search: all K at proxy fidelity, the proxy's top-1 retrained at full fidelity (the paper's recipe),
  and the smallest top-k that reaches the full search's regret ("speedup at equal regret").

Usage:
    python benchmarks/bench_search_speedup.py [--task spleen_ct] [--work_dir bench_work/search_speedup_spleen_ct]
        [--n_configs 8] [--epochs 12] [any other study option as --key value]
    python benchmarks/bench_search_speedup.py --results W/results.json   # summarise an existing study

Runs already stored in the work dir (for example by a full ``python -m proxy_bundle study`` with the same
settings) are reused. The last line is a one-line summary; the paper reports 3.3x (proxy network) and 4.4x
(both proxies) on real data and GPUs, these are CPU timings on phantoms.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def summary_line(results: dict) -> str:
    a = results["analysis"]
    meta = results["meta"]
    parts = []
    for name, label in (("network", "network proxy"), ("both", "both proxies"), ("short", "short training")):
        s = a["summary"]["search"].get(name)
        if not s:
            continue
        tol = a.get("tolerance", 0.0)
        parts.append(
            f"{label}: {s['k1_speedup']:.2f}x at regret {_f(s['k1_regret'])} (top-1), "
            f"{s['equal_regret_speedup']:.2f}x at regret <= {tol} (top-{s['equal_regret_top_k']})"
        )
    return (
        f"search speedup on phantom {meta['task']} (K={meta['n_configs']}, {meta['epochs']} epochs, "
        f"{meta['hardware']['cores']} CPU cores): " + "; ".join(parts) + " [paper: 3.3x network, 4.4x both]"
    )


def _f(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="spleen_ct")
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--results", default=None, help="summarise this results.json instead of running")
    parser.add_argument("--variants", default="network,both,short")
    args, extra = parser.parse_known_args(argv)
    if args.results:
        results = json.loads(Path(args.results).read_text())
    else:
        from proxy_bundle.cli import main as cli_main

        work_dir = args.work_dir or f"bench_work/search_speedup_{args.task}"
        cli_main(["study", "--task", args.task, "--work_dir", work_dir, "--variants", args.variants, *extra])
        results = json.loads((Path(work_dir) / "results.json").read_text())
    print(summary_line(results))


if __name__ == "__main__":
    sys.exit(main())
