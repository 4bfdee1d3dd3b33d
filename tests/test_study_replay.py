"""Replayed search methods, bootstrap bands, agreement intervals and the benchmark table (pure / no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxy_bundle.study import replay as R
from proxy_bundle.study.agreement import agreement_ci
from proxy_bundle.study.analysis import analyse, fidelity_of
from proxy_bundle.study.plan import build_variants
from proxy_bundle.study.store import RunStore


def _fid(curves, cost_per_epoch=1.0) -> R.Fidelity:
    cs = np.maximum.accumulate(np.asarray(curves, float), axis=1)
    cc = np.cumsum(np.full(cs.shape, cost_per_epoch), axis=1)
    return R.Fidelity(score=cs[:, -1], cost=cc[:, -1], curve_score=cs, curve_cost=cc)


# epoch-1, epoch-2, epoch-4 scores (epoch 3 repeats epoch 2) of four configurations
CURVES = [[0.1, 0.2, 0.2, 0.3], [0.4, 0.5, 0.5, 0.55], [0.3, 0.6, 0.6, 0.9], [0.2, 0.3, 0.3, 0.95]]


def test_rung_epochs():
    assert R.rung_epochs(8, 2) == [1, 2, 4, 8]
    assert R.rung_epochs(9, 3) == [1, 3, 9]
    assert R.rung_epochs(10, 3) == [1, 3, 9, 10]
    with pytest.raises(ValueError):
        R.rung_epochs(4, 1)


def test_asha_promotions_by_hand():
    # rungs 1, 2, 4 epochs; one epoch costs 1. Jobs: c0@1, c1@1, promote c1 (top 1 of 2), c2@1, c3@1,
    # promote c2 (top 2 of 4 at rung 0: c1, c2), promote c2 (top 1 of 2 at rung 1: 0.6 > 0.5) to 4 epochs.
    costs, chosen = R.asha([0, 1, 2, 3], _fid(CURVES), eta=2)
    assert costs.tolist() == [1, 2, 3, 4, 5, 6, 8]
    assert chosen.tolist() == [0, 1, 1, 1, 1, 2, 2]
    # c3 is the true best (0.95) but looks bad early: ASHA misses it, which is what a replay must show
    truth = _fid(CURVES).score
    assert R.regret_at((costs, chosen), truth, [0, 1, 2, 3], np.array([8.0]))[0] == pytest.approx(0.05)


def test_hyperband_brackets_by_hand():
    # R = 4 epochs, eta 2: s_max 2; bracket s=2 takes 4 configurations at 1 epoch, the best 2 go on to 2 epochs,
    # the best one to 4 epochs; bracket s=1 would need 3 more configurations and the pool is empty.
    costs, chosen = R.hyperband([0, 1, 2, 3], _fid(CURVES), eta=2)
    assert costs.tolist() == [1, 2, 3, 4, 5, 6, 8]
    assert chosen.tolist() == [0, 1, 1, 1, 1, 2, 2]
    # with more configurations the next bracket starts at 2 epochs
    costs, chosen = R.hyperband(list(range(7)), _fid(CURVES + CURVES[:3]), eta=2)
    assert len(costs) == 7 + 3 + 1 and costs[-1] == 8 + 3 * 2 + 1 * 2


def test_random_search_and_two_phase():
    full = _fid(CURVES)
    costs, chosen = R.random_search([3, 0, 2], full)
    assert costs.tolist() == [4, 8, 12] and chosen.tolist() == [3, 3, 3]
    proxy = R.Fidelity(score=np.array([0.9, 0.1, 0.5, 0.8]), cost=np.ones(4))
    costs, chosen = R.two_phase([0, 1, 2, 3], proxy, full, top_k=2)
    # phase 1: 4 x 1; phase 2: c0 then c3 at full cost 4 each; the incumbent follows the proxy, then the truth
    assert costs.tolist() == [1, 2, 3, 4, 8, 12] and chosen.tolist() == [0, 0, 0, 0, 0, 3]
    costs, chosen = R.proxy_asha([0, 1, 2, 3], _fid(CURVES, 0.25), full, top_k=1)
    assert chosen[-1] == 2 and costs[-1] == pytest.approx(8 * 0.25 + 4)


def test_regret_before_any_result_is_a_random_pick():
    truth = np.array([0.2, 0.4, 0.9])
    traj = (np.array([5.0, 10.0]), np.array([0, 2]))
    out = R.regret_at(traj, truth, [0, 1, 2], np.array([1.0, 5.0, 9.0, 10.0]))
    assert out.tolist() == pytest.approx([0.9 - 0.5, 0.7, 0.7, 0.0])


def test_expected_regret_of_random_search_matches_order_statistics():
    rng = np.random.default_rng(0)
    k = 8
    scores = np.sort(rng.uniform(0.2, 0.9, k))
    full = R.Fidelity(score=scores, cost=np.ones(k))
    table = R.Table({"reference": full})
    fr = np.array([n / k for n in range(1, k + 1)])
    got = R.expected_regret(R.Method("random"), table, fr, seeds=4000, rng=rng)
    exact = [scores[-1] - sum(math.comb(i, n - 1) * scores[i] for i in range(n - 1, k)) / math.comb(k, n)
             for n in range(1, k + 1)]
    assert got == pytest.approx(exact, abs=0.01)


def test_bootstrap_bands_shape_and_width():
    rng = np.random.default_rng(1)
    fr = np.array([0.125, 0.25, 0.5, 1.0])

    def band(k):
        table = R.Table({"reference": R.Fidelity(score=rng.uniform(0.5, 0.9, k), cost=np.ones(k))})
        return R.bootstrap_regret(R.Method("random"), table, fr, seeds=50, bootstrap=100, inner_seeds=5, rng=rng)

    small, large = band(8), band(96)
    for b in (small, large):
        assert {k: v.shape for k, v in b.items()} == {"mean": (4,), "lower": (4,), "upper": (4,)}
        assert np.all(b["lower"] <= b["upper"]) and np.all(b["lower"] >= 0)
        assert b["mean"][-1] == 0 and b["upper"][-1] == 0  # every configuration trained: the best is found
    # more configurations, tighter band (at 1/4 of the cost)
    assert large["upper"][1] - large["lower"][1] < small["upper"][1] - small["lower"][1]
    # a table without differences has no regret and no band
    flat = R.Table({"reference": R.Fidelity(score=np.full(6, 0.7), cost=np.ones(6))})
    b = R.bootstrap_regret(R.Method("random"), flat, fr, seeds=10, bootstrap=10, inner_seeds=2, rng=rng)
    assert np.all(b["mean"] == 0) and np.all(b["upper"] == 0)


def test_agreement_intervals_and_noise_ceiling():
    rng = np.random.default_rng(2)
    ref = {f"c{i:02d}": float(x) for i, x in enumerate(rng.uniform(0, 1, 24))}
    same = agreement_ci(ref, ref, n_boot=200, rng=rng)
    assert same["kendall"] == 1.0 and same["kendall_ci"] == pytest.approx([1.0, 1.0]) and same["kendall_p"] < 1e-6
    noisy = agreement_ci({c: s + rng.normal(0, 0.1) for c, s in ref.items()}, ref, n_boot=300, rng=rng)
    assert 0.3 < noisy["kendall"] < 1 and noisy["kendall_ci"][0] < noisy["kendall"] < noisy["kendall_ci"][1]
    unrelated = agreement_ci({c: float(rng.uniform()) for c in ref}, ref, n_boot=300, rng=rng)
    assert unrelated["kendall_ci"][0] < 0 < unrelated["kendall_ci"][1] or unrelated["kendall_p"] < 0.05
    few = agreement_ci({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0})
    assert math.isnan(few["kendall"]) and math.isnan(few["kendall_p"])


def _record(cid, variant, val, epochs, cost=2.0):
    curve = [[e, val * e / epochs, cost * e / epochs] for e in range(1, epochs + 1)]
    return {"config_id": cid, "variant": variant, "status": "ok", "val_dice": val, "ext_dice": val,
            "train_cost_s": cost, "startup_cost_s": 3.0, "curve": curve, "hardware": {"cores": 2}}


def test_fidelity_of_fills_missing_epochs():
    rec = {"val_dice": 0.6, "train_cost_s": 4.0, "curve": [[2, 0.5, 1.5], [4, 0.6, 4.0]]}
    f = fidelity_of([rec], 4)
    assert np.isnan(f.curve_score[0, 0]) and f.curve_score[0, 1:].tolist() == [0.5, 0.5, 0.6]
    assert f.curve_cost[0].tolist() == [1.0, 1.5, 3.0, 4.0]
    assert fidelity_of([rec], 4, include_startup=False).cost[0] == 4.0


def test_analysis_of_a_synthetic_table():
    plan = build_variants(epochs=4, fraction=0.5, proxy_data=["mi-representative"], random_seeds=(), widths=(0.5,),
                          short_budgets=(0.5,), include=["repeat", "network", "short"])
    rng = np.random.default_rng(3)
    truth = rng.uniform(0.3, 0.9, 10)
    recs = []
    for i, t in enumerate(truth):
        cid = f"c{i:02d}"
        recs += [_record(cid, "reference", t, 4), _record(cid, "repeat", t + rng.normal(0, 0.02), 4),
                 _record(cid, "network-w0.5", t + rng.normal(0, 0.05), 4, 1.0),
                 _record(cid, "short-e2", t * 0.8, 2, 1.0)]
    recs.append(_record("c99", "reference", 0.99, 4))  # incomplete configuration: left out
    a = analyse(recs, plan, replay_seeds=10, bootstrap=5)
    assert a["n_configs"] == 10 and "c99" not in a["configs"]
    assert a["noise_ceiling"]["val"]["kendall"] > 0.5
    assert {"random search", "ASHA", "Hyperband", "two-phase short-e2 top-4", "ASHA-proxy network-w0.5 top-1"} \
        <= set(a["replay"])
    assert a["costs"]["network-w0.5"]["cost_fraction"] == pytest.approx(0.5)
    # short training is a perfect ranker here (0.8 x the truth): top-1 finds the best at 1/2 + 1/10 of the cost
    short = next(r for r in a["budget_table"] if r["method"] == "two-phase short-e2 top-1")
    assert short["0.125"]["mean"] > 0 and a["replay"]["two-phase short-e2 top-1"]["mean"][-1] == 0
    assert a["winner"]["method"] in a["replay"]
    assert analyse(recs[:8], plan)["replay"] == {}  # fewer than 3 complete configurations


def test_table_export_import_resume_and_extend(tmp_path):
    a = RunStore(tmp_path / "a")
    spec = {"epochs": 2}
    for cid in ("c00", "c01"):
        a.put(cid, "reference", spec, {"status": "ok", "val_dice": 0.5})
    a.put("c02", "reference", spec, {"status": "failed", "error": "diverged"})
    table = tmp_path / "table.jsonl"
    assert a.export_table(table) == 3
    b = RunStore(tmp_path / "b")  # another machine: only the table travels
    assert b.import_table(table) == 2  # failed runs are retrained, not imported
    assert b.get("c00", "reference", spec)["val_dice"] == 0.5
    assert b.get("c00", "reference", {"epochs": 3}) is None  # another spec is not reused
    assert b.import_table(table) == 0  # idempotent
    b.put("c03", "reference", spec, {"status": "ok", "val_dice": 0.7})  # extend
    assert b.export_table(table) == 3 and a.import_table(table) == 1
    table.write_text(table.read_text() + '{"config_id": "c09", "vari')  # torn last line
    assert RunStore(tmp_path / "c").import_table(table) == 3
    assert RunStore(tmp_path / "d").import_table(tmp_path / "missing.jsonl") == 0


def test_vectorised_rank_correlations_equal_scipy():
    from scipy import stats

    from proxy_bundle.study.agreement import _tau_b_rho

    rng = np.random.default_rng(4)
    x = rng.integers(0, 5, size=(30, 9)).astype(float)  # ties on purpose
    y = x + rng.integers(0, 3, size=(30, 9))
    tau, rho = _tau_b_rho(x, y)
    for i in range(30):
        if np.ptp(x[i]) == 0 or np.ptp(y[i]) == 0:
            continue
        assert tau[i] == pytest.approx(stats.kendalltau(x[i], y[i]).statistic)
        assert rho[i] == pytest.approx(stats.spearmanr(x[i], y[i]).statistic)


def test_template_hash_ignores_the_proxy_block_only(tmp_path):
    import shutil
    from pathlib import Path

    from proxy_bundle.study.prepare import template_hash

    src = Path(__file__).resolve().parents[1] / "algorithm_templates" / "proxyseg"
    t = tmp_path / "proxyseg"
    shutil.copytree(src, t, ignore=shutil.ignore_patterns("__pycache__"))
    before = template_hash(t)
    cfg = t / "configs" / "hyper_parameters.yaml"
    cfg.write_text(cfg.read_text().replace("proxy:\n  enabled: false", "proxy:\n  enabled: true  # note"))
    assert template_hash(t) == before  # every study run sets the proxy block itself
    cfg.write_text(cfg.read_text().replace("amp: true", "amp: false"))
    assert template_hash(t) != before
    after = template_hash(t)
    (t / "scripts" / "train.py").write_text((t / "scripts" / "train.py").read_text() + "\n# changed\n")
    assert template_hash(t) != after
