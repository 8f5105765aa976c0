"""Report tables: best-per-column marks, ties, missing cells, published values, datasets, bootstrap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metarec import metrics as M
from metarec.bench.report import Table, group_views, latex_table, markdown_table
from metarec.bench.results import ResultsView, Stratum, cell_confidence_intervals, load_views

REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference" / "mamo-table1.json"


def view(label, values, dataset="ml-1m", published=False):
    """values: method -> (mae mean, mae std, ndcg mean, ndcg std) for W-W only."""
    methods = {
        m: {"cells": {"W-W": {"mae": {"mean": a, "std": b}, "ndcg@3": {"mean": c, "std": d}, "n": 10}}}
        for m, (a, b, c, d) in values.items()
    }
    return ResultsView(label, dataset, methods, published=published)


def test_best_marks_lowest_mae_highest_ndcg_with_ties_at_shown_precision():
    v = view("run", {"a": (0.80001, 0.01, 0.90, 0.01), "b": (0.80004, 0.02, 0.91, 0.01), "c": (0.9, 0.0, 0.91, None)})
    t = Table([v])
    assert t.cells == ["W-W"]
    best = {(t.rows[i][1], t.rows[i][2]) for i in range(len(t.rows)) if t.is_best(i, "W-W")}
    # 0.80001 and 0.80004 both show as 0.8000: a tie, both marked; NDCG 0.91 tie too
    assert best == {("a", "mae"), ("b", "mae"), ("b", "ndcg@3"), ("c", "ndcg@3")}
    md = markdown_table([v])
    assert "**0.8000 ± 0.0100**" in md and "| c | NDCG@3 (per user) | **0.9100** |" in md
    # rows of metrics a view has no value for (here RMSE, clip NDCG) are left out
    table = md.split("\n- ")[0]
    assert "| RMSE |" not in table and "clip NDCG@3 (paper" not in table


def test_missing_values_are_dashes_and_never_best():
    v = view("run", {"a": (float("nan"), None, 0.5, 0.1), "b": (0.7, 0.1, 0.4, 0.1)})
    t = Table([v])
    i = next(i for i, r in enumerate(t.rows) if r[1] == "a" and r[2] == "mae")
    assert t.text(i, "W-W") == "–" and not t.is_best(i, "W-W")


def test_single_candidate_is_not_marked():
    t = Table([view("run", {"a": (0.7, 0.1, 0.5, 0.1)})])
    assert not t.best


def test_reference_file_loads_per_dataset():
    views = load_views(REFERENCE)
    assert [v.dataset for v in views] == ["ml-1m", "book-crossing"]
    ml = views[0]
    assert ml.published
    assert ml.value("mamo", "C-C", "mae") == (0.8894, None)
    # the paper's scenario NDCG is its clip NDCG: read as such, not as a within-user NDCG
    assert ml.value("melu", "W-W", "clip_ndcg@3") == (0.8904, None)
    assert ml.value("melu", "W-W", "ndcg@3")[1] is None and np.isnan(ml.value("melu", "W-W", "ndcg@3")[0])
    assert set(ml.methods) == {"melu", "metacs-dnn", "s2meta", "rum-item", "rum-feature", "mamo"}
    data = json.loads(REFERENCE.read_text())
    assert any("single-run" in n or "single run" in n for n in data["source"]["notes"])


def test_views_are_grouped_by_dataset_and_published_values_marked():
    ours = view("ours", {"mamo": (0.85, 0.01, 0.88, 0.01)})
    ours.aliases.add("movielens-1m")
    ref = load_views(REFERENCE)
    groups = group_views([ours, *ref])
    assert [len(g) for g in groups] == [2, 1]
    md = markdown_table([ours, *ref])
    assert "### ml-1m" in md and "### book-crossing" in md
    assert "paper: mamo" in md and "ours: mamo" in md and "0.8725†" in md
    tex = latex_table([ours, *ref])
    assert tex.count(r"\begin{tabular}") == 2 and r"\textbf{" in tex and r"$\pm$" in tex


def test_stratified_interval_one_seed_equals_metrics_bootstrap():
    rng = np.random.default_rng(0)
    n_users, q = 40, 5
    units = np.repeat(np.arange(n_users), q)
    pred = rng.uniform(1, 5, units.size)
    true = rng.integers(1, 6, units.size).astype(float)
    scen = np.array(["W-W", "C-C"])[rng.integers(0, 2, units.size)]
    st = Stratum(7, pred, true, units, scen)
    ci = cell_confidence_intervals([st], k=3, clip_size=5, n_boot=200, level=0.9)
    from metarec.runtime import derive_seed

    m = scen == "C-C"
    expect = M.bootstrap_metric_ci(pred[m], true[m], units[m], lambda p, t, u: M.mae(p, t), n_boot=200, alpha=0.1,
                                   seed=derive_seed(7, "bootstrap", "C-C", "mae"))
    assert ci["C-C"]["mae"] == pytest.approx(list(expect))
    # two seeds: the interval is for the mean over seeds, narrower than either seed's own
    st2 = Stratum(8, pred[::-1].copy(), true, units, scen)
    both = cell_confidence_intervals([st, st2], k=3, clip_size=5, n_boot=200, level=0.9)
    one = ci["overall"]["mae"]
    assert both["overall"]["mae"][1] - both["overall"]["mae"][0] < one[1] - one[0]
    # an empty cell has no interval
    none = cell_confidence_intervals([Stratum(0, pred[:5], true[:5], units[:5], np.array(["W-W"] * 5))],
                                     k=3, clip_size=5, n_boot=20, level=0.9)
    assert np.isnan(none["C-C"]["mae"]).all()


def test_overall_interval_equals_the_user_level_bootstrap_of_the_paper_metrics():
    """The fast per-user route gives the same interval as resampling users for user_mae/user_ndcg."""
    from metarec.runtime import derive_seed

    rng = np.random.default_rng(1)
    units = np.repeat(np.arange(30), 5)
    pred = rng.integers(1, 6, units.size).astype(float)  # ties on purpose
    true = rng.integers(1, 6, units.size).astype(float)
    st = Stratum(3, pred, true, units, np.array(["W-W"] * units.size))
    ci = cell_confidence_intervals([st], k=3, clip_size=5, n_boot=100, level=0.95)
    for name, fn in (("mae", M.user_mae), ("ndcg@3", lambda p, t, u: M.user_ndcg(p, t, u, k=3))):
        expect = M.bootstrap_metric_ci(pred, true, units, fn, n_boot=100, alpha=0.05,
                                       seed=derive_seed(3, "bootstrap", "overall", name))
        assert ci["overall"][name] == pytest.approx(list(expect), abs=1e-12)


def test_intervals_of_rmse_clip_and_per_user_metrics_equal_the_plain_user_bootstrap():
    """Every new metric's one-seed interval is the user bootstrap of that metric (same draws)."""
    from metarec.bench.results import MetricSpec
    from metarec.runtime import derive_seed

    rng = np.random.default_rng(2)
    units = np.repeat(np.arange(40), 5)
    pred = rng.integers(1, 6, units.size).astype(float)  # ties on purpose
    true = rng.integers(1, 6, units.size).astype(float)
    scen = np.array(["W-W", "C-W"])[rng.integers(0, 2, units.size)]
    spec = MetricSpec()
    ci = cell_confidence_intervals([Stratum(5, pred, true, units, scen)], n_boot=100, level=0.9, spec=spec)
    m = scen == "C-W"
    p, t, u = pred[m], true[m], units[m]

    def seed(name):
        return derive_seed(5, "bootstrap", "C-W", name)

    checks = {
        "rmse": lambda pp, tt, uu: M.rmse(pp, tt),
        "clip_ndcg@3": lambda pp, tt, uu: M.clip_ndcg(pp, tt, k=3, clip_size=5),
    }
    for name, fn in checks.items():
        want = M.bootstrap_metric_ci(p, t, u, fn, n_boot=100, alpha=0.1, seed=seed(name))
        assert ci["C-W"][name] == pytest.approx(list(want), abs=1e-12), name
    # per-user metrics: resample the users that count (>= 2 ratings; a relevant item for P/MAP)
    for name in ("ndcg@3", "precision@3", "map@5", "ndcg_rel@5"):
        scores = M.per_user_scores(p, t, u, name, threshold=4.0, min_ratings=2)
        scores = scores[np.isfinite(scores)]
        want = M.bootstrap_ci(scores, n_boot=100, alpha=0.1, seed=seed(name))
        assert ci["C-W"][name] == pytest.approx(list(want), abs=1e-12), name
    assert "clip_ndcg@3" not in ci["overall"]


def test_clip_bootstrap_batches_equal_the_per_replicate_loop():
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(30), rng.integers(1, 7, 30))
    pred = rng.integers(1, 4, users.size).astype(float)
    true = rng.integers(1, 6, users.size).astype(float)
    for clip in (1, 2, 5):
        fast = M.bootstrap_clip_ndcg_replicates(pred, true, users, k=3, clip_size=clip, n_boot=80, seed=9, chunk=7)
        slow = M.bootstrap_metric_replicates(pred, true, users, lambda p, t, u: M.clip_ndcg(p, t, k=3, clip_size=clip),
                                             n_boot=80, seed=9)
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def _test(a, metric, cell="W-W", t=(0.0, 1.0), user=(0.0, 1.0), unique=(0.0, 1.0)):
    """One baseline_tests entry: (mean diff, Holm p) per kind of test."""
    return {"a": a, "b": "base", "cell": cell, "metric": metric,
            "per_seed": {"mean_diff": t[0], "ttest_p_holm": t[1]},
            "per_user": {"mean_diff": user[0], "p_holm": user[1]},
            "per_unique_user": {"mean_diff": unique[0], "p_holm": unique[1]}}


def test_verdict_counts_each_kind_by_its_own_sign_and_the_metric_direction():
    from metarec.bench.verdict import verdict_markdown, verdicts

    family = {"baseline": "base", "tests": [
        # lower MAE is better: significant by two kinds in m's favour, one not significant
        _test("m", "mae", t=(-0.01, 0.2), user=(-0.01, 0.001), unique=(-0.02, 0.01)),
        # higher NDCG is better: a negative difference is a loss, by the t-test only
        _test("m", "ndcg@3", t=(-0.02, 0.04), user=(-0.02, 0.06), unique=(-0.02, 0.5)),
        # p exactly at alpha is not significant; a lost RMSE by unique users only
        _test("m", "rmse", cell="C-C", t=(0.1, 0.05), unique=(0.03, 0.0001)),
        # kinds that disagree in sign count on both sides
        _test("n", "clip_ndcg@3", t=(0.01, 0.01), user=(-0.01, 0.02)),
        _test("n", "mae", cell="overall"),
    ]}
    m, n = verdicts(family)
    assert (m.method, m.comparisons, m.better_any, m.worse_any, m.both) == ("m", 3, 1, 2, 0)
    assert m.better == {"per seed t": 0, "per user": 1, "unique users": 1}
    assert m.worse == {"per seed t": 1, "per user": 0, "unique users": 1}
    assert (n.comparisons, n.better_any, n.worse_any, n.both) == (2, 1, 1, 1)
    md = "\n".join(verdict_markdown(family))
    assert "| m | 3 | 0 / 1 / 1 / **1** | 1 / 0 / 1 / **2** |" in md
    assert "1 comparison(s) have kinds of test significant in opposite directions" in md
    assert verdicts({"baseline": "base", "tests": []}) == [] and verdict_markdown(None) == []


def test_verdict_of_the_committed_fair_yelp_run():
    """The count the README and the Results page quote: no meta-learner significantly better
    than the pool-chosen simple baseline in any cell or metric, 69 comparisons against."""
    from metarec.bench.verdict import verdicts

    results = json.loads((REFERENCE.parents[1] / "results" / "fair-yelp-2026-12-03" / "results.json").read_text())
    simple = {"global-mean", "baseline-predictor", "profile-mlp", "profile-mlp-finetune"}
    meta = [v for v in verdicts(results["baseline_tests"]) if v.method not in simple]
    assert len(meta) == 9 and sum(v.comparisons for v in meta) == 171
    assert sum(v.better_any for v in meta) == 0 and sum(v.worse_any for v in meta) == 69
