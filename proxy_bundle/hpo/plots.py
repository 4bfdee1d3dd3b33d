"""PNG plots of a finished search (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from proxy_bundle.atomic import atomic_path, ensure_dir

__all__ = ["plot_all", "plot_history", "plot_learning_curves", "plot_proxy_vs_full"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return str(path)


def plot_history(summary: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Phase-1 score per slot (pruned/failed marked), best so far, and phase-2 full-fidelity scores."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    p1 = [r for r in summary["trials"] if r["phase"] == 1 and r["state"] in ("COMPLETE", "PRUNED")]
    p1.sort(key=lambda r: (r["slot"], r["number"]))
    done = [r for r in p1 if r["state"] == "COMPLETE"]
    pruned = [r for r in p1 if r["state"] == "PRUNED"]
    label = f"phase 1 (proxy: {summary['proxy']})" if summary.get("proxy") != "none" else "full fidelity"
    ax.scatter([r["slot"] for r in done], [r["score"] for r in done], label=label, color="tab:blue", zorder=3)
    if pruned:
        ax.scatter([r["slot"] for r in pruned], [r["scores"][-1]["dice"] if r["scores"] else 0 for r in pruned],
                   marker="x", color="tab:gray", label="pruned (last reported)", zorder=3)
    best, xs, ys = float("-inf"), [], []
    for r in done:
        best = max(best, r["score"])
        xs.append(r["slot"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:blue", alpha=0.6, label="best so far")
    p2 = [r for r in summary["trials"] if r["phase"] == 2 and r["state"] == "COMPLETE"]
    if p2:
        slot_of_trial = {r["number"]: r["slot"] for r in p1}
        ax.scatter([slot_of_trial.get(r["source_trial"], -1) for r in p2], [r["score"] for r in p2],
                   marker="*", s=140, color="tab:red", label="phase 2 (full fidelity)", zorder=4)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (slot)")
    ax.set_ylabel("validation Dice")
    ax.set_title(f"Optimization history: {summary['study']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return _save(fig, Path(path))


def plot_proxy_vs_full(summary: Mapping[str, Any], path: str | os.PathLike) -> str | None:
    """Proxy score (phase 1) vs full score (phase 2) of the retrained configurations.

    Points are numbered by phase-2 rank and explained in a legend beside the axes: text next to points
    overlaps as soon as two configurations score alike, which is the common case.
    """
    pv = summary.get("proxy_vs_full")
    pairs = [p for p in (pv or {}).get("pairs", []) if p["proxy_score"] is not None and p["full_score"] is not None]
    if not pairs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, p in enumerate(sorted(pairs, key=lambda p: p["rank"])):
        ax.scatter(p["proxy_score"], p["full_score"], s=60, color=cmap(i % 10), zorder=3,
                   label=f"rank {p['rank']}: trial {p['source_trial']} "
                         f"(proxy {p['proxy_score']:.3f}, full {p['full_score']:.3f})")
    lo = min(min(p["proxy_score"], p["full_score"]) for p in pairs)
    hi = max(max(p["proxy_score"], p["full_score"]) for p in pairs)
    pad = max(0.02, 0.1 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=0.8, ls="--", label="proxy = full")
    rho = pv.get("spearman")
    ax.set_xlabel(f"proxy validation Dice ({summary['proxy']})")
    ax.set_ylabel("full-fidelity validation Dice")
    ax.set_title("Proxy vs full" + (f" (Spearman {rho:.2f})" if rho is not None else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return _save(fig, Path(path))


def plot_learning_curves(summary: Mapping[str, Any], path: str | os.PathLike) -> str | None:
    """Per-epoch validation Dice of every trial (phase 1 thin, phase 2 bold)."""
    runs = [r for r in summary["trials"] if r["scores"]]
    if not runs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        xs = [s["epoch"] for s in r["scores"]]
        ys = [s["dice"] for s in r["scores"]]
        style = dict(color="tab:red", lw=2, alpha=0.9) if r["phase"] == 2 else \
            dict(color="tab:gray" if r["state"] == "PRUNED" else "tab:blue", lw=1, alpha=0.6)
        ax.plot(xs, ys, marker=".", **style)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    from matplotlib.lines import Line2D

    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Dice")
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], color="tab:blue", lw=1, marker=".", label=f"phase 1 ({summary.get('proxy')})"),
               Line2D([], [], color="tab:gray", lw=1, marker=".", label="phase 1, pruned"),
               Line2D([], [], color="tab:red", lw=2, marker=".", label="phase 2 (full fidelity)")]
    kinds = {(r["phase"], r["state"] == "PRUNED") for r in runs}
    keep = [h for h, k in zip(handles, ((1, False), (1, True), (2, False))) if k in kinds]
    ax.legend(handles=keep, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return _save(fig, Path(path))


def plot_all(summary: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    """Write every plot that has data; returns ``{name: path}``."""
    out = ensure_dir(out_dir)
    paths = {"history_png": plot_history(summary, out / "optimization_history.png")}
    for key, fn, name in (("proxy_vs_full_png", plot_proxy_vs_full, "proxy_vs_full.png"),
                          ("curves_png", plot_learning_curves, "learning_curves.png")):
        p = fn(summary, out / name)
        if p:
            paths[key] = p
    return paths
