"""Selection report: which cases a proxy-data selection picked and why, readable without joining files by hand.

Written by ``select`` and ``analyze`` next to the proxy datalist (``<stem>_report/``):

* ``selection_report.md``: the strategy in one sentence, every candidate with its mean similarity score and rank
  (picked ones marked), and a breakdown by every grouping found in the data's metadata (e.g. acquisition site);
* ``similarity_heatmap.png``: the candidates' pairwise similarity matrix, grouped, picks marked;
* ``embedding.png``: a 2D embedding of the candidates (classical multidimensional scaling of the similarity
  distance ``d_ij = (s_ii + s_jj) / 2 - s_ij``, Torgerson 1952), coloured by group, picks ringed;
* ``groups.png``: candidates and picks per group;
* ``thumbnails.png``: the slice with the most foreground of each picked case, with the label outlined.

Metadata: scalar fields of the datalist entries other than ``image``/``label``/``fold``, and per-case records of
any JSON file in the data root with a ``cases`` mapping keyed by case id (as the phantoms' ``phantom_meta.json``).
A field is a grouping when it takes between 2 and ``n - 1`` distinct string or boolean values over the candidates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from proxy_bundle.atomic import atomic_path, ensure_dir, write_text

__all__ = ["case_metadata", "embed_2d", "groupings", "report_dir", "report_line", "write_selection_report"]

STRATEGY_WHY = {
    "representative": "the cases with the highest mean similarity to the other candidates (the most typical)",
    "diverse": "the cases with the lowest mean similarity to the other candidates (the most atypical)",
    "coverage": "k medoids of the similarity distance, so that every candidate has a similar case among the picks",
    "random": "a seeded uniform sample (a baseline, similarity plays no part)",
}
_SKIP = {"image", "label", "fold"}


def case_metadata(dataroot: str | os.PathLike, cases: Sequence[Mapping[str, Any]],
                  datalist: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """``{case id: {field: value}}`` from metadata files in ``dataroot`` and the ``datalist`` entries' own fields."""
    from proxy_bundle.selection.subset import case_id

    ids = [str(c["id"]) for c in cases]
    meta: dict[str, dict[str, Any]] = {i: {} for i in ids}
    root = Path(dataroot)
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        records = data.get("cases") if isinstance(data, dict) else None
        if not isinstance(records, dict) or not set(ids) & set(records):
            continue
        for i in ids:
            rec = records.get(i)
            if isinstance(rec, dict):
                meta[i].update({k: v for k, v in rec.items() if k not in _SKIP and _scalar(v)})
    try:
        entries = json.loads(Path(datalist).read_text()).get("training", []) if datalist else []
    except (OSError, ValueError, AttributeError):
        entries = []
    for e in entries:
        if isinstance(e, dict) and "image" in e and case_id(e) in meta:
            meta[case_id(e)].update({k: v for k, v in e.items() if k not in _SKIP and _scalar(v)})
    return meta


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, bool)) or v is None


def groupings(meta: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Fields usable as groupings: ``{field: {case id: value as text}}`` (2..n-1 distinct values, all present)."""
    n = len(meta)
    fields = sorted({k for m in meta.values() for k, v in m.items() if isinstance(v, (str, bool))})
    out = {}
    for f in fields:
        values = {i: m.get(f) for i, m in meta.items()}
        if any(v is None for v in values.values()):
            continue
        distinct = {str(v) for v in values.values()}
        if 2 <= len(distinct) <= max(2, n - 1):
            out[f] = {i: str(v) for i, v in values.items()}
    # The acquisition site first: it is what a proxy subset most often fails to cover.
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != "site", kv[0])))


def embed_2d(similarity: np.ndarray) -> np.ndarray:
    """Classical MDS (Torgerson 1952) of ``d_ij = (s_ii + s_jj) / 2 - s_ij``; ``(n, n) -> (n, 2)`` coordinates.

    Fewer than 3 cases, or a degenerate spectrum, gives zeros in the missing dimensions.
    """
    s = np.asarray(similarity, dtype=np.float64)
    n = s.shape[0]
    if n < 2:
        return np.zeros((n, 2))
    diag = np.diag(s)
    d = np.clip((diag[:, None] + diag[None, :]) / 2 - s, 0.0, None)
    j = np.eye(n) - np.ones((n, n)) / n
    b = -0.5 * j @ (d ** 2) @ j
    w, v = np.linalg.eigh(b)
    order = np.argsort(w)[::-1][:2]
    coords = v[:, order] * np.sqrt(np.clip(w[order], 0.0, None))
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    cmap = _pyplot().get_cmap("tab10")
    return {g: cmap(i % 10) for i, g in enumerate(sorted(set(labels)))}


def _heatmap(sim: np.ndarray, ids: list[str], picked: set[str], group: dict[str, str] | None, path: Path) -> Path:
    plt = _pyplot()
    order = sorted(range(len(ids)), key=lambda i: ((group or {}).get(ids[i], ""), ids[i]))
    m = sim[np.ix_(order, order)].copy()
    np.fill_diagonal(m, np.nan)  # self-similarity dwarfs the rest of the scale
    size = max(4.5, 0.32 * len(ids) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(m, cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="similarity")
    names = [ids[i] + (" *" if ids[i] in picked else "") for i in order]
    fs = 8 if len(ids) <= 30 else 5
    ax.set_xticks(range(len(ids)), names, rotation=90, fontsize=fs)
    ax.set_yticks(range(len(ids)), names, fontsize=fs)
    for lab in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        if lab.get_text().endswith(" *"):
            lab.set_color("tab:red")
            lab.set_fontweight("bold")
    if group:
        cols = _colors(list(group.values()))
        for k, i in enumerate(order):
            ax.add_patch(plt.Rectangle((-1.6, k - 0.5), 0.9, 1.0, color=cols[group[ids[i]]], clip_on=False))
        ax.set_xlim(-1.7, len(ids) - 0.5)
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=c, label=g) for g, c in cols.items()], fontsize=7, loc="upper left",
                  bbox_to_anchor=(0.0, -0.22 if len(ids) <= 30 else -0.12), ncol=min(4, len(cols)), frameon=False)
    ax.set_title("Pairwise similarity (picked cases in red, *)")
    return _save(fig, path)


def _embedding(xy: np.ndarray, ids: list[str], picked: set[str], group: dict[str, str] | None,
               group_name: str | None, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    labels = [group[i] for i in ids] if group else ["cases"] * len(ids)
    cols = _colors(labels)
    for g in sorted(cols):
        idx = [k for k, lab in enumerate(labels) if lab == g]
        ax.scatter(xy[idx, 0], xy[idx, 1], s=40, color=cols[g], label=f"{group_name}: {g}" if group else g, zorder=2)
    pk = [k for k, i in enumerate(ids) if i in picked]
    ax.scatter(xy[pk, 0], xy[pk, 1], s=170, facecolors="none", edgecolors="k", linewidths=1.6, label="picked",
               zorder=3)
    # Only the picks are named: names of all candidates collide wherever cases are similar, i.e. everywhere.
    for n, k in enumerate(pk):
        ax.annotate(ids[k], xy[k], textcoords="offset points", xytext=(8, 8 + 10 * (n % 2)), fontsize=8,
                    fontweight="bold")
    ax.set_xlabel("MDS 1")
    ax.set_ylabel("MDS 2")
    ax.set_title("Candidates by similarity (classical MDS; close = similar)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return _save(fig, path)


def _groups_plot(groups: dict[str, dict[str, str]], picked: set[str], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
    for ax, (name, by_case) in zip(axes.flat, groups.items()):
        values = sorted(set(by_case.values()))
        cand = [sum(1 for v in by_case.values() if v == g) for g in values]
        pick = [sum(1 for i, v in by_case.items() if v == g and i in picked) for g in values]
        x = np.arange(len(values))
        ax.bar(x - 0.2, cand, 0.4, label="candidates", color="0.7")
        ax.bar(x + 0.2, pick, 0.4, label="picked", color="tab:red")
        ax.set_xticks(x, values, rotation=30 if len(values) > 3 else 0, ha="right" if len(values) > 3 else "center",
                      fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("cases")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _thumbnails(rows: Sequence[Mapping[str, Any]], dataroot: Path, path: Path) -> Path | None:
    import nibabel as nib

    plt = _pyplot()
    rows = list(rows)
    if not rows:
        return None
    cols = min(4, len(rows))
    nrows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.0 * cols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        image = row["image"][0] if isinstance(row["image"], list) else row["image"]
        img = np.asarray(nib.load(str(dataroot / image)).dataobj, dtype=np.float32)
        img = img[..., 0] if img.ndim == 4 else img
        lab = None
        if row.get("label"):
            lab = np.asarray(nib.load(str(dataroot / row["label"])).dataobj)
            lab = lab[..., 0] if lab.ndim == 4 else lab
        z = int(np.argmax((lab > 0).sum(axis=(0, 1)))) if lab is not None and lab.any() else img.shape[2] // 2
        lo, hi = np.percentile(img, [1, 99])
        ax.imshow(img[:, :, z].T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        if lab is not None and lab[:, :, z].any():
            ax.contour((lab[:, :, z] > 0).T.astype(float), levels=[0.5], colors="tab:red", linewidths=1.0)
        ax.set_title(f"{row['id']} (rank {row['rank']}, score {row['score']:.3f})", fontsize=8)
    fig.suptitle("Picked cases: slice with the most foreground, label outlined", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def write_selection_report(scores: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the report (see module docstring) from a selection's scores document; returns ``{name: path}``.

    ``scores``: the scores file content written by :func:`proxy_bundle.selection.subset.write_selection`
    (``provenance``, ``summary``, ``cases``, ``case_ids``, ``similarity``).
    """
    out = ensure_dir(out_dir)
    prov, summ = scores["provenance"], scores["summary"]
    dataroot = Path(prov["dataroot"])
    rows = list(scores["cases"])
    ids = [str(r["id"]) for r in rows]
    picked = set(summ["selected"])
    sim = np.asarray(scores["similarity"], dtype=np.float64)
    groups = groupings(case_metadata(dataroot, rows, prov.get("datalist")))
    first = next(iter(groups.items()), (None, None))
    paths: dict[str, Path] = {}
    paths["heatmap"] = _heatmap(sim, ids, picked, first[1], out / "similarity_heatmap.png")
    paths["embedding"] = _embedding(embed_2d(sim), ids, picked, first[1], first[0], out / "embedding.png")
    if groups:
        paths["groups"] = _groups_plot(groups, picked, out / "groups.png")
    by_id = {str(r["id"]): r for r in rows}
    thumbs = _thumbnails([by_id[i] for i in summ["selected"] if i in by_id], dataroot, out / "thumbnails.png")
    if thumbs is not None:
        paths["thumbnails"] = thumbs
    paths["markdown"] = write_text(out / "selection_report.md", _markdown(scores, groups, paths))
    return paths


def _markdown(scores: Mapping[str, Any], groups: Mapping[str, Mapping[str, str]], paths: Mapping[str, Path]) -> str:
    prov, summ = scores["provenance"], scores["summary"]
    picked = summ["selected"]
    val = prov.get("validation") or {}
    lines = [
        "# Proxy-data selection",
        "",
        f"Picked **{summ['n_selected']} of {summ['n_candidates']}** candidate training cases "
        f"(`{prov['metric']}` similarity, `{prov['mode']}` mode, `{prov['strategy']}` strategy): "
        f"{STRATEGY_WHY.get(prov['strategy'], prov['strategy'])}.",
        "A case's score is its mean similarity to the other candidates; rank 1 is the most typical.",
    ]
    if val.get("kind") == "fold":
        lines.append(f"Validation fold {val.get('fold')} ({val.get('n_cases')} cases) is kept out of the selection.")
    lines += ["", f"Picked, in selection order: {', '.join(picked)}.", ""]
    lines += ["| case | score | rank | picked | " + " | ".join(groups) + " |",
              "|---|---|---|---|" + "---|" * len(groups)]
    for r in sorted(scores["cases"], key=lambda r: r["rank"]):
        extra = " | ".join(g[str(r["id"])] for g in groups.values())
        lines.append(f"| {r['id']} | {r['score']:.4f} | {r['rank']} | {'yes' if r['selected'] else ''} | {extra} |")
    for name, by_case in groups.items():
        lines += ["", f"## By {name}", "", f"| {name} | candidates | picked |", "|---|---|---|"]
        for g in sorted(set(by_case.values())):
            n = sum(1 for v in by_case.values() if v == g)
            k = sum(1 for i, v in by_case.items() if v == g and i in picked)
            lines.append(f"| {g} | {n} | {k} |")
        missing = sorted({v for v in by_case.values()} - {by_case[i] for i in picked if i in by_case})
        if missing:
            lines.append("")
            lines.append(f"No picked case from {name} {', '.join(missing)}: a proxy trained on this subset never "
                         "sees it (try `--strategy coverage`).")
    titles = {"heatmap": "Similarity", "embedding": "2D embedding", "groups": "Groups", "thumbnails": "Picked cases"}
    for key, title in titles.items():
        if key in paths:
            lines += ["", f"## {title}", "", f"![{title}]({Path(paths[key]).name})"]
    return "\n".join(lines) + "\n"


def report_dir(proxy_datalist: str | os.PathLike) -> Path:
    """Where the report of a proxy datalist goes: ``<folder>/<stem>_report``."""
    p = Path(proxy_datalist)
    name = p.name[:-5] if p.name.endswith(".json") else p.stem
    return p.with_name(f"{name}_report")


def report_line(paths: Mapping[str, Path]) -> str:
    """One console line naming every report file once (the Markdown first)."""
    order = ["markdown", "heatmap", "embedding", "groups", "thumbnails"]
    return "selection report: " + ", ".join(str(paths[k]) for k in order if k in paths)
