"""Expected regret of the searches at 1/8, 1/4 and 1/2 of the full-fidelity search's cost, from the benchmark table.

Trains (or resumes) the study's tabular benchmark through ``python -m proxy_bundle study`` and prints the
replayed searches (definitions in ``proxy_bundle.study.replay``): random search, ASHA and Hyperband at full
fidelity, and per proxy its best two-phase / ASHA-proxy method, each with a 95% bootstrap band.

Usage:
    python benchmarks/bench_search_speedup.py [--task spleen_ct] [--work_dir bench_work/search_speedup_spleen_ct]
        [any study option as --key value]
    python benchmarks/bench_search_speedup.py --results docs/study_results/<task>/results.json   # summarise
    python benchmarks/bench_search_speedup.py --results docs/study_results/spleen_ct/results.json \
        --results docs/study_results/prostate_mr/results.json     # and rank the methods over both tasks

The last line is a one-line summary: the lowest expected regret at 1/8 of the cost, the best baseline and
the best proxy method there. With several results files, the methods that every table has are also ranked by
their expected regret at 1/8 of the cost averaged over the tasks (the product's default follows the first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def summary_line(results: dict) -> str:
    """One line: winner, best baseline and best proxy method at 1/8 of the full search's cost."""
    a = results["analysis"]
    w = a.get("winner")
    meta = results["meta"]
    head = f"search regret at 1/8 cost on {meta['task']} (K={a['n_configs']} configurations)"
    if not w:
        return head + ": too few complete configurations"

    def fmt(x: dict) -> str:
        r = x["regret"]
        return f"{x['method']} {r['mean']:.3f} [{r['lower']:.3f}, {r['upper']:.3f}]"

    return (f"{head}: lowest {fmt(w)}; best baseline {fmt(w['best_baseline'])}; best proxy {fmt(w['best_proxy'])}"
            + ("; a baseline beats every proxy" if w["baseline_beats_every_proxy"] else ""))


def across_tasks(all_results: list[dict], budget: float = 0.125, top: int = 10) -> list[str]:
    """Methods present in every results file, ranked by expected regret at ``budget`` (fraction of the full
    search's cost) averaged over the tasks; one line per method with the per-task regrets."""
    names = [r["meta"]["task"] for r in all_results]
    common = [m for m in all_results[0]["replay"] if all(m in r["replay"] for r in all_results)]
    rows = []
    for m in common:
        per_task = []
        for r in all_results:
            rep = r["replay"][m]
            i = min(range(len(rep["fractions"])), key=lambda j: abs(rep["fractions"][j] - budget))
            per_task.append(float(rep["mean"][i]))
        rows.append((sum(per_task) / len(per_task), m, per_task))
    rows.sort()
    out = [f"expected regret at {budget:g} of the full search's cost, mean over {', '.join(names)}:"]
    for mean, m, per_task in rows[:top]:
        out.append(f"  {m:<40} {mean:.3f}  (" + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, per_task)) + ")")
    if rows:
        out.append(f"lowest mean expected regret at {budget:g} cost over {len(names)} tasks: {rows[0][1]} "
                   f"({rows[0][0]:.3f})")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="spleen_ct")
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--results", action="append", default=None,
                        help="summarise this results.json instead of running (repeat: rank methods over the tasks)")
    args, extra = parser.parse_known_args(argv)
    if args.results and len(args.results) > 1:
        from proxy_bundle.study.report import headline_table

        all_results = [json.loads(Path(f).read_text()) for f in args.results]
        for results in all_results:
            print("\n".join(headline_table(results)))
            print(summary_line(results))
        print("\n".join(across_tasks(all_results)))
        return None
    if args.results:
        results = json.loads(Path(args.results[0]).read_text())
    else:
        from proxy_bundle.cli import main as cli_main

        work_dir = args.work_dir or f"bench_work/search_speedup_{args.task}"
        cli_main(["study", "--task", args.task, "--work_dir", work_dir, *extra])
        results = json.loads((Path(work_dir) / "results.json").read_text())
    from proxy_bundle.study.report import headline_table

    print("\n".join(headline_table(results)))
    print(summary_line(results))


if __name__ == "__main__":
    sys.exit(main())
