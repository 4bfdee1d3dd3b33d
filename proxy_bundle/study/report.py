"""``report.md``, PNG figures and ``results.json`` of a study (side effects only at this edge)."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any, Mapping

from proxy_bundle.atomic import atomic_path, ensure_dir, write_json, write_text

FIGURES = {
    "scatter": "fig_scatter.png",
    "strategies": "fig_tau_by_strategy.png",
    "pareto": "fig_cost_vs_tau.png",
    "search": "fig_search_speedup.png",
}
PAPER = {"network": 3.3, "both": 4.4}  # Nath et al., MICCAI 2021: reported HPO speedups


def hardware() -> dict[str, Any]:
    """CPU model, cores, accelerator and library versions of this machine."""
    import monai
    import optuna
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "optuna": optuna.__version__,
        "platform": platform.platform(),
    }


def write_report(work_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Write results.json, the figures and report.md into ``work_dir``; returns the report path."""
    w = ensure_dir(work_dir)
    write_json(w / "results.json", results)
    figures(w, results["analysis"])
    return write_text(w / "report.md", markdown(results))


# --------------------------------------------------------------------------------------------- figures
def figures(out: Path, analysis: Mapping[str, Any]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    for key, fn in (("scatter", _scatter), ("strategies", _strategies), ("pareto", _pareto), ("search", _search)):
        fig = fn(plt, analysis)
        with atomic_path(out / FIGURES[key]) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        paths[key] = out / FIGURES[key]
    return paths


def _others(analysis: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(n, e) for n, e in analysis["variants"].items() if e["family"] != "reference"]


def _scatter(plt, analysis):
    items = _others(analysis)
    ref = analysis["reference"]["scores"]["val"]
    cols = min(4, max(1, len(items)))
    rows = max(1, math.ceil(len(items) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(items):]:
        ax.axis("off")
    for ax, (name, e) in zip(axes.flat, items):
        s = e["scores"]["val"]
        ids = sorted(set(s) & set(ref))
        ax.scatter([s[i] for i in ids], [ref[i] for i in ids], s=18, color="tab:blue")
        for i in ids:
            ax.annotate(i, (s[i], ref[i]), fontsize=6, alpha=0.7)
        tau = e["agreement"]["val"]["kendall"]
        ax.set_title(f"{name}\ntau={_f(tau)}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("variant val Dice", fontsize=7)
        ax.set_ylabel("reference val Dice", fontsize=7)
    fig.suptitle("Proxy vs reference validation Dice per configuration", fontsize=9)
    fig.tight_layout()
    return fig


def _strategies(plt, analysis):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, s in zip(axes, ("val", "ext")):
        items = [(n, e) for n, e in _others(analysis) if e["family"] != "random"]
        rand = [e["agreement"][s]["kendall"] for _, e in _others(analysis) if e["family"] == "random"]
        rand = [t for t in rand if _finite(t)]
        names = [n for n, _ in items]
        taus = [e["agreement"][s]["kendall"] for _, e in items]
        colors = {"data": "tab:blue", "network": "tab:orange", "both": "tab:green", "short": "tab:gray",
                  "repeat": "tab:purple"}
        ax.bar(range(len(items)), [t if _finite(t) else 0 for t in taus],
               color=[colors.get(e["family"], "k") for _, e in items])
        if rand:
            mean = sum(rand) / len(rand)
            ax.axhspan(min(rand), max(rand), color="tab:red", alpha=0.15, label=f"random subsets (n={len(rand)}) range")
            ax.axhline(mean, color="tab:red", lw=1, label="random mean")
            ax.legend(fontsize=7, loc="lower right")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(range(len(items)), names, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"Kendall tau vs reference ({'validation fold' if s == 'val' else 'external set'})", fontsize=9)
        ax.set_ylim(-1.05, 1.05)
    axes[0].set_ylabel("Kendall tau")
    fig.tight_layout()
    return fig


def _pareto(plt, analysis):
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = []
    for name, e in _others(analysis):
        tau = e["agreement"]["val"]["kendall"]
        if _finite(tau) and _finite(e["cost_ratio"]):
            pts.append((e["cost_ratio"], tau, name))
    for c, t, n in pts:
        ax.scatter(c, t, s=20)
        ax.annotate(n, (c, t), fontsize=6)
    front, best = [], -math.inf
    for c, t, n in sorted(pts):
        if t > best:
            front.append((c, t))
            best = t
    if front:
        ax.step([c for c, _ in front], [t for _, t in front], where="post", color="k", lw=0.8, label="Pareto front")
        ax.legend(fontsize=7)
    ax.set_xlabel("cost relative to the reference (wall-clock, all configurations)")
    ax.set_ylabel("Kendall tau (validation)")
    ax.set_title("Cost vs ranking agreement", fontsize=9)
    fig.tight_layout()
    return fig


def _search(plt, analysis):
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rs = analysis["reference"]["random_search"]
    full = analysis["reference"]["full_search_cost_s"]
    if rs:
        ax.plot([r["cost_s"] / full for r in rs], [r["expected_regret"] for r in rs], "k--", lw=1,
                label="full fidelity, random n of K (expected)")
    ax.scatter([1.0], [0.0], color="k", marker="*", s=80, zorder=3, label="full-fidelity search (K configs)")
    for name, e in _others(analysis):
        if not e.get("search") or e["family"] not in ("network", "both", "short", "data"):
            continue
        curve = e["search"]["curve"]
        style = "-" if e["family"] in ("network", "both") else ":"
        ax.plot([o["cost_s"] / full for o in curve], [o["regret"] for o in curve], style, marker="o", ms=3,
                lw=1.2 if style == "-" else 0.7, label=f"two-phase, {name} (top-k=1..K)")
    ax.set_xlabel("search cost relative to the full-fidelity search")
    ax.set_ylabel("regret (reference val Dice)")
    ax.set_title("Two-phase search: cost vs regret", fontsize=9)
    ax.legend(fontsize=6, ncol=1, loc="upper right")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- markdown
def markdown(results: Mapping[str, Any]) -> str:
    a = results["analysis"]
    meta = results["meta"]
    hw = meta["hardware"]
    summ = a["summary"]
    lines = [
        f"# Proxy study: {meta['task']}{' (phantom data)' if meta['dataset']['phantoms'] else ''}",
        "",
        ("**The data are synthetic phantoms** generated by `proxy_bundle.phantoms` "
         f"({meta['dataset']['num_cases']} training cases, {meta['dataset']['num_external']} external cases, "
         f"{meta['dataset']['size']}^3 voxels); the numbers measure the method on this benchmark, not clinical "
         "accuracy." if meta["dataset"]["phantoms"] else f"Dataset: `{meta['dataset']['path']}`."),
        "",
        f"- Command: `{meta['command']}`",
        f"- Hardware: {hw['cpu']}, {hw['cores']} cores, GPU: {hw['gpu'] or 'none'}; torch {hw['torch']} "
        f"({hw['torch_threads']} threads), MONAI {hw['monai']}, Optuna {hw['optuna']}, Python {hw['python']}",
        f"- Wall-clock of the study: {_study_wall(meta) / 60:.1f} min over {len(meta.get('invocations', [])) or 1} "
        f"invocation(s) (this one: {meta['wall_s'] / 60:.1f} min, {meta['runs_trained']} runs trained, "
        f"{meta['runs_reused']} reused)",
        f"- {meta['n_configs']} configurations sampled (seed {meta['seed']}), {meta['epochs']} epochs at full "
        f"fidelity, proxy network width x{meta['width']}, proxy data fraction {meta['fraction']}, "
        f"validation fold {meta['fold']} ({meta['n_val']} cases), {meta['n_train']} training cases.",
        f"- Full network: the template's SegResNetDS with {meta.get('init_filters', '?')} initial filters; validation "
        f"every {meta.get('val_every', 1)} epochs; trials run {meta.get('workers', 1)} at a time, "
        f"{meta.get('threads') or 'default'} CPU thread(s) each (costs are per-trial wall-clock under that load).",
        "",
        "## Definitions",
        "",
        "- *Reference*: full network, full training data. Every configuration is trained at every variant.",
        "- *Agreement* (per evaluation set): Kendall tau-b and Spearman rho between a variant's Dice and the "
        "reference's Dice of the same configurations; top-k overlap = share of the reference's top-k found in the "
        "variant's top-k; regret = reference Dice of the reference-best configuration minus reference Dice of the "
        "variant-best configuration (expected value over ties).",
        "- *val*: best mean Dice on the held-out validation fold during training (what a search observes). "
        "*ext*: Dice of the same checkpoint on the external set.",
        "- *Cost*: wall-clock seconds of the trials (process start-up, data preparation, training, validation).",
        "- *Two-phase search* (replayed from the measured table): phase 1 trains all K configurations at the proxy "
        "fidelity, phase 2 retrains the proxy's top-k at full fidelity and keeps the best by reference validation "
        "Dice. Its cost = sum of the phase-1 costs + the reference costs of the top-k. *Full-fidelity search* = "
        "all K configurations at full fidelity (regret 0). *Speedup* = full-fidelity cost / two-phase cost. "
        "*Speedup at equal regret* uses the cheapest top-k whose regret is <= "
        f"{a['tolerance']} Dice (the full search's regret, 0, plus a tolerance for configurations that tie within "
        "training noise); *exact best* uses the cheapest top-k that finds the reference-best configuration itself.",
        f"- *short*: full fidelity for {meta['short_epochs']} epochs, the same number of training iterations as "
        "a proxy-data run: the equal-cost baseline.",
        "",
        "## Headline",
        "",
        *headline_table(results),
        "",
        "## All variants",
        "",
        "| variant | runs | cost vs reference | tau val | rho val | tau ext | rho ext | "
        f"top{a['k']} val | regret val | regret ext | two-phase k=1 speedup / regret |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    topk = f"top{a['k']}_overlap"
    for name, e in a["variants"].items():
        ag_v, ag_e = e["agreement"]["val"], e["agreement"]["ext"]
        srch = e.get("search", {}).get("k1")
        sp = f"{srch['speedup']:.2f}x / {srch['regret']:.3f}" if srch else "-"
        lines.append(
            f"| {name} | {e['n_runs']} | {_f(e['cost_ratio'], 2)} | {_f(ag_v['kendall'])} | {_f(ag_v['spearman'])} "
            f"| {_f(ag_e['kendall'])} | {_f(ag_e['spearman'])} | {_f(ag_v[topk], 2)} "
            f"| {_f(ag_v['regret'], 3)} | {_f(ag_e['regret'], 3)} | {sp} |"
        )
    lines += [
        "",
        "## README row (Kendall tau on the external set; two-phase search with top-1, regret in reference "
        "validation Dice)",
        "",
        *README_HEADER,
        readme_row(results),
    ]
    ref_val = sorted(a["reference"]["scores"]["val"].values(), reverse=True)
    if ref_val:
        near = sum(1 for x in ref_val if ref_val[0] - x <= 0.02)
        lines += [
            "",
            f"Reference validation Dice spans {ref_val[-1]:.3f}-{ref_val[0]:.3f}; {near} of {len(ref_val)} "
            "configurations are within 0.02 of the best. Configurations that close rank by training noise as much "
            "as by their settings, which caps the Kendall tau any proxy can reach (the opt-in `repeat` variant "
            "measures that ceiling).",
        ]
    lines += [
        "",
        "## Reference scores",
        "",
        "| config | " + " | ".join(sorted(results["configs"][0]["params"])) + " | val Dice | ext Dice | cost s |",
        "|---|" + "---|" * (len(results["configs"][0]["params"]) + 3),
    ]
    ref = a["reference"]
    for c in results["configs"]:
        p = c["params"]
        lines.append(
            f"| {c['id']} | " + " | ".join(_fmt_param(p[k]) for k in sorted(p)) + f" | {_f(ref['scores']['val'].get(c['id']), 3)}"
            f" | {_f(ref['scores']['ext'].get(c['id']), 3)} | {_f(ref['costs'].get(c['id']), 1)} |"
        )
    failed = results.get("failed", [])
    if failed:
        lines += ["", "## Failed runs (left out of every number)", ""]
        lines += [f"- {f['variant']} / {f['config_id']}: {f['error']}" for f in failed]
    lines += [
        "",
        "## Figures",
        "",
        f"![proxy vs reference]({FIGURES['scatter']})",
        "",
        f"![tau by strategy]({FIGURES['strategies']})",
        "",
        f"![cost vs tau]({FIGURES['pareto']})",
        "",
        f"![search speedup]({FIGURES['search']})",
        "",
    ]
    return "\n".join(lines)


def headline_table(results: Mapping[str, Any]) -> list[str]:
    """The README rows: proxy data (best strategy) vs random, proxy network, two-phase searches."""
    a = results["analysis"]
    s = a["summary"]
    v = a["variants"]
    rows = ["| measure | validation fold | external set |", "|---|---|---|"]
    best_v, best_e = s["val"]["best_data_variant"], s["ext"]["best_data_variant"]
    rows.append(
        f"| tau, proxy data, best strategy | {_f(s['val']['best_data_tau'])} ({best_v}) "
        f"| {_f(s['ext']['best_data_tau'])} ({best_e}) |"
    )
    rows.append(
        f"| tau, random subsets mean ± sd [min, max] (n={s['val']['n_random']}) | {_spread(s['val'])} | {_spread(s['ext'])} |"
    )
    for name in ("network", "both", "short", "repeat"):
        if name in v:
            rows.append(
                f"| tau, {name} | {_f(v[name]['agreement']['val']['kendall'])} | {_f(v[name]['agreement']['ext']['kendall'])} |"
            )
    rows += ["", "| two-phase search | speedup top-k=1 | regret (val / ext Dice) "
             f"| speedup at equal regret <= {a['tolerance']} (top-k) | speedup, exact best (top-k) | paper |",
             "|---|---|---|---|---|---|"]
    for name, srch in s["search"].items():
        if v[name]["family"] not in ("network", "both", "short"):
            continue
        paper = f"{PAPER[name]}x" if name in PAPER else "-"
        rows.append(
            f"| {name} | {srch['k1_speedup']:.2f}x | {_f(srch['k1_regret'], 3)} / {_f(srch['k1_ext_regret'], 3)} "
            f"| {srch['equal_regret_speedup']:.2f}x ({srch['equal_regret_top_k']}) "
            f"| {srch['exact_best_speedup']:.2f}x ({srch['exact_best_top_k']}) | {paper} |"
        )
    n_data = sum(1 for e in v.values() if e["family"] == "data")
    if n_data and s["val"]["n_random"]:
        rows += ["", f"The best proxy-data strategy {_beats(s['val'])} on the validation fold and "
                 f"{_beats(s['ext'])} on the external set. It is the best of {n_data} strategies picked after the "
                 "fact, so compare it with the best random subset, not only with the random mean. Strategies above "
                 f"the random mean (validation): {', '.join(s['val']['data_variants_above_random_mean']) or 'none'}."]
    return rows


def _beats(s: Mapping[str, Any]) -> str:
    if s["data_beats_random_max"]:
        return "beats every random subset"
    if _finite(s["best_data_tau"]) and _finite(s["random_tau_mean"]) and s["best_data_tau"] > s["random_tau_mean"]:
        return "beats the random mean but not every random subset"
    return "does NOT beat the random subsets"


README_HEADER = [
    "| task | tau proxy data, best strategy | tau random subsets, mean ± sd [min, max] | tau proxy network "
    "| tau both | two-phase speedup / regret, network (paper 3.3x) | two-phase speedup / regret, both (paper 4.4x) "
    "| study wall-clock |",
    "|---|---|---|---|---|---|---|---|",
]


def readme_row(results: Mapping[str, Any], which: str = "ext") -> str:
    """One line of the README results table (Kendall tau on the ``which`` evaluation set; top-1 searches)."""
    a = results["analysis"]
    s = a["summary"][which]
    v = a["variants"]
    srch = a["summary"]["search"]

    def tau(name: str) -> str:
        return _f(v[name]["agreement"][which]["kendall"]) if name in v else "-"

    def search(name: str) -> str:
        x = srch.get(name)
        return f"{x['k1_speedup']:.2f}x / {_f(x['k1_regret'], 3)}" if x else "-"

    best = f"{_f(s['best_data_tau'])} ({s['best_data_variant']})" if s["best_data_variant"] else "-"
    return (f"| {results['meta']['task']} | {best} | {_spread(s)} | {tau('network')} | {tau('both')} "
            f"| {search('network')} | {search('both')} | {_study_wall(results['meta']) / 60:.0f} min |")


def _study_wall(meta: Mapping[str, Any]) -> float:
    """Seconds spent on the study over every invocation (a resumed study adds up its parts)."""
    parts = meta.get("invocations") or []
    return float(sum(p["wall_s"] for p in parts)) if parts else float(meta["wall_s"])


def _spread(s: Mapping[str, Any]) -> str:
    return (f"{_f(s['random_tau_mean'])} ± {_f(s['random_tau_sd'])} "
            f"[{_f(s['random_tau_min'])}, {_f(s['random_tau_max'])}]")


def _fmt_param(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def _f(x: Any, nd: int = 2) -> str:
    return f"{x:.{nd}f}" if _finite(x) else "n/a"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))
