"""The selection report written by ``select``: files exist, are referenced, and explain the picks by site."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from proxy_bundle.cli import main
from proxy_bundle.selection.report import embed_2d, groupings

PNG = b"\x89PNG\r\n\x1a\n"


def test_select_writes_a_referenced_report(spleen_phantom: Path, tmp_path: Path, capsys):
    out = tmp_path / "proxy.json"
    main(["select", "--datalist", str(spleen_phantom / "datalist.json"), "--data_fraction", "0.5", "--out", str(out),
          "--progress", "False"])
    printed = capsys.readouterr().out
    rep = tmp_path / "proxy_report"
    files = {name: rep / name for name in ("selection_report.md", "similarity_heatmap.png", "embedding.png",
                                            "groups.png", "thumbnails.png")}
    for name, path in files.items():
        assert path.is_file(), name
        assert printed.count(str(path)) == 1, f"{path} not printed exactly once"
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == PNG
    md = files["selection_report.md"].read_text()
    for name in files:
        if name.endswith(".png"):
            assert f"]({name})" in md
    scores = json.loads((tmp_path / "proxy_scores.json").read_text())
    picked = scores["summary"]["selected"]
    meta = json.loads((spleen_phantom / "phantom_meta.json").read_text())["cases"]
    # Every candidate is listed with its score, and the site breakdown counts what was picked per site.
    for row in scores["cases"]:
        assert f"| {row['id']} | {row['score']:.4f} | {row['rank']} |" in md
    assert "## By site" in md
    for site in {meta[r["id"]]["site"] for r in scores["cases"]}:
        n = sum(meta[r["id"]]["site"] == site for r in scores["cases"])
        k = sum(meta[i]["site"] == site for i in picked)
        assert f"| {site} | {n} | {k} |" in md


def test_groupings_and_embedding_are_pure():
    meta = {"a": {"site": "x", "flag": True, "same": "s"}, "b": {"site": "y", "flag": False, "same": "s"},
            "c": {"site": "x", "flag": True, "same": "s"}}
    groups = groupings(meta)
    assert list(groups) == ["site", "flag"] and groups["site"] == {"a": "x", "b": "y", "c": "x"}
    # Three points on a line: MDS keeps their distances.
    pos = np.array([0.0, 1.0, 3.0])
    sim = -np.abs(pos[:, None] - pos[None, :])
    xy = embed_2d(sim)
    d = np.linalg.norm(xy[:, None] - xy[None, :], axis=-1)
    assert np.allclose(d, np.abs(pos[:, None] - pos[None, :]), atol=1e-6)
