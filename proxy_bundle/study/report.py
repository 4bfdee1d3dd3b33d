"""``report.md``, PNG figures and ``results.json`` of a study (side effects only at this edge)."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

from proxy_bundle.atomic import atomic_path, ensure_dir, write_json, write_text

FIGURES = {"regret": "fig_regret_vs_cost.png", "agreement": "fig_agreement.png"}
BASELINE_NAMES = ("random search", "ASHA", "Hyperband")


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


def hardware_summary(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The distinct machines that trained the table's runs, with how many runs each."""
    seen: dict[str, dict[str, Any]] = {}
    for r in runs:
        h = r.get("hardware") or {}
        key = f"{h.get('gpu') or 'no GPU'} | {h.get('cpu')} | {h.get('cores')} cores | torch {h.get('torch')}"
        seen.setdefault(key, {"machine": key, **h, "runs": 0})["runs"] += 1
    return list(seen.values())


def write_report(work_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Write results.json, the figures and report.md into ``work_dir``; returns the report path."""
    w = ensure_dir(work_dir)
    write_json(w / "results.json", results)
    figures(w, results)
    return write_text(w / "report.md", markdown(results))


# --------------------------------------------------------------------------------------------- figures
def figures(out: Path, results: Mapping[str, Any]) -> dict[str, Path]:
    """``fig_regret_vs_cost.png`` (baselines and the best method per proxy, 95% bands) and
    ``fig_agreement.png`` (Kendall tau with intervals next to the noise ceiling)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    for key, fn in (("regret", _regret_fig), ("agreement", _agreement_fig)):
        fig = fn(plt, results)
        with atomic_path(out / FIGURES[key]) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        paths[key] = out / FIGURES[key]
    return paths


def headline_methods(analysis: Mapping[str, Any]) -> list[str]:
    """The baselines, then per proxy variant the method (two-phase or ASHA-proxy, any top-k) with the lowest
    expected regret at 1/8 of the full cost, best first."""
    rows = analysis.get("budget_table") or []
    base = [r["method"] for r in rows if r["method"] in BASELINE_NAMES]
    best: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        if r["proxy"] is None:
            continue
        cur = best.get(r["proxy"])
        if cur is None or (r["0.125"]["mean"], r["0.125"]["upper"]) < (cur["0.125"]["mean"], cur["0.125"]["upper"]):
            best[r["proxy"]] = r
    prox = sorted(best.values(), key=lambda r: (r["0.125"]["mean"], r["0.125"]["upper"]))
    return base + [r["method"] for r in prox]


def _regret_fig(plt, results):
    a = results["analysis"]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    names = headline_methods(a)
    shown = [n for n in names if n in BASELINE_NAMES] + [n for n in names if n not in BASELINE_NAMES][:4]
    for i, n in enumerate(shown):
        r = a["replay"][n]
        style = "--" if n in BASELINE_NAMES else "-"
        line, = ax.plot(r["fractions"], r["mean"], style, lw=1.6, label=n, color=f"C{i}")
        ax.fill_between(r["fractions"], r["lower"], r["upper"], color=line.get_color(), alpha=0.12, lw=0)
    for b in (0.125, 0.25, 0.5):
        ax.axvline(b, color="0.6", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(0.02, 1.5)
    ax.set_xlabel("cost (fraction of the full-fidelity search over all K configurations)")
    ax.set_ylabel("expected regret (reference val Dice)")
    ax.set_title(f"{results['meta']['task']}: expected regret vs cost, K={a['n_configs']}, "
                 f"{a['replay_seeds']} orderings, 95% bootstrap bands", fontsize=9)
    if shown:  # a legend only for what is drawn
        ax.legend(fontsize=7, loc="upper right")
    else:
        ax.text(0.5, 0.5, "fewer than 3 complete configurations: nothing to replay yet", transform=ax.transAxes,
                ha="center", va="center", fontsize=9, color="0.4")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _agreement_fig(plt, results):
    a = results["analysis"]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    names = list(a.get("agreement", {}))
    for j, s in enumerate(_sets(a)):
        taus = [a["agreement"][n][s]["kendall"] for n in names]
        lo = [a["agreement"][n][s]["kendall_ci"][0] for n in names]
        hi = [a["agreement"][n][s]["kendall_ci"][1] for n in names]
        x = [i + (j - 0.5) * 0.3 for i in range(len(names))]
        err = [[_nz(t - l) for t, l in zip(taus, lo)], [_nz(h - t) for t, h in zip(taus, hi)]]
        ax.errorbar(x, taus, yerr=err, fmt="o", ms=4, capsize=2, label=f"{s} set", color=f"C{j}")
    nc = a.get("noise_ceiling")
    if nc:
        ax.axhline(nc["val"]["kendall"], color="k", lw=0.8, ls="--", label="noise ceiling (val)")
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("Kendall tau vs reference")
    ax.set_title("Rank agreement with 95% bootstrap intervals", fontsize=9)
    if names:  # a legend only for what is drawn
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _nz(x: float) -> float:
    return max(0.0, x) if _finite(x) else 0.0


# --------------------------------------------------------------------------------------------- markdown
def budget_rows(analysis: Mapping[str, Any], names: Sequence[str] | None = None) -> list[str]:
    """Markdown table: expected regret [95% band] at 1/8, 1/4 and 1/2 of the full search's cost."""
    by = {r["method"]: r for r in analysis.get("budget_table") or []}
    names = list(names) if names is not None else list(by)
    out = ["| method | regret at 1/8 cost | at 1/4 | at 1/2 |", "|---|---|---|---|"]
    for n in names:
        r = by[n]
        cells = [f"{r[b]['mean']:.3f} [{r[b]['lower']:.3f}, {r[b]['upper']:.3f}]" for b in ("0.125", "0.25", "0.5")]
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return out


def verdict(analysis: Mapping[str, Any]) -> str:
    """One sentence: the winner at 1/8 of the cost and whether a baseline beats every proxy method."""
    w = analysis.get("winner")
    if not w:
        return "Too few complete configurations to replay searches."
    text = (f"Lowest expected regret at 1/8 of the full search's cost: **{w['method']}** "
            f"({w['regret']['mean']:.3f} [{w['regret']['lower']:.3f}, {w['regret']['upper']:.3f}]).")
    b, p = w.get("best_baseline"), w.get("best_proxy")
    if b and p:
        if w["baseline_beats_every_proxy"]:
            text += (f" **A baseline beats every proxy method here**: {b['method']} "
                     f"{b['regret']['mean']:.3f} vs the best proxy method, {p['method']}, {p['regret']['mean']:.3f}.")
        else:
            text += (f" Best baseline: {b['method']} {b['regret']['mean']:.3f}; best proxy method: {p['method']} "
                     f"{p['regret']['mean']:.3f}.")
        overlap = p["regret"]["lower"] <= b["regret"]["upper"] and b["regret"]["lower"] <= p["regret"]["upper"]
        if overlap:
            text += " Their 95% bands overlap, so this difference is not resolved by K configurations."
    return text


def _ci(x: Sequence[float] | None) -> str:
    return f"[{_f(x[0])}, {_f(x[1])}]" if x else ""


def _p(x: float) -> str:
    return "-" if not _finite(x) else (f"{x:.3f}" if x >= 0.001 else "<0.001")


def _sets(a: Mapping[str, Any]) -> list[str]:
    """The case lists agreement was measured on (results without the entry had both)."""
    return list(a.get("sets") or ("val", "ext"))


def markdown(results: Mapping[str, Any]) -> str:
    meta, a = results["meta"], results["analysis"]
    ds = meta["dataset"]
    lines = [f"# Proxy benchmark: {meta['task']}" + (" (phantom data)" if ds.get("phantoms") else ""), ""]
    if "ext" not in _sets(a):
        lines += ["**No external set**: the dataset has no `external.json`, so every agreement and regret figure "
                  f"is measured on validation fold {meta.get('fold', 0)} only ({meta.get('n_val')} cases), the same "
                  "cases the configurations were selected on; expect it to be optimistic.", ""]
    if ds.get("phantoms"):
        lines += [f"**The data are synthetic phantoms** generated by `proxy_bundle.phantoms` ({ds['num_cases']} "
                  f"training cases, {ds['num_external']} external cases, {ds['size']}^3 voxels); the numbers measure "
                  "the method on this benchmark, not clinical accuracy.", ""]
    planned = meta["n_configs"]
    lines += [
        f"- Command: `{meta['command']}`",
        f"- Table: {a['n_configs']} complete configurations of {planned} planned x {len(results['variants'])} "
        f"variants ({len(results['runs'])} runs stored; a later invocation with the same command resumes and "
        "extends it).",
        "- Hardware: " + "; ".join(f"{h['machine']} ({h['runs']} runs)" for h in results.get("hardware") or []),
        f"- Wall-clock of the study: {_study_wall(meta) / 60:.1f} min over "
        f"{len(meta.get('invocations', [])) or 1} recorded invocation(s); runs trained by: "
        + ("; ".join(sorted({f"`{i['command']}` ({i['runs_trained']} runs)" for i in meta.get("invocations") or []
                             if i.get("runs_trained")})) or "earlier invocations (see the table's runs)") + ".",
        f"- Full fidelity: the template's SegResNetDS with {meta.get('init_filters')} initial filters, "
        f"{meta['epochs']} epochs, validation every {meta.get('val_every', 1)} epoch(s), roi "
        f"{meta.get('roi') or 'from the data'}; proxy network widths {meta.get('widths')}, proxy data fraction "
        f"{meta['fraction']}, short training {meta.get('short_epochs')} epochs.",
        "- Cost: " + ("process CPU seconds of training and validation (load-independent)" if _basis(results) ==
                      "cpu_process" else "device seconds of training and validation on a dedicated device")
        + "; the trial process start-up is " + ("included" if a.get("include_startup") else
                                                "excluded (long-lived search workers do not pay it per trial)")
        + f". Replays: {a['replay_seeds']} random orderings per method, 95% bands from {a['bootstrap']} "
        "bootstrap resamples of the configurations.",
        "",
        "## Expected regret vs cost",
        "",
        f"![regret vs cost]({FIGURES['regret']})",
        "",
        verdict(a),
        "",
    ]
    if a.get("budget_table"):
        lines += budget_rows(a, headline_methods(a)) + [""]
    lines += [
        "Regret = best reference validation Dice among the K configurations minus that of the configuration the "
        "method returns at that cost; before a method has a result it returns a random configuration. "
        "*random search*: full fidelity in random order. *ASHA* (Li et al., MLSys 2020) and *Hyperband* (Li et al., "
        f"JMLR 2018), eta={a['eta']}, from the stored per-epoch curves of the full-fidelity runs. *two-phase P top-k*: "
        "all K at proxy fidelity P, the top-k retrained at full fidelity (Nath et al., MICCAI 2021). *ASHA-proxy P "
        "top-k*: ASHA at proxy fidelity P, its top-k retrained at full fidelity. The table shows the baselines and, "
        "per proxy, its best method at 1/8 of the cost; every method is in the last section and in results.json.",
        "",
        "## Rank agreement with the reference, next to the noise ceiling",
        "",
        f"![agreement]({FIGURES['agreement']})",
        "",
        "| variant | cost vs reference | tau val [95% CI] | p | rho val [95% CI] | p | tau ext [95% CI] | "
        f"top{a['k']} val | regret val |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    topk = f"top{a['k']}_overlap"
    for n, ag in (a.get("agreement") or {}).items():
        v, e = ag["val"], ag.get("ext") or {"kendall": None, "kendall_ci": None}
        label = f"{n} (noise ceiling)" if n == "repeat" else n
        lines.append(
            f"| {label} | {_f(a['costs'][n]['cost_fraction'])} | {_f(v['kendall'])} {_ci(v['kendall_ci'])} | "
            f"{_p(v['kendall_p'])} | {_f(v['spearman'])} {_ci(v['spearman_ci'])} | {_p(v['spearman_p'])} | "
            f"{_f(e['kendall'])} {_ci(e['kendall_ci'])} | {_f(v.get(topk))} | "
            f"{_f(v['regret'], 3)} |")
    lines += [
        "",
        "p: two-sided test of no association (scipy.stats). The noise ceiling is the reference trained again with "
        "another seed: a proxy cannot be expected to rank configurations better than that.",
        "",
        "## Every replayed method",
        "",
    ]
    if a.get("budget_table"):
        lines += budget_rows(a) + [""]
    lines += ["## Reference scores", ""]
    params = sorted({k for c in results["configs"] for k in c["params"]})
    ref = {r["config_id"]: r for r in results["runs"] if r["variant"] == "reference" and r.get("status") == "ok"}
    rep = {r["config_id"]: r for r in results["runs"] if r["variant"] == "repeat" and r.get("status") == "ok"}
    lines.append("| config | " + " | ".join(params) + " | val Dice | repeat val Dice | ext Dice | cost s |")
    lines.append("|---" * (len(params) + 5) + "|")
    for c in results["configs"]:
        r = ref.get(c["id"])
        if r is None:
            continue
        lines.append(f"| {c['id']} | " + " | ".join(_fmt_param(c["params"].get(k)) for k in params)
                     + f" | {_f(r.get('val_dice'), 3)} | {_f((rep.get(c['id']) or {}).get('val_dice'), 3)} | "
                     f"{_f(r.get('ext_dice'), 3)} | {_f(r.get('train_cost_s'), 1)} |")
    return "\n".join(lines) + "\n"


def _basis(results: Mapping[str, Any]) -> str:
    bases = {r.get("cost_basis") for r in results["runs"] if r.get("status") == "ok"}
    return "cpu_process" if bases == {"cpu_process"} else ("device_wall" if "device_wall" in bases else "mixed")


def headline_table(results: Mapping[str, Any]) -> list[str]:
    """The lines the command prints: the verdict and the 1/8-1/4-1/2 table of the headline methods."""
    a = results["analysis"]
    if not a.get("budget_table"):
        return [verdict(a)]
    return budget_rows(a, headline_methods(a)) + [verdict(a)]


def _study_wall(meta: Mapping[str, Any]) -> float:
    """Seconds spent on the study over every invocation (a resumed study adds up its parts)."""
    parts = meta.get("invocations") or []
    return float(sum(p["wall_s"] for p in parts)) if parts else float(meta["wall_s"])


def _fmt_param(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def _f(x: Any, nd: int = 2) -> str:
    return f"{x:.{nd}f}" if _finite(x) else "n/a"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))
