"""Tests for metarec.metrics. Expected values are worked out by hand in the comments."""

from math import log2, sqrt

import numpy as np
import pytest
from scipy import stats

from metarec.metrics import (
    bootstrap_ci,
    bootstrap_metric_ci,
    clip_ndcg,
    mae,
    ndcg_at_k,
    paired_test,
    rmse,
    scenario_metrics,
    user_mae,
    user_ndcg,
)


# ---------------------------------------------------------------- MAE / RMSE

def test_mae_rmse_hand():
    # errors: 1, 0, 2, 1 -> MAE = 4/4 = 1; RMSE = sqrt((1+0+4+1)/4) = sqrt(1.5)
    pred = [2.0, 3.0, 1.0, 5.0]
    true = [1.0, 3.0, 3.0, 4.0]
    assert mae(pred, true) == pytest.approx(1.0)
    assert rmse(pred, true) == pytest.approx(sqrt(1.5))


def test_user_mae_differs_from_mae_with_unequal_counts():
    # user 7: one rating, error 2.  user 9: three ratings, error 0 each.
    # Eq. 13: (2/1 + 0/3) / 2 = 1.0 ; flat MAE: (2+0+0+0)/4 = 0.5
    pred = [3.0, 4.0, 4.0, 4.0]
    true = [1.0, 4.0, 4.0, 4.0]
    users = [7, 9, 9, 9]
    assert user_mae(pred, true, users) == pytest.approx(1.0)
    assert mae(pred, true) == pytest.approx(0.5)


def test_user_mae_interleaved_string_ids():
    # "a": errors 1, 3 -> 2 ; "b": error 0.5 -> mean (2 + 0.5)/2 = 1.25
    pred = [1.0, 2.5, 1.0]
    true = [2.0, 2.0, 4.0]
    assert user_mae(pred, true, np.array(["a", "b", "a"])) == pytest.approx(1.25)


# ---------------------------------------------------------------- NDCG

def test_ndcg_hand_full_list():
    # pred ranks items 1, 2, 0 -> true in ranked order 3, 4, 5
    # DCG  = (2^3-1)/log2(2) + (2^4-1)/log2(3) + (2^5-1)/log2(4)
    # IDCG = (2^5-1)/log2(2) + (2^4-1)/log2(3) + (2^3-1)/log2(4)
    dcg = 7 / 1 + 15 / log2(3) + 31 / 2
    idcg = 31 / 1 + 15 / log2(3) + 7 / 2
    assert ndcg_at_k([1.0, 3.0, 2.0], [5.0, 3.0, 4.0], k=3) == pytest.approx(dcg / idcg)


def test_ndcg_perfect_and_k_truncation():
    assert ndcg_at_k([3.0, 2.0, 1.0], [5.0, 4.0, 1.0], k=3) == pytest.approx(1.0)
    # k=1: the top predicted item has true 4, best is 5 -> (2^4-1)/(2^5-1) = 15/31
    assert ndcg_at_k([1.0, 2.0], [5.0, 4.0], k=1) == pytest.approx(15 / 31)


def test_ndcg_idcg_from_whole_list_not_predicted_top_k():
    # k=2, ranked by pred: items 1 (true 3), 2 (true 4); the true 5 (item 0) is missed.
    # DCG = 7/1 + 15/log2(3); IDCG uses the 2 largest of the whole list: 31/1 + 15/log2(3)
    got = ndcg_at_k([1.0, 3.0, 2.0, 0.0], [5.0, 3.0, 4.0, 1.0], k=2)
    assert got == pytest.approx((7 + 15 / log2(3)) / (31 + 15 / log2(3)))


def test_ndcg_scores_order_inside_top_k_unlike_reference_helper():
    # same list as above; the MAMO helper re-sorts the top-2 true ratings to (4, 3):
    # 15/1 + 7/log2(3). We keep predicted order (3, 4), which scores lower.
    got = ndcg_at_k([1.0, 3.0, 2.0, 0.0], [5.0, 3.0, 4.0, 1.0], k=2)
    reference = (15 + 7 / log2(3)) / (31 + 15 / log2(3))
    assert got < reference - 1e-6


def test_ndcg_ties_are_averaged_not_broken_by_position():
    # items 0 and 1 tie on pred; k=1: the tied group (true 3 and 5) holds rank 1, so the
    # DCG is its mean gain: ((2^3-1) + (2^5-1)) / 2 = 19; IDCG = 31 -> 19/31, whichever order
    assert ndcg_at_k([2.0, 2.0, 1.0], [3.0, 5.0, 1.0], k=1) == pytest.approx(19 / 31)
    assert ndcg_at_k([2.0, 2.0, 1.0], [5.0, 3.0, 1.0], k=1) == pytest.approx(19 / 31)
    # k=2: the group fills ranks 1-2, so DCG = 19/1 + 19/log2 3; IDCG = 31 + 7/log2 3
    assert ndcg_at_k([2.0, 2.0, 1.0], [3.0, 5.0, 1.0], k=2) == pytest.approx(
        (19 + 19 / log2(3)) / (31 + 7 / log2(3)))


def test_ndcg_tie_group_straddling_the_cut_off():
    # pred ranks item 0 first (true 1), then items 1, 2, 3 tie (true 5, 1, 3) over ranks 2-4;
    # k=2 sees rank 2 only of the group: mean gain (31 + 1 + 7)/3 = 13.
    # DCG = 1/1 + 13/log2 3; IDCG = 31 + 7/log2 3
    got = ndcg_at_k([9.0, 4.0, 4.0, 4.0], [1.0, 5.0, 1.0, 3.0], k=2)
    assert got == pytest.approx((1 + 13 / log2(3)) / (31 + 7 / log2(3)))


def test_constant_predictor_scores_a_random_order_not_the_list_order():
    # all predictions tie: NDCG is the mean over all orders, the same for any list order
    true = [5.0, 4.0, 3.0, 1.0, 1.0]
    import itertools
    perms = [ndcg_at_k([5.0, 4.0, 3.0, 2.0, 1.0], [true[i] for i in perm], k=3)
             for perm in itertools.permutations(range(5))]
    assert ndcg_at_k([3.0] * 5, true, k=3) == pytest.approx(np.mean(perms))
    assert ndcg_at_k([3.0] * 5, true[::-1], k=3) == pytest.approx(np.mean(perms))
    assert ndcg_at_k([3.0] * 5, true, k=3) < ndcg_at_k([5.0, 4.0, 3.0, 2.0, 1.0], true, k=3)


def test_ndcg_list_shorter_than_k():
    # 2 items, k=3 -> both used. ranked true: 1, 2
    # DCG = 1/1 + 3/log2(3); IDCG = 3/1 + 1/log2(3)
    got = ndcg_at_k([2.0, 1.0], [1.0, 2.0], k=3)
    assert got == pytest.approx((1 + 3 / log2(3)) / (3 + 1 / log2(3)))
    assert ndcg_at_k([5.0], [2.0], k=3) == pytest.approx(1.0)


def test_ndcg_all_equal_and_all_zero_ratings_are_one():
    assert ndcg_at_k([1.0, 9.0, 3.0], [4.0, 4.0, 4.0]) == pytest.approx(1.0)
    assert ndcg_at_k([1.0, 9.0, 3.0], [0.0, 0.0, 0.0]) == 1.0  # IDCG == 0


def test_ndcg_log_base_irrelevant_matches_natural_log_formula():
    # Eq. 15 writes log(n+1) without a base; with ln the ratio must be the same
    pred, true = [0.3, 0.1, 0.9, 0.5], [2.0, 5.0, 1.0, 4.0]
    ranked = [1.0, 4.0, 2.0]  # pred order: items 2, 3, 0
    ideal = [5.0, 4.0, 2.0]
    ln = np.log(np.arange(2, 5))
    expected = np.sum((2 ** np.array(ranked) - 1) / ln) / np.sum((2 ** np.array(ideal) - 1) / ln)
    assert ndcg_at_k(pred, true, k=3) == pytest.approx(expected)


def test_user_ndcg_groups_and_keeps_order():
    # user "a" = rows 0, 2: pred [1, 2], true [5, 3] -> ranked true 3, 5
    #   DCG = 7/1 + 31/log2(3), IDCG = 31/1 + 7/log2(3)
    # user "b" = rows 1, 3: pred [3, 1], true [2, 1] -> ideal order, 1.0
    a = (7 + 31 / log2(3)) / (31 + 7 / log2(3))
    got = user_ndcg([1.0, 3.0, 2.0, 1.0], [5.0, 2.0, 3.0, 1.0], ["a", "b", "a", "b"], k=3)
    assert got == pytest.approx((a + 1.0) / 2)


def test_user_ndcg_ties_within_user_are_averaged():
    # one user, tied predictions: k=1 -> mean gain (3 + 7)/2 = 5 over IDCG 7, either order
    assert user_ndcg([1.0, 1.0], [2.0, 3.0], [0, 0], k=1) == pytest.approx(5 / 7)
    assert user_ndcg([1.0, 1.0], [3.0, 2.0], [0, 0], k=1) == pytest.approx(5 / 7)


def test_user_ndcg_min_ratings_leaves_out_single_rating_users():
    # user 0: pred 2, 1 -> true 1, 2: (1 + 3/log2 3)/(3 + 1/log2 3); user 1: one rating (1.0)
    u0 = (1 + 3 / log2(3)) / (3 + 1 / log2(3))
    args = ([2.0, 1.0, 4.0], [1.0, 2.0, 5.0], [0, 0, 1])
    assert user_ndcg(*args, k=3) == pytest.approx((u0 + 1.0) / 2)
    assert user_ndcg(*args, k=3, min_ratings=2) == pytest.approx(u0)
    assert np.isnan(user_ndcg([1.0], [2.0], [0], min_ratings=2))


def _naive_ndcg(pred, true, k):
    # independent plain-Python version: expected DCG over every order of tied predictions
    import itertools

    idx = sorted(range(len(pred)), key=lambda i: -pred[i])
    groups = [list(g) for _, g in itertools.groupby(idx, key=lambda i: pred[i])]
    dcgs = []
    for combo in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = [i for g in combo for i in g][:k]
        dcgs.append(sum((2 ** true[i] - 1) / log2(n + 2) for n, i in enumerate(order)))
    ideal = sorted(true, reverse=True)[:k]
    idcg = sum((2 ** y - 1) / log2(n + 2) for n, y in enumerate(ideal))
    return 1.0 if idcg == 0 else (sum(dcgs) / len(dcgs)) / idcg


def test_user_and_clip_ndcg_match_naive_on_tied_random_lists():
    # integer predictions -> many ties; users have 1..7 ratings (batched by length)
    rng = np.random.default_rng(5)
    users = np.repeat(np.arange(60), rng.integers(1, 8, size=60))
    rng.shuffle(users)
    pred = rng.integers(1, 6, size=users.size).astype(float)
    true = rng.integers(1, 6, size=users.size).astype(float)
    per_user = [
        _naive_ndcg(list(pred[users == u]), list(true[users == u]), 3) for u in np.unique(users)
    ]
    assert user_ndcg(pred, true, users, k=3) == pytest.approx(np.mean(per_user))
    clips = [_naive_ndcg(list(pred[s:s + 4]), list(true[s:s + 4]), 3) for s in range(0, users.size, 4)]
    assert clip_ndcg(pred, true, k=3, clip_size=4) == pytest.approx(np.mean(clips))


# ---------------------------------------------------------------- clip NDCG

def test_clip_ndcg_exact_clip_boundaries():
    # 4 pairs, clip_size 2 -> clips [0:2], [2:4]
    # clip 1: pred [1, 2], true [3, 5] -> ranked 5, 3 -> 1.0
    # clip 2: pred [2, 1], true [1, 4] -> ranked 1, 4: DCG = 1 + 15/log2(3), IDCG = 15 + 1/log2(3)
    c2 = (1 + 15 / log2(3)) / (15 + 1 / log2(3))
    got = clip_ndcg([1.0, 2.0, 2.0, 1.0], [3.0, 5.0, 1.0, 4.0], k=3, clip_size=2)
    assert got == pytest.approx((1.0 + c2) / 2)


def test_clip_ndcg_trailing_partial_clip_kept_with_equal_weight():
    # 3 pairs, clip_size 2 -> clips [0:2] and the partial [2:3]
    # clip 1: pred [2, 1], true [1, 4] -> c = (1 + 15/log2(3)) / (15 + 1/log2(3))
    # clip 2: single item -> 1.0 ; mean over clips (not over ratings): (c + 1)/2
    c = (1 + 15 / log2(3)) / (15 + 1 / log2(3))
    got = clip_ndcg([2.0, 1.0, 0.0], [1.0, 4.0, 2.0], k=3, clip_size=2)
    assert got == pytest.approx((c + 1.0) / 2)
    assert got != pytest.approx((2 * c + 1.0) / 3)  # would be rating-weighted
    assert got != pytest.approx(c)  # would be the partial clip dropped


def test_clip_ndcg_fewer_ratings_than_a_clip_is_one_list():
    pred, true = [0.2, 0.9, 0.5], [5.0, 1.0, 3.0]
    assert clip_ndcg(pred, true, k=3, clip_size=5) == pytest.approx(ndcg_at_k(pred, true, k=3))
    assert clip_ndcg(pred, true, k=3, clip_size=5) < 1.0


def test_clip_ndcg_ignores_user_boundaries():
    # the concatenation is cut every 2 pairs, whatever user each pair belongs to:
    # clips are (0.9->1, 0.1->5) and (0.5->3): ((1 + 31/log2 3)/(31 + 1/log2 3) + 1) / 2
    c = (1 + 31 / log2(3)) / (31 + 1 / log2(3))
    assert clip_ndcg([0.9, 0.1, 0.5], [1.0, 5.0, 3.0], k=3, clip_size=2) == pytest.approx((c + 1) / 2)


def test_clip_ndcg_empty_is_nan():
    assert np.isnan(clip_ndcg([], []))
    assert np.isnan(clip_ndcg(np.array([]), np.array([]), k=3, clip_size=5))


# ---------------------------------------------------------------- scenario table

def _toy():
    # rows: user, scenario, pred, true
    users = np.array([1, 1, 1, 2, 2, 3])
    scen = np.array(["W-W", "W-C", "W-W", "C-C", "C-C", "W-W"])
    pred = np.array([4.0, 2.0, 3.0, 1.0, 2.0, 5.0])
    true = np.array([5.0, 2.0, 3.0, 3.0, 2.0, 4.0])
    return pred, true, users, scen


def test_scenario_metrics_hand():
    pred, true, users, scen = _toy()
    out = scenario_metrics(pred, true, users, scen, k=3, clip_size=5)
    # overall MAE (Eq. 13): user 1 errors 1,0,0 -> 1/3; user 2: 2,0 -> 1; user 3: 1 -> 1
    assert out["overall"]["mae"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    # overall RMSE is flat: squares 1,0,0,4,0,1 -> sqrt(6/6)
    assert out["overall"]["rmse"] == pytest.approx(1.0)
    # overall NDCG (within-user, users with >= 2 ratings): user 1 pred 4,2,3 -> true 5,3,2 =
    # ideal -> 1; user 2 pred 1,2 -> true 2,3: (3 + 7/log2 3)/(7 + 3/log2 3); user 3 (one) left out
    u2 = (3 + 7 / log2(3)) / (7 + 3 / log2(3))
    assert out["overall"]["ndcg@3"] == pytest.approx((1 + u2) / 2)
    assert np.isnan(out["overall"]["clip_ndcg@3"])  # the paper's clip NDCG is per scenario only
    assert (out["overall"]["n"], out["overall"]["n_users"], out["overall"]["n_users_ranked"]) == (6, 3, 2)
    # W-W rows 0, 2, 5: errors 1, 0, 1 -> MAE 2/3, RMSE sqrt(2/3);
    # clip NDCG: one clip pred 4,3,5 -> true 4,5,3: DCG 15 + 31/log2 3 + 7/2, IDCG 31 + 15/log2 3 + 7/2
    # within-user NDCG: user 1 (rows 0, 2: pred 4,3 true 5,3, ideal) -> 1; user 3 has one rating
    ww = out["W-W"]
    assert ww["mae"] == pytest.approx(2 / 3)
    assert ww["rmse"] == pytest.approx(sqrt(2 / 3))
    assert ww["clip_ndcg@3"] == pytest.approx((15 + 31 / log2(3) + 3.5) / (31 + 15 / log2(3) + 3.5))
    assert ww["ndcg@3"] == pytest.approx(1.0)
    assert (ww["n"], ww["n_users"], ww["n_users_ranked"]) == (3, 2, 1)
    # C-C rows 3, 4 (one user): MAE (2+0)/2 = 1, clip and within-user NDCG = u2
    assert out["C-C"]["mae"] == pytest.approx(1.0)
    assert out["C-C"]["clip_ndcg@3"] == pytest.approx(u2)
    assert out["C-C"]["ndcg@3"] == pytest.approx(u2)
    assert (out["C-C"]["n"], out["C-C"]["n_users"]) == (2, 1)
    # W-C: one rating -> no within-user NDCG; its clip is one item -> 1
    assert (out["W-C"]["mae"], out["W-C"]["n"], out["W-C"]["clip_ndcg@3"]) == (0.0, 1, 1.0)
    assert np.isnan(out["W-C"]["ndcg@3"])
    # relevance (true >= 4), overall: user 1 rel 1,0,0, the relevant item ranked first ->
    # P@3 = 1/3 (and P@5 = 1/3: a 3-item list divides by 3), MAP = NDCG_rel = 1; user 2 has no
    # relevant item (left out), user 3 one rating (left out)
    o = out["overall"]
    assert (o["precision@3"], o["precision@5"], o["map@3"], o["ndcg_rel@5"]) == pytest.approx((1 / 3, 1 / 3, 1, 1))
    assert o["n_users_relevant"] == 1


def test_ranking_metrics_hand_with_ties_k_above_n_and_users_without_relevant_items():
    # user "a": pred 3, 3, 1, 2; true 5, 2, 4, 1 -> relevant (>= 4): items 0 and 2.
    # ranks: {0, 1} tied at 1-2 (mean relevance 1/2), item 3 (0) at 3, item 2 (1) at 4.
    # k=3: P = (1/2 + 1/2 + 0)/3; NDCG_rel = (1/2 + 1/2/log2 3)/(1 + 1/log2 3);
    #      AP = (1/min(2,3)) * (E[rel1]/1 + E[rel2 (rel1 + rel2)]/2) = (1/2 + (1/2)/2)/2 = 3/8
    #      (the two orders of the tie give AP 1/2 and 1/4).
    # k=5 > 4 items: P divides by 4: (1/2 + 1/2 + 0 + 1)/4 = 1/2; AP adds rank 4: 2/4 ->
    #      (1/2 + 1/4 + 1/2)/2 = 5/8; NDCG_rel adds 1/log2 5.
    # user "b": no relevant item (true 1, 2): left out. user "c": one rating: left out.
    from metarec.metrics import ranking_metrics

    pred = [3.0, 3.0, 1.0, 2.0, 1.0, 2.0, 4.0]
    true = [5.0, 2.0, 4.0, 1.0, 1.0, 2.0, 5.0]
    users = ["a", "a", "a", "a", "b", "b", "c"]
    got = ranking_metrics(pred, true, users, ks=(3, 5), threshold=4.0, min_ratings=2)
    l3, l5 = log2(3), log2(5)
    assert got["precision@3"] == pytest.approx(1 / 3)
    assert got["ndcg_rel@3"] == pytest.approx((0.5 + 0.5 / l3) / (1 + 1 / l3))
    assert got["map@3"] == pytest.approx(3 / 8)
    assert got["precision@5"] == pytest.approx(1 / 2)
    assert got["map@5"] == pytest.approx(5 / 8)
    assert got["ndcg_rel@5"] == pytest.approx((0.5 + 0.5 / l3 + 1 / l5) / (1 + 1 / l3))
    assert (got["n_users_ranked"], got["n_users_relevant"]) == (2, 1)
    # the threshold is a parameter: at >= 2, user "b" has a relevant item (rank 1 -> all 1)
    low = ranking_metrics(pred, true, users, ks=(3,), threshold=2.0)
    assert low["n_users_relevant"] == 2
    # nobody relevant: NaN, not an error
    none = ranking_metrics([1.0, 2.0], [1.0, 1.0], [0, 0], ks=(3,))
    assert np.isnan(none["precision@3"]) and none["n_users_relevant"] == 0


def _brute_relevance(pred, true, k, threshold=4.0):
    """Every metric averaged over every order of the tied predictions (plain Python)."""
    import itertools

    idx = sorted(range(len(pred)), key=lambda i: -pred[i])
    groups = [list(g) for _, g in itertools.groupby(idx, key=lambda i: pred[i])]
    rel_all = [1.0 if y >= threshold else 0.0 for y in true]
    n_rel = sum(rel_all)
    kk = min(k, len(pred))
    out = []
    for combo in itertools.product(*(itertools.permutations(g) for g in groups)):
        rel = [rel_all[i] for g in combo for i in g]
        p = sum(rel[:kk]) / kk
        ndcg = sum(rel[r] / log2(r + 2) for r in range(kk)) / sum(1 / log2(r + 2) for r in range(int(min(n_rel, kk))))
        ap = sum(rel[i] * sum(rel[: i + 1]) / (i + 1) for i in range(kk)) / min(n_rel, kk)
        out.append((p, ndcg, ap))
    return np.mean(out, axis=0)


def test_relevance_metrics_match_brute_force_over_tie_orders():
    from metarec.metrics import per_user_scores

    rng = np.random.default_rng(11)
    users = np.repeat(np.arange(80), rng.integers(2, 7, size=80))
    pred = rng.integers(1, 4, size=users.size).astype(float)  # heavy ties
    true = rng.integers(1, 6, size=users.size).astype(float)
    for k in (1, 3, 5):
        want = []
        for u in np.unique(users):
            m = users == u
            want.append(_brute_relevance(list(pred[m]), list(true[m]), k) if (true[m] >= 4).any()
                        else (np.nan, np.nan, np.nan))
        want = np.array(want)
        for j, name in enumerate(("precision", "ndcg_rel", "map")):
            got = per_user_scores(pred, true, users, f"{name}@{k}", threshold=4.0)
            np.testing.assert_allclose(got, want[:, j], rtol=1e-12, atol=1e-12)


def test_per_user_scores_mae_mse_and_bad_metric_names():
    from metarec.metrics import per_user_scores

    got = per_user_scores([1.0, 3.0, 2.0], [2.0, 1.0, 2.0], ["x", "y", "x"], "mae")
    assert got == pytest.approx([0.5, 2.0])
    assert per_user_scores([1.0, 3.0, 2.0], [2.0, 1.0, 2.0], ["x", "y", "x"], "mse") == pytest.approx([0.5, 4.0])
    for bad in ("ndcg", "mae@3", "recall@5", "map@0", "map@x"):
        with pytest.raises(ValueError, match="metric|cut-off"):
            per_user_scores([1.0], [1.0], [0], bad)
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        per_user_scores([1.0], [1.0], [0], "map@3", threshold=float("nan"))


def test_scenario_metrics_empty_scenario_is_nan():
    pred, true, users, scen = _toy()
    cw = scenario_metrics(pred, true, users, scen)["C-W"]
    assert np.isnan(cw["mae"]) and np.isnan(cw["rmse"]) and np.isnan(cw["ndcg@3"])
    assert (cw["n"], cw["n_users"]) == (0, 0)


def test_scenario_metrics_int_codes_equal_names_and_key_follows_k():
    pred, true, users, scen = _toy()
    codes = np.array([{"W-W": 0, "W-C": 1, "C-W": 2, "C-C": 3}[s] for s in scen])
    by_name = scenario_metrics(pred, true, users, scen, k=2, clip_size=2)
    by_code = scenario_metrics(pred, true, users, codes, k=2, clip_size=2)
    assert set(by_name) == {"overall", "W-W", "W-C", "C-W", "C-C"}
    assert "ndcg@2" in by_name["W-W"] and "ndcg@3" not in by_name["W-W"]
    for cell in ("overall", "W-W", "W-C", "C-C"):
        assert by_name[cell] == pytest.approx(by_code[cell], nan_ok=True)


def test_scenario_metrics_bad_labels():
    pred, true, users, scen = _toy()
    bad = scen.copy()
    bad[1] = "X-Y"
    with pytest.raises(ValueError, match="X-Y"):
        scenario_metrics(pred, true, users, bad)
    with pytest.raises(ValueError, match="0..3.*got 4"):
        scenario_metrics(pred, true, users, np.array([0, 1, 4, 0, 0, 0]))
    with pytest.raises(ValueError, match="length 5"):
        scenario_metrics(pred, true, users, scen[:5])


# ---------------------------------------------------------------- bootstrap

def test_bootstrap_ci_deterministic_and_contains_mean():
    v = np.random.default_rng(1).gamma(2.0, 0.4, size=200)
    lo, hi = bootstrap_ci(v, n_boot=500, seed=3)
    assert (lo, hi) == bootstrap_ci(v, n_boot=500, seed=3)
    assert (lo, hi) != bootstrap_ci(v, n_boot=500, seed=4)
    assert lo < v.mean() < hi
    # a 50% interval is inside the 95% one
    lo50, hi50 = bootstrap_ci(v, n_boot=500, alpha=0.5, seed=3)
    assert lo <= lo50 < hi50 <= hi


def test_bootstrap_ci_degenerate_and_empty():
    assert bootstrap_ci([2.0, 2.0, 2.0], n_boot=50) == (2.0, 2.0)
    lo, hi = bootstrap_ci([], n_boot=50)
    assert np.isnan(lo) and np.isnan(hi)


def _ratings(n_users=40, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 8, size=n_users)
    users = np.repeat(np.arange(n_users) * 10 + 5, counts)
    rng.shuffle(users)  # interleave users
    true = rng.integers(1, 6, size=users.size).astype(float)
    pred = np.clip(true + rng.normal(0, 1, size=users.size), 1, 5)
    return pred, true, users


def test_bootstrap_metric_ci_deterministic_and_contains_point():
    pred, true, users = _ratings()
    ci = bootstrap_metric_ci(pred, true, users, user_mae, n_boot=300, seed=7)
    assert ci == bootstrap_metric_ci(pred, true, users, user_mae, n_boot=300, seed=7)
    assert ci != bootstrap_metric_ci(pred, true, users, user_mae, n_boot=300, seed=8)
    assert ci[0] < user_mae(pred, true, users) < ci[1]
    fn = lambda p, t, u: clip_ndcg(p, t)  # noqa: E731
    lo, hi = bootstrap_metric_ci(pred, true, users, fn, n_boot=300, seed=7)
    assert lo < clip_ndcg(pred, true) < hi


def test_bootstrap_metric_ci_matches_per_user_bootstrap():
    # Resampling users and recomputing Eq. 13 must equal bootstrapping the per-user
    # MAEs (users in order of first appearance) with the same draws. This fails if a
    # user drawn twice were merged into one user instead of counted twice.
    pred, true, users = _ratings()
    _, first = np.unique(users, return_index=True)
    order = users[np.sort(first)]
    per_user = np.array([np.mean(np.abs(pred - true)[users == u]) for u in order])
    got = bootstrap_metric_ci(pred, true, users, user_mae, n_boot=200, seed=11)
    want = bootstrap_ci(per_user, n_boot=200, seed=11)
    assert got == pytest.approx(want)


def test_bootstrap_metric_ci_keeps_users_whole_and_in_order():
    # pred encodes (user, position within user); check every resample keeps each
    # drawn user's rows together, complete and in their original order.
    users = np.array([0, 1, 0, 2, 1, 0])
    pred = np.array([0.0, 10.0, 1.0, 20.0, 11.0, 2.0])
    true = np.ones(6)
    seen = []

    def check(p, t, u):
        for new_id in np.unique(u):
            rows = p[u == new_id]
            owner = rows[0] // 10
            assert np.array_equal(rows, owner * 10 + np.arange({0: 3, 1: 2, 2: 1}[owner]))
        # users are laid out contiguously
        assert np.all(np.diff(u) >= 0)
        seen.append(len(np.unique(u)))
        return float(p.mean())

    bootstrap_metric_ci(pred, true, users, check, n_boot=30, seed=0)
    assert seen == [3] * 30


def test_bootstrap_metric_ci_empty():
    lo, hi = bootstrap_metric_ci([], [], [], user_mae, n_boot=10)
    assert np.isnan(lo) and np.isnan(hi)


# ---------------------------------------------------------------- paired test

def test_paired_test_hand_values():
    # d = a - b = 1, 2, 3, 4, 5: mean 3. All 5 ranks positive -> exact two-sided
    # Wilcoxon p = 2 * (1/2^5) = 0.0625. t = 3 / (sqrt(2.5)/sqrt(5)) on 4 df.
    b = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    a = b + np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    r = paired_test(a, b)
    assert r["mean_diff"] == pytest.approx(3.0)
    assert r["wilcoxon_p"] == pytest.approx(0.0625)
    t = 3 / (sqrt(2.5) / sqrt(5))
    assert r["ttest_p"] == pytest.approx(2 * stats.t.sf(t, df=4))
    assert r["n"] == 5


def test_paired_test_symmetric_sign():
    rng = np.random.default_rng(0)
    a = rng.normal(0.9, 0.2, size=30)
    b = a + rng.normal(0.05, 0.1, size=30)
    ab, ba = paired_test(a, b), paired_test(b, a)
    assert ab["mean_diff"] < 0 < ba["mean_diff"]
    assert ab["mean_diff"] == pytest.approx(-ba["mean_diff"])
    assert ab["wilcoxon_p"] == pytest.approx(ba["wilcoxon_p"])
    assert ab["ttest_p"] == pytest.approx(ba["ttest_p"])


def test_paired_test_identical_inputs():
    r = paired_test([0.8, 0.9, 0.85], [0.8, 0.9, 0.85])
    assert r == {"mean_diff": 0.0, "wilcoxon_p": 1.0, "ttest_p": 1.0, "n": 3}


# ---------------------------------------------------------------- multiplicity and strata

def test_holm_hand_example():
    # sorted p: 0.005, 0.01, 0.03, 0.04 (m = 4) -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04;
    # running max -> 0.02, 0.03, 0.06, 0.06; back in input order:
    from metarec.metrics import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1; NaN (a test not run) is not counted in m
    got = holm([0.5, np.nan, 0.4])
    assert got[0] == pytest.approx(0.8) and np.isnan(got[1]) and got[2] == pytest.approx(0.8)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # 0.6 x 2 capped at 1; 0.7 raised to the running max
    assert holm([]).size == 0
    with pytest.raises(ValueError, match="in \\[0, 1\\], got 1.5"):
        holm([0.1, 1.5])


def test_stratified_test_combines_seeds_by_stouffer_and_keeps_direction():
    from metarec.metrics import paired_test_by_stratum

    rng = np.random.default_rng(0)
    a1, b1 = rng.normal(1.0, 1, 40), rng.normal(0.0, 1, 40)
    a2, b2 = rng.normal(0.0, 1, 40), rng.normal(1.0, 1, 40)
    one = paired_test_by_stratum([a1], [b1])
    # continuous data (no ties): the mid-p is the ordinary one-sided p up to 1/2 P(T = t)
    p1 = (stats.wilcoxon(a1, b1, alternative="greater").pvalue + 1 - stats.wilcoxon(a1, b1, alternative="less").pvalue) / 2
    assert one["stouffer_z"] == pytest.approx(stats.norm.isf(p1))
    assert one["p"] == pytest.approx(2 * stats.norm.sf(abs(stats.norm.isf(p1))))
    # two seeds pointing opposite ways cancel; two pointing the same way add up
    opposite = paired_test_by_stratum([a1, a2], [b1, b2])
    same = paired_test_by_stratum([a1, a1], [b1, b1])
    z = stats.norm.isf(p1)
    assert same["stouffer_z"] == pytest.approx(2 * z / np.sqrt(2))
    assert opposite["p"] > 0.05 > same["p"]
    assert same["n_strata"] == 2 and same["n"] == 80
    # a stratum of identical values contributes z = 0; one with < 2 units is skipped
    flat = paired_test_by_stratum([a1, [1.0, 1.0], [3.0]], [b1, [1.0, 1.0], [2.0]])
    assert flat["stouffer_z"] == pytest.approx(z / np.sqrt(2)) and flat["n_strata"] == 2
    # every difference negative in 5 units: the exact one-sided p is 1 at that end; the mid-p
    # (1 + 31/32)/2 keeps z finite (-2.15), and 5 seeds like it give a finite combined p
    neg = paired_test_by_stratum([[1.0, 2.0, 3.0, 4.0, 5.0]], [[2.0, 4.0, 6.0, 8.0, 10.0]])
    assert neg["per_stratum"][0]["p_greater_mid"] == pytest.approx((1 + 31 / 32) / 2)
    assert neg["stouffer_z"] == pytest.approx(stats.norm.isf((1 + 31 / 32) / 2))
    five = paired_test_by_stratum([[1.0, 2.0, 3.0, 4.0, 5.0]] * 5, [[2.0, 4.0, 6.0, 8.0, 10.0]] * 5)
    assert five["stouffer_z"] == pytest.approx(np.sqrt(5) * stats.norm.isf((1 + 31 / 32) / 2))
    with pytest.raises(ValueError, match="at least 2 paired units"):
        paired_test_by_stratum([[1.0]], [[2.0]])
    with pytest.raises(ValueError, match="same number of strata"):
        paired_test_by_stratum([a1], [b1, b2])


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: mae([1.0, 2.0], [1.0]), r"same shape.*\(2,\).*\(1,\)"),
        (lambda: rmse([1.0, np.nan], [1.0, 2.0]), r"pred contains 1 non-finite.*index 1: nan"),
        (lambda: mae([1.0, 2.0], [np.inf, 2.0]), r"true contains.*index 0: inf"),
        (lambda: mae([], []), "empty"),
        (lambda: mae([[1.0]], [[1.0]]), r"1-D, got shape \(1, 1\)"),
        (lambda: mae(["a"], [1.0]), "numeric"),
        (lambda: ndcg_at_k([1.0], [1.0], k=0), "k must be >= 1, got 0"),
        (lambda: ndcg_at_k([1.0], [1.0], k=2.5), "k must be an integer.*2.5"),
        (lambda: ndcg_at_k([], []), "empty"),
        (lambda: ndcg_at_k([1.0, 2.0], [-1.0, 2.0]), r"-1.0 at index 0"),
        (lambda: clip_ndcg([1.0], [1.0], clip_size=0), "clip_size must be >= 1, got 0"),
        (lambda: user_mae([1.0, 2.0], [1.0, 2.0], [0]), "user_index has length 1"),
        (lambda: user_ndcg([1.0], [1.0], [np.nan]), "user_index contains NaN"),
        (lambda: user_ndcg([1.0], [1.0], [0], k=-1), "k must be >= 1, got -1"),
        (lambda: user_ndcg([1.0], [1.0], [0], min_ratings=0), "min_ratings must be >= 1, got 0"),
        (lambda: bootstrap_ci([1.0, 2.0], n_boot=0), "n_boot must be >= 1, got 0"),
        (lambda: bootstrap_ci([1.0, 2.0], alpha=1.5), r"alpha must be in \(0, 1\), got 1.5"),
        (lambda: bootstrap_ci([1.0, np.nan]), "per_user_values contains"),
        (lambda: bootstrap_metric_ci([1.0], [1.0], [0], "mae"), "metric_fn must be callable"),
        (lambda: paired_test([1.0, 2.0], [1.0]), r"a and b must have the same shape"),
        (lambda: paired_test([1.0], [2.0]), "at least 2 paired units, got 1"),
        (lambda: paired_test([1.0, np.nan], [2.0, 1.0]), "a contains"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
