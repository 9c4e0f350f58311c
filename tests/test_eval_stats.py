"""Score intervals, BCa bootstrap, exact paired tests, length-controlled win rate, Pareto."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from alignkit.evaluation import stats
from alignkit.evaluation.pareto import dominance, dominates, hypervolume, pareto_front
from alignkit.evaluation.stats import (
    Estimate,
    PairedTest,
    bootstrap_ci,
    estimate,
    length_controlled_win_rate,
    mcnemar_exact,
    paired_bootstrap,
    paired_test,
    proportion_ci,
)

# --------------------------------------------------------------------------- proportions


def _coverage(p: float, n: int, trials: int) -> float:
    """Share of ``trials`` seeded 0/1 samples whose interval from :func:`estimate` covers p."""
    hits, by_count = 0, {}  # the interval depends only on the count: compute each one once
    for seed in range(trials):
        values = (np.random.default_rng(seed).random(n) < p).astype(float)
        k = int(values.sum())
        est = by_count[k] = by_count.get(k) or estimate(values, seed=seed)
        assert est.n == n and est.value == pytest.approx(values.mean())
        assert est.low <= est.value <= est.high and est.high > est.low
        hits += est.low <= p <= est.high
    return hits / trials


@pytest.mark.parametrize(("p", "n"), [(0.03, 40), (0.97, 40), (0.05, 12), (0.37, 80)])
def test_proportion_interval_covers_even_at_edge_rates(p, n):
    # At p = 0.03, n = 40 a sample has no success 30% of the time: a percentile bootstrap then
    # says [0, 0] and its coverage falls to about 0.70.
    assert _coverage(p, n, trials=1000) >= 0.93


def test_proportion_interval_never_collapses_at_0_or_1():
    twelve = estimate([1.0] * 12)  # the red-team report's ASR of 12/12
    assert twelve.value == 1.0 and twelve.high == 1.0 and twelve.n == 12
    assert twelve.low == pytest.approx(0.74, abs=0.01)
    assert twelve.low == pytest.approx(0.025 ** (1 / 12))  # Clopper-Pearson, closed form
    assert twelve.method == "clopper-pearson"
    two = estimate([1.0, 1.0])  # harmlessness 2/2
    assert two.low < 0.35 and two.high == 1.0
    none = estimate([0.0] * 40)  # an ASR of 0 after training
    assert none.low == 0.0 and none.high > 0.05 and none.method == "wilson"
    assert none.high == pytest.approx(1.96**2 / (40 + 1.96**2), rel=1e-3)  # Wilson, closed form
    assert estimate([1.0] * 30).method == "wilson" and estimate([1.0] * 29).method == (
        "clopper-pearson"
    )
    assert proportion_ci(3, 10) == estimate([1.0] * 3 + [0.0] * 7)
    assert proportion_ci(3, 10, method="wilson").method == "wilson"
    assert proportion_ci(0, 0).n == 0 and math.isnan(proportion_ci(0, 0).value)
    with pytest.raises(ValueError, match="successes <= n"):
        proportion_ci(5, 4)
    with pytest.raises(ValueError, match="method"):
        proportion_ci(1, 4, method="wald")


def test_estimate_chooses_the_interval_from_the_data():
    rng = np.random.default_rng(0)
    assert estimate(rng.normal(size=50)).method == "bca"
    assert estimate([0.0, 0.5, 1.0, 1.0]).method in ("bca", "percentile")  # ties: not a rate
    kl = estimate([0.0] * 10, proportion=False)  # a KL of 0 is not a rate of 0
    assert (kl.low, kl.high, kl.method) == (0.0, 0.0, "constant")
    with pytest.raises(ValueError, match="0 or 1"):
        estimate([0.0, 0.5], proportion=True)
    # the former name gives the same honest figure
    assert bootstrap_ci([1.0] * 12) == estimate([1.0] * 12)


# --------------------------------------------------------------------------- continuous means


def test_bca_interval_covers_a_skewed_mean():
    hits, trials = 0, 300
    for seed in range(trials):
        values = np.random.default_rng(seed).exponential(1.0, 40)
        est = estimate(values, n_resamples=1000, seed=seed)
        assert est.method == "bca" and est.low < est.value < est.high
        hits += est.low <= 1.0 <= est.high
    assert 0.90 <= hits / trials <= 0.98


def test_bootstrap_confidence_level_changes_width():
    values = np.random.default_rng(1).normal(size=200)
    wide = estimate(values, confidence=0.99)
    narrow = estimate(values, confidence=0.5)
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)


def test_bootstrap_narrows_like_one_over_sqrt_n():
    rng = np.random.default_rng(2)
    widths = {}
    for n in (25, 100, 400):
        est = estimate(rng.normal(size=n), seed=3)
        widths[n] = est.high - est.low
    assert widths[25] > widths[100] > widths[400] > 0
    assert 0.15 <= widths[400] / widths[25] <= 0.35  # 1/sqrt(16) = 0.25


def test_bootstrap_deterministic_with_seed():
    values = np.random.default_rng(4).random(60)
    assert estimate(values, seed=7) == estimate(list(values), seed=7)
    assert estimate(values, seed=7) != estimate(values, seed=8)


def test_bootstrap_batches_keep_resample_matrix_small(monkeypatch):
    values = np.random.default_rng(5).random(50)
    reference = estimate(values, n_resamples=2000, seed=0)
    batches: list[int] = []
    real = stats.sps.bootstrap

    def recording(*args, **kwargs):
        batches.append(kwargs["batch"])
        return real(*args, **kwargs)

    monkeypatch.setattr(stats, "_MAX_BOOTSTRAP_ELEMENTS", 1000)
    monkeypatch.setattr(stats.sps, "bootstrap", recording)
    batched = estimate(values, n_resamples=2000, seed=0)
    assert batches and all(b * len(values) <= 1000 for b in batches)
    assert batched.value == reference.value
    assert batched.low == pytest.approx(reference.low, abs=0.02)
    assert batched.high == pytest.approx(reference.high, abs=0.02)


def test_estimate_edge_cases():
    empty = estimate([])
    assert empty.n == 0 and all(math.isnan(x) for x in (empty.value, empty.low, empty.high))
    one = estimate([0.7])  # no spread to estimate from: no interval, not a point
    assert one.value == 0.7 and math.isnan(one.low) and one.method == "none"
    assert estimate([1.0]).low == pytest.approx(0.025)  # one success: Clopper-Pearson
    assert estimate([2.0] * 10) == Estimate(2.0, 2.0, 2.0, 10, "constant")
    with pytest.raises(ValueError, match="index 2"):
        estimate([1.0, 0.0, float("nan")])
    with pytest.raises(ValueError, match="missing"):
        estimate([1.0, None, 0.0])
    with pytest.raises(ValueError, match="1-D"):
        estimate([[1.0, 0.0]])
    with pytest.raises(ValueError, match="confidence"):
        estimate([1.0, 0.0], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        estimate([1.0, 0.0], n_resamples=0)


def test_estimate_dict_round_trip_is_strict_json():
    est = Estimate(0.5, 0.25, 0.75, 12, "wilson")
    assert est.to_dict() == {"value": 0.5, "low": 0.25, "high": 0.75, "n": 12, "method": "wilson"}
    assert Estimate.from_dict(json.loads(json.dumps(est.to_dict()))) == est
    empty = estimate([])
    text = json.dumps(empty.to_dict(), allow_nan=False)
    back = Estimate.from_dict(json.loads(text))
    assert back.n == 0 and math.isnan(back.value) and math.isnan(back.high)
    # files written before the method was recorded still read
    old = Estimate.from_dict({"value": 0.5, "low": 0.25, "high": 0.75, "n": 12})
    assert old == Estimate(0.5, 0.25, 0.75, 12) and old.method is None
    test = PairedTest(0.1, 0.05, 0.15, 0.002, 30, "permutation/bca")
    assert PairedTest.from_dict(json.loads(json.dumps(test.to_dict()))) == test
    assert set(test.to_dict()) == {"diff", "low", "high", "p_value", "n", "method"}
    assert (
        PairedTest.from_dict({"diff": 0.1, "low": 0, "high": 0.2, "p_value": 0.5, "n": 3}).method
        is None
    )


# --------------------------------------------------------------------------- paired tests


def _paired_scores(seed, n, shift):
    """Scores of two runs on the same items: a large per-item effect plus small noise."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, 1.0, n)
    a = difficulty + rng.normal(0.0, 0.2, n)
    b = difficulty + shift + rng.normal(0.0, 0.2, n)
    return a, b


def test_paired_test_detects_real_shift():
    a, b = _paired_scores(0, 100, 0.1)
    test = paired_test(a, b)
    assert test.n == 100 and test.diff == pytest.approx(np.mean(b - a))
    assert test.method == "permutation/bca"
    assert 0.0 < test.low < test.diff < test.high
    assert test.p_value < 0.01
    # Pairing removes the item variance: the unpaired CIs of the two runs overlap.
    ca, cb = estimate(a), estimate(b)
    assert ca.high > cb.low
    # A shift the other way gives a negative difference, just as significant.
    reverse = paired_test(b, a)
    assert reverse.diff == pytest.approx(-test.diff)
    assert reverse.high < 0.0 and reverse.p_value < 0.01


def test_permutation_p_value_is_uniform_under_the_null():
    p_values = []
    for seed in range(200):
        a, b = _paired_scores(seed, 40, 0.0)
        p_values.append(paired_test(a, b, n_resamples=500, seed=seed).p_value)
    p_values = np.array(p_values)
    assert np.all((p_values > 0.0) & (p_values <= 1.0))
    for level in (0.05, 0.2, 0.5):  # P(p <= level) = level under the null
        assert abs(np.mean(p_values <= level) - level) <= 0.07, level


def test_permutation_test_is_exact_for_few_pairs():
    # Five pairs, every difference positive: 2 of the 32 sign patterns are as extreme (all +,
    # all -), so p = 2/32 exactly. A paired bootstrap put it near 0.001.
    a = np.arange(5.0)
    assert paired_test(a, a + [0.1, 0.3, 0.2, 0.5, 0.4]).p_value == pytest.approx(0.0625)
    # Six mixed differences: p = share of all 64 sign patterns with |mean| >= the observed one.
    d = np.array([0.9, -0.2, 0.4, 0.7, -0.1, 0.5])
    observed = abs(d.mean())
    patterns = itertools.product((1.0, -1.0), repeat=6)
    extreme = sum(abs((d * np.array(s)).mean()) >= observed - 1e-12 for s in patterns)
    assert paired_test(np.zeros(6), d).p_value == pytest.approx(extreme / 64)


def test_mcnemar_p_value_is_the_binomial_test_of_discordant_pairs():
    # 30 items: 12 pass in both runs, 10 fail in both, 1 passes only in A, 7 only in B.
    a = [1.0] * 12 + [0.0] * 10 + [1.0] + [0.0] * 7
    b = [1.0] * 12 + [0.0] * 10 + [0.0] + [1.0] * 7
    test = paired_test(a, b)
    assert test.method == "mcnemar-exact/newcombe" and test.n == 30
    assert test.diff == pytest.approx(6 / 30)
    expected = 2 * sum(math.comb(8, k) for k in (0, 1)) / 2**8  # = 0.0703125
    assert test.p_value == pytest.approx(expected)
    assert test.p_value == pytest.approx(sps.binomtest(7, 8, 0.5).pvalue)
    assert mcnemar_exact(a, b) == test.p_value == mcnemar_exact(b, a)
    assert mcnemar_exact([1.0, 0.0], [1.0, 0.0]) == 1.0  # no discordant pair


def test_paired_interval_is_honest_at_the_edges():
    zeros, ones = [0.0] * 20, [1.0] * 20
    none = paired_test(zeros, zeros)  # e.g. an ASR of 0 before and after
    assert none.diff == 0.0 and none.p_value == 1.0
    assert none.low < -0.1 and none.high > 0.1  # not [0, 0]
    gone = paired_test(ones, zeros)  # every attack worked before, none after
    assert gone.diff == -1.0 and gone.low == -1.0 and -0.9 < gone.high < -0.5
    assert gone.p_value == pytest.approx(2 / 2**20)
    full = paired_test(ones, ones)
    assert full.high - full.low > 0.2


def test_paired_proportion_interval_covers_the_true_difference():
    # Correlated pass/fail of two runs: P(A) = 0.10, P(B) = 0.05, n = 60.
    cells = np.array([0.03, 0.07, 0.02, 0.88])  # (A, B) = (1,1), (1,0), (0,1), (0,0)
    truth = (cells[0] + cells[2]) - (cells[0] + cells[1])
    hits, trials, by_table = 0, 1000, {}  # the interval depends only on the 2x2 table
    for seed in range(trials):
        draw = np.random.default_rng(seed).choice(4, size=60, p=cells)
        a, b = np.isin(draw, (0, 1)).astype(float), np.isin(draw, (0, 2)).astype(float)
        table = tuple(np.bincount(draw, minlength=4))
        test = by_table[table] = by_table.get(table) or paired_test(a, b, seed=seed)
        hits += test.low <= truth <= test.high
    assert hits / trials >= 0.93


def test_paired_test_edge_cases():
    empty = paired_test([], [])
    assert empty.n == 0 and math.isnan(empty.diff) and math.isnan(empty.p_value)
    single = paired_test([0.0], [1.0])
    assert single.diff == 1.0 and single.p_value == 1.0 and single.low < 1.0
    one = paired_test([0.2], [0.7])  # one continuous pair: no interval, p = 1
    assert one.p_value == 1.0 and math.isnan(one.low) and one.method == "permutation/none"
    same = paired_test([0.0, 0.5, 1.0], [0.0, 0.5, 1.0])
    assert same.diff == 0.0 and same.p_value == 1.0
    with pytest.raises(ValueError, match="length"):
        paired_test([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="b: value at index 1"):
        paired_test([0.0, 1.0], [1.0, float("nan")])
    a, b = _paired_scores(3, 30, 0.5)
    assert paired_test(a, b, seed=1) == paired_test(a, b, seed=1)
    assert paired_bootstrap(a, b, seed=1) == paired_test(a, b, seed=1)  # the former name


# --------------------------------------------------------------------------- length control


def _comparisons(seed, n, quality, length_effect, mean_diff=300.0):
    """Win/tie/loss outcomes whose win probability follows the AlpacaEval 2 length model."""
    rng = np.random.default_rng(seed)
    d = rng.normal(mean_diff, 200.0, n)
    p = 1.0 / (1.0 + np.exp(-(quality + length_effect * np.tanh(d / d.std()))))
    u = rng.random(n)
    outcomes = np.where(u < p, 1.0, 0.0)
    ties = rng.random(n) < 0.1  # some comparisons are ties (soft label 0.5)
    outcomes[ties] = 0.5
    return outcomes, d


def test_lc_win_rate_removes_win_from_length_alone():
    outcomes, d = _comparisons(0, 4000, quality=0.0, length_effect=2.0)
    assert outcomes.mean() > 0.7  # the longer model "wins" on raw win rate
    assert length_controlled_win_rate(outcomes, d) == pytest.approx(0.5, abs=0.04)


def test_lc_win_rate_removes_loss_from_being_shorter():
    outcomes, d = _comparisons(1, 4000, quality=0.0, length_effect=2.0, mean_diff=-300.0)
    assert outcomes.mean() < 0.3
    assert length_controlled_win_rate(outcomes, d) == pytest.approx(0.5, abs=0.04)


def test_lc_win_rate_keeps_genuine_quality():
    outcomes, d = _comparisons(2, 4000, quality=1.5, length_effect=2.0)
    true_rate = 0.5 * 0.1 + 0.9 / (1.0 + math.exp(-1.5))  # ties are in the truth too
    assert length_controlled_win_rate(outcomes, d) == pytest.approx(true_rate, abs=0.04)
    assert length_controlled_win_rate(outcomes, d) > 0.75
    # Without a length effect, LC and raw win rates agree.
    plain, d2 = _comparisons(3, 4000, quality=1.0, length_effect=0.0)
    assert length_controlled_win_rate(plain, d2) == pytest.approx(plain.mean(), abs=0.03)


def test_lc_win_rate_edge_cases():
    assert math.isnan(length_controlled_win_rate([], []))
    assert length_controlled_win_rate([1.0, 0.0, 1.0], [5, 5, 5]) == pytest.approx(2 / 3)
    all_wins = length_controlled_win_rate([1.0] * 20, list(range(20)))
    assert 0.9 < all_wins <= 1.0
    assert length_controlled_win_rate([0.5] * 20, list(range(20))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        length_controlled_win_rate([2.0, 0.0], [1, 2])
    with pytest.raises(ValueError, match="length"):
        length_controlled_win_rate([1.0, 0.0], [1])
    with pytest.raises(ValueError, match="outcomes"):
        length_controlled_win_rate([1.0, None], [1, 2])


# --------------------------------------------------------------------------- Pareto helpers

POINTS = {
    "base": [0.5, 0.5],
    "dpo": [0.7, 0.6],
    "safe": [0.4, 0.9],
    "bad": [0.3, 0.4],
    "dpo_copy": [0.7, 0.6],
}


def test_dominates():
    assert dominates([1, 1], [0, 1])
    assert not dominates([0, 1], [1, 1])
    assert not dominates([1, 0], [0, 1])  # trade-off
    assert not dominates([1, 1], [1, 1])  # equal points do not dominate each other
    with pytest.raises(ValueError, match="objectives"):
        dominates([1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        dominates([1, float("nan")], [0, 0])


def test_pareto_front_and_dominance():
    assert pareto_front(POINTS) == ["dpo", "safe", "dpo_copy"]
    assert dominance(POINTS) == {
        "base": ["bad"],
        "dpo": ["base", "bad"],
        "safe": ["bad"],
        "bad": [],
        "dpo_copy": ["base", "bad"],
    }
    as_dicts = {name: {"helpful": p[0], "harmless": p[1]} for name, p in POINTS.items()}
    as_dicts["safe"] = {"harmless": 0.9, "helpful": 0.4}  # key order does not matter
    assert pareto_front(as_dicts) == ["dpo", "safe", "dpo_copy"]
    assert pareto_front({}) == [] and dominance({}) == {}
    assert pareto_front({"only": [1.0]}) == ["only"]


def test_pareto_bad_input():
    with pytest.raises(ValueError, match="different numbers"):
        pareto_front({"a": [1, 2], "b": [1, 2, 3]})
    with pytest.raises(ValueError, match="'b' has objectives"):
        pareto_front({"a": {"x": 1, "y": 2}, "b": {"x": 1}})
    with pytest.raises(ValueError, match="'a': contains NaN"):
        dominance({"a": [1, float("nan")], "b": [1, 2]})


def _hv_inclusion_exclusion(points, reference):
    """Exact hypervolume of few points by inclusion-exclusion over their boxes."""
    pts = [np.asarray(p, float) for p in points if np.all(np.asarray(p) > reference)]
    total = 0.0
    for k in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, k):
            corner = np.min(subset, axis=0)
            total += (-1) ** (k + 1) * float(np.prod(corner - reference))
    return total


def test_hypervolume_hand_computed():
    # 2-D staircase: widths 1 at heights 3, 2, 1.
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (0, 0)) == pytest.approx(6.0)
    # 3-D: three boxes of volume 3 overlapping in the unit cube: 9 - 3 + 1.
    assert hypervolume([(3, 1, 1), (1, 3, 1), (1, 1, 3)], (0, 0, 0)) == pytest.approx(7.0)
    # 3-D: unit cube plus a 2x2x0.5 slab overlapping it in 1x1x0.5.
    assert hypervolume([(1, 1, 1), (2, 2, 0.5)], (0, 0, 0)) == pytest.approx(2.5)
    assert hypervolume([(0.7, 0.6)], (0.5, 0.5)) == pytest.approx(0.02)
    assert hypervolume([(4.0,), (2.0,)], (1.0,)) == pytest.approx(3.0)


def test_hypervolume_ignores_dominated_duplicate_and_outside_points():
    base = [(1, 3), (2, 2), (3, 1)]
    extra = [(1, 1), (2, 2), (5, 0), (0, 5), (-1, 7)]  # dominated, duplicate, on/behind the ref
    assert hypervolume(base + extra, (0, 0)) == pytest.approx(6.0)
    assert hypervolume([], (0, 0)) == 0.0
    assert hypervolume([(0, 1), (1, 0)], (0, 0)) == 0.0
    # Translating points and reference together changes nothing.
    shifted = [(x + 10, y - 4) for x, y in base]
    assert hypervolume(shifted, (10, -4)) == pytest.approx(6.0)


@pytest.mark.parametrize("dim", [2, 3, 4, 5])
def test_hypervolume_matches_inclusion_exclusion(dim):
    rng = np.random.default_rng(dim)
    for _ in range(5):
        points = rng.random((9, dim)).round(1)  # rounding makes ties in coordinates
        reference = np.full(dim, 0.05)
        expected = _hv_inclusion_exclusion(points, reference)
        assert hypervolume(points.tolist(), reference.tolist()) == pytest.approx(expected)


def test_hypervolume_bad_input():
    with pytest.raises(ValueError, match="point 1 has 3 objectives"):
        hypervolume([(1, 2), (1, 2, 3)], (0, 0))
    with pytest.raises(ValueError, match="NaN"):
        hypervolume([(1, float("nan"))], (0, 0))
    with pytest.raises(ValueError, match="finite"):
        hypervolume([(1, float("inf"))], (0, 0))
