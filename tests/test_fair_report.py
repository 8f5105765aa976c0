"""The fair comparison's statistics and pictures on small inputs with known answers: the
unique-user paired test, the baseline rule, Demšar's ranks / Friedman / Nemenyi CD, the
side-by-side table, the forest plot and the CD diagram, and `metarec report --ranks/--side-by-side`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from metarec.bench.ranks import (
    cd_diagram, cliques, compare_views, critical_difference, friedman, nemenyi_q, rank_blocks, ranks_markdown,
)
from metarec.bench.results import ResultsView, choose_simple_baseline
from metarec.bench.sidebyside import side_by_side_markdown
from metarec.metrics import paired_test_by_unit

REPO = Path(__file__).resolve().parents[1]

# Demšar (2006), Table 5: critical values of the two-tailed Nemenyi test, k = 2..10
DEMSAR_Q05 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
DEMSAR_Q10 = [1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920]


# ---------------------------------------------------------------- the unique-user test


def test_unique_user_test_counts_a_user_of_several_seeds_once():
    keys = [["u1", "u2", "u3"], ["u1", "u2", "u3"]]
    a = [[2.0, 3.0, 4.0], [4.0, 3.0, 2.0]]
    b = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    r = paired_test_by_unit(keys, a, b)
    # each user's mean difference is 2: three units, not six
    assert r["n"] == 3 and r["n_pairs"] == 6 and r["mean_diff"] == pytest.approx(2.0)
    assert r["p"] == pytest.approx(0.25)  # exact two-sided Wilcoxon, n = 3, all positive: 2 / 2**3
    assert r["ttest_p"] == 0.0  # a constant non-zero difference


def test_unique_user_test_equals_wilcoxon_and_t_on_the_user_means():
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(40)]
    keys, a, b = [], [], []
    for seed in range(3):  # overlapping test users, as seeds' splits have
        pick = sorted(rng.choice(40, size=25, replace=False))
        keys.append([users[i] for i in pick])
        a.append(rng.normal(0.8, 0.2, 25))
        b.append(rng.normal(0.75, 0.2, 25))
    a[1][0] = np.nan  # a user without a value in one seed counts with its other seeds only
    r = paired_test_by_unit(keys, a, b)
    sums: dict[str, list[float]] = {}
    for ks, xa, xb in zip(keys, a, b):
        for k, x, y in zip(ks, xa, xb):
            if np.isfinite(x - y):
                sums.setdefault(k, []).append(x - y)
    d = np.array([np.mean(v) for v in sums.values()])
    assert r["n"] == len(d) < 75 and r["n_pairs"] == 74
    assert r["mean_diff"] == pytest.approx(d.mean())
    assert r["p"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert r["ttest_p"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)


def test_unique_user_test_edge_cases():
    r = paired_test_by_unit([["a", "b"]], [[1.0, 2.0]], [[1.0, 2.0]])
    assert r["p"] == 1.0 and r["ttest_p"] == 1.0 and r["mean_diff"] == 0.0
    with pytest.raises(ValueError, match="at least 2 units"):
        paired_test_by_unit([["a"], ["a"]], [[1.0], [2.0]], [[0.0], [0.0]])
    with pytest.raises(ValueError, match="stratum 0"):
        paired_test_by_unit([["a", "b"]], [[1.0]], [[1.0]])
    with pytest.raises(ValueError, match="same number of strata"):
        paired_test_by_unit([["a"]], [[1.0], [2.0]], [[1.0]])


# ---------------------------------------------------------------- the comparator


def _summary(mae: dict[str, float], pool: dict[str, float], pool_key=("ml-1m", 0.1, 0)):
    summary, runs = {}, []
    for m, v in mae.items():
        entry = {"cells": {"overall": {"mae": {"mean": v}}}}
        if m in pool:
            entry["settings_source"] = {"kind": "tuned", "best_value": pool[m], "metric": "pool mae",
                                        "dataset": pool_key[0], "tuning_fraction": pool_key[1],
                                        "tuning_seed": pool_key[2], "split_seed": 0}
        summary[m] = entry
        cls = "metarec.methods.simple:X" if m != "mamo" else "metarec.methods.mamo:MAMO"
        runs.append({"method": m, "status": "ok", "learner_class": cls})
    return summary, runs


def test_baseline_is_chosen_on_the_tuning_pool_not_on_test_users():
    # on test users baseline-predictor is better, on the pool profile-mlp-finetune: the pool decides
    summary, runs = _summary({"global-mean": 0.92, "baseline-predictor": 0.76, "profile-mlp-finetune": 0.77,
                              "mamo": 0.75}, {"baseline-predictor": 0.745, "profile-mlp-finetune": 0.744})
    best, rule = choose_simple_baseline(summary, runs)
    assert best == "profile-mlp-finetune"
    assert "tuning-pool" in rule and "without looking at a test user" in rule and "global-mean" in rule
    # studies of different pools are not comparable: the test MAE decides, and the rule says so
    summary["baseline-predictor"]["settings_source"]["tuning_seed"] = 1
    best, rule = choose_simple_baseline(summary, runs)
    assert best == "baseline-predictor" and "test numbers" in rule
    # no simple baseline at all
    assert choose_simple_baseline({"mamo": summary["mamo"]}, [runs[-1]]) == (None, "")


# ---------------------------------------------------------------- Demšar 2006


@pytest.mark.parametrize("k", range(2, 11))
def test_nemenyi_q_matches_demsar_table_5(k):
    assert round(nemenyi_q(k, 0.05), 3) == pytest.approx(DEMSAR_Q05[k - 2], abs=1.5e-3)
    assert round(nemenyi_q(k, 0.10), 3) == pytest.approx(DEMSAR_Q10[k - 2], abs=1.5e-3)


def test_critical_difference_of_demsars_example():
    # section 3.2.4: four methods on 14 data sets, CD = 2.569 sqrt(4 * 5 / (6 * 14)) = 1.25
    assert critical_difference(4, 14, 0.05) == pytest.approx(1.25, abs=5e-3)
    assert critical_difference(4, 14, 0.05) == pytest.approx(2.569 * math.sqrt(20 / 84), abs=1e-3)
    with pytest.raises(ValueError, match="k >= 2"):
        critical_difference(1, 5)
    with pytest.raises(ValueError, match="n >= 1"):
        critical_difference(3, 0)


def test_friedman_of_demsars_example_and_against_scipy():
    # section 3.2.4: average ranks 3.143, 2.000, 2.893, 1.964 over N = 14 give chi2 = 9.28, F = 3.69
    mean = np.array([44.0, 28.0, 40.5, 27.5]) / 14
    fr = friedman(np.tile(mean, (14, 1)))
    assert fr["chi2"] == pytest.approx(9.28, abs=0.01) and fr["F"] == pytest.approx(3.69, abs=0.01)
    assert fr["F_df"] == [3, 39]
    # without ties the chi-square is scipy's Friedman statistic
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(9, 5))
    ranks = rank_blocks(scores)
    ref = stats.friedmanchisquare(*scores.T)
    assert friedman(ranks)["chi2"] == pytest.approx(ref.statistic) and friedman(ranks)["chi2_p"] == pytest.approx(ref.pvalue)


def test_ranks_average_ties_and_follow_the_metric_direction():
    assert rank_blocks([[0.8, 0.8, 0.9]]).tolist() == [[1.5, 1.5, 3.0]]
    assert rank_blocks([[0.8, 0.8, 0.9]], higher_is_better=True).tolist() == [[2.5, 2.5, 1.0]]
    with pytest.raises(ValueError, match="finite"):
        rank_blocks([[0.8, np.nan]])


def test_cliques_are_maximal_groups_within_the_cd():
    assert cliques([1.0, 1.8, 2.6], 1.0) == [[0, 1], [1, 2]]
    assert cliques([1.0, 1.2, 1.4], 1.0) == [[0, 1, 2]]  # [1, 2] lies inside the first group
    assert cliques([3.0, 1.0, 5.0], 1.0) == []
    assert cliques([2.0, 1.0, 1.5, 4.0], 1.1) == [[1, 2, 0]]


def _view(label, dataset, maes, published=False, tests=None, std=0.01):
    methods = {m: {"cells": {c: {"mae": {"mean": v, "std": None if published else std, "ci": [v - 0.02, v + 0.02]},
                                 "n": 100} for c, v in cells.items()}} for m, cells in maes.items()}
    return ResultsView(label, dataset, methods, published=published, baseline_tests=tests)


CELLS4 = ("W-W", "W-C", "C-W", "C-C")


def test_compare_views_ranks_every_block_and_leaves_out_incomplete_methods(tmp_path):
    a = _view("t", "ml-1m", {"x": dict.fromkeys(CELLS4, 0.7), "y": dict.fromkeys(CELLS4, 0.8),
                             "z": dict.fromkeys(CELLS4, 0.9)})
    b = _view("t", "yelp", {"x": dict.fromkeys(CELLS4, 0.85), "y": dict.fromkeys(CELLS4, 0.75)})
    cmp = compare_views([a, b])
    assert cmp.methods == ["x", "y"] and cmp.left_out == {"z": [f"yelp {c}" for c in CELLS4]}
    assert cmp.avg_ranks.tolist() == [1.5, 1.5] and len(cmp.blocks) == 8
    d = cmp.as_dict()
    assert d["nemenyi"]["cd"] == pytest.approx(critical_difference(2, 8))
    md = ranks_markdown(cmp)
    assert "| x | 1.50 |" in md and "left out: z" in md
    with pytest.raises(ValueError, match="two results of one dataset"):
        compare_views([a, a])
    with pytest.raises(ValueError, match="unknown metric"):
        compare_views([a, b], metric="bogus")
    written = cd_diagram(compare_views([a]), tmp_path / "cd")
    if written:  # matplotlib installed (the plot extra)
        assert [p.suffix for p in written] == [".png", ".svg"]
        first = (tmp_path / "cd.svg").read_text()
        cd_diagram(compare_views([a]), tmp_path / "cd")
        assert (tmp_path / "cd.svg").read_text() == first  # no date, fixed ids: the same input draws the same file


# ---------------------------------------------------------------- side by side and forest


def _tests(base, rows):
    return {"baseline": base, "tests": [{"a": a, "b": base, "cell": c, "metric": "mae",
                                         "per_unique_user": {"mean_diff": d, "p": p, "p_holm": p}}
                                        for a, c, d, p in rows]}


def test_side_by_side_puts_paper_hand_and_tuned_in_one_table_per_dataset():
    paper = _view("paper", "ml-1m", {"mamo": {"W-W": 0.8725}}, published=True)
    hand = _view("hand", "ml-1m", {"mamo": {"W-W": 0.79}, "bp": {"W-W": 0.78}})
    tuned = _view("tuned", "ml-1m", {"mamo": {"W-W": 0.85}, "bp": {"W-W": 0.77}},
                  tests=_tests("bp", [("mamo", "W-W", 0.08, 0.001)]))
    other = _view("tuned", "yelp", {"mamo": {"W-W": 0.9}})
    md = side_by_side_markdown([paper, hand, tuned, other])
    assert md.count("### ") == 2 and "### ml-1m" in md and "### yelp" in md
    assert "| method | cell | MAE paper | MAE hand | MAE tuned | Δ MAE (tuned − hand) |" in md
    assert "| mamo | W-W | 0.8725† | 0.7900 ± 0.0100 | 0.8500 ± 0.0100 ▼ | +0.0600 |" in md
    assert "| bp | W-W | – | 0.7800 ± 0.0100 | 0.7700 ± 0.0100 (b) | -0.0100 |" in md
    assert "baselines: tuned: bp" in md


def test_forest_plot_is_drawn_and_reproducible(tmp_path):
    pytest.importorskip("matplotlib")
    from metarec.bench.plot import forest_plot

    v = _view("run", "ml-1m", {"mamo": dict.fromkeys(("overall", *CELLS4), 0.8),
                               "bp": dict.fromkeys(("overall", *CELLS4), 0.78)})
    tests = _tests("bp", [("mamo", "W-W", 0.02, 0.01), ("mamo", "C-C", 0.02, 0.3)])
    written = forest_plot(v, tests, tmp_path / "forest")
    assert [p.name for p in written] == ["forest.png", "forest.svg"]
    svg = (tmp_path / "forest.svg").read_text()
    assert "<dc:date>" not in svg and "Holm p &lt; 0.05 vs bp (unique-user Wilcoxon)" in svg
    forest_plot(v, tests, tmp_path / "forest")
    assert (tmp_path / "forest.svg").read_text() == svg
    assert forest_plot(v, None, tmp_path / "none") == []


def test_report_writes_ranks_and_side_by_side_of_committed_runs(tmp_path):
    from metarec.cli import main

    ml = REPO / "benchmarks" / "results" / "ml1m-2026-12-01"
    yelp = REPO / "benchmarks" / "results" / "yelp-3seeds-2026-12-01"
    if not (ml / "results.json").exists() or not (yelp / "results.json").exists():
        pytest.skip("the committed ML-1M and Yelp runs are not here")
    out = tmp_path / "cmp"
    res = CliRunner().invoke(main, ["report", str(ml), str(yelp), "--reference", "--out", str(out), "--ranks",
                                    "--side-by-side"])
    assert res.exit_code == 0, res.output
    ranks = (out / "ranks.md").read_text()
    assert "8 blocks" in ranks and "left out: s2meta" in ranks  # Yelp has no s2Meta run
    side = (out / "side-by-side.md").read_text()
    assert "### ml-1m" in side and "### yelp" in side and "MAE paper" in side
    # the report's one command: hand and tuned runs labelled, ranks of the tuned ones only
    tuned = REPO / "benchmarks" / "results" / "tune-ml1m-20trials-2026-12-02" / "bench-tuned"
    if (tuned / "results.json").exists():
        out2 = tmp_path / "report"
        res = CliRunner().invoke(main, ["report", str(ml), str(tuned), str(yelp), "--label", "hand", "--label", "tuned",
                                        "--label", "tuned", "--reference", "--side-by-side", "--ranks", "tuned",
                                        "--out", str(out2)])
        assert res.exit_code == 0, res.output
        side = (out2 / "side-by-side.md").read_text()
        assert "| MAE paper | MAE hand | MAE tuned |" in side and "Δ MAE (tuned − hand)" in side
        import json

        ranked = json.loads((out2 / "ranks.json").read_text())
        assert {b.split()[0] for b in ranked["blocks"]} == {"ml-1m", "yelp"} and len(ranked["blocks"]) == 8
        assert set(ranked["methods"]) <= {"baseline-predictor", "profile-mlp", "profile-mlp-finetune", "melu", "mamo",
                                          "global-mean"}
    res = CliRunner().invoke(main, ["report", str(ml), "--ranks"])
    assert res.exit_code != 0 and "give the folder with --out" in res.output
    res = CliRunner().invoke(main, ["report", str(ml), str(yelp), "--out", str(out), "--ranks", "nope"])
    assert res.exit_code != 0 and "no run is labelled 'nope'" in res.output


def test_results_page_leads_with_the_fair_comparison_once_a_fair_run_is_committed(tmp_path):
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("gen_results_fair", REPO / "docs" / "gen_results.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    results = REPO / "benchmarks" / "results"
    tuned = results / "tune-ml1m-20trials-2026-12-02" / "bench-tuned" / "results.json"
    if not (results / "ml1m-2026-12-01" / "results.json").exists() or not tuned.exists():
        pytest.skip("the committed ML-1M runs are not here")
    for name, src in (("ml1m-2026-12-01", results / "ml1m-2026-12-01" / "results.json"), ("fair-ml1m-2099-01-01", tuned)):
        (tmp_path / name).mkdir()
        shutil.copy(src, tmp_path / name / "results.json")
    page = gen.render(tmp_path)
    assert page.index("## The fair comparison") < page.index("## Reproduction")
    fair = page[page.index("## The fair comparison"):page.index("## Reproduction")]
    assert "| MAE paper | MAE hand | MAE tuned |" in fair and "Average ranks by MAE" in fair
    (tmp_path / "fair-ml1m-2099-01-01" / "results.json").unlink()
    page = gen.render(tmp_path)
    assert "No fair run" in page[page.index("## The fair comparison"):page.index("## Reproduction")]
