"""Bootstrap CIs, paired tests, length-controlled win rate and Pareto / hypervolume helpers."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from alignkit.evaluation import stats
from alignkit.evaluation.pareto import dominance, dominates, hypervolume, pareto_front
from alignkit.evaluation.stats import (
    Estimate,
    PairedTest,
    bootstrap_ci,
    length_controlled_win_rate,
    paired_bootstrap,
)

# --------------------------------------------------------------------------- bootstrap_ci


def test_bootstrap_ci_covers_bernoulli_mean_about_95_percent():
    # p * n is not an integer, so p never sits exactly on a CI bound (which inflates coverage).
    p, n, trials = 0.37, 80, 400
    hits = 0
    for seed in range(trials):
        values = (np.random.default_rng(seed).random(n) < p).astype(float)
        est = bootstrap_ci(values, n_resamples=1000, seed=seed)
        assert est.n == n and est.value == pytest.approx(values.mean())
        assert est.low <= est.value <= est.high
        hits += est.low <= p <= est.high
    coverage = hits / trials
    assert 0.92 <= coverage <= 0.975, coverage


def test_bootstrap_ci_confidence_level_changes_width():
    values = np.random.default_rng(1).normal(size=200)
    wide = bootstrap_ci(values, confidence=0.99)
    narrow = bootstrap_ci(values, confidence=0.5)
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)


def test_bootstrap_ci_narrows_like_one_over_sqrt_n():
    rng = np.random.default_rng(2)
    widths = {}
    for n in (25, 100, 400):
        est = bootstrap_ci((rng.random(n) < 0.5).astype(float), seed=3)
        widths[n] = est.high - est.low
    assert widths[25] > widths[100] > widths[400] > 0
    assert 0.15 <= widths[400] / widths[25] <= 0.35  # 1/sqrt(16) = 0.25


def test_bootstrap_ci_deterministic_with_seed():
    values = np.random.default_rng(4).random(60)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(list(values), seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)


class _RecordingGenerator:
    """Wraps a numpy Generator and records the shape of every ``integers`` draw."""

    def __init__(self, seed, shapes):
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._shapes = shapes

    def integers(self, low, high, size):
        self._shapes.append(size)
        return self._rng.integers(low, high, size=size)


def test_bootstrap_chunks_keep_index_matrix_small(monkeypatch):
    values = np.random.default_rng(5).random(50)
    reference = bootstrap_ci(values, n_resamples=2000, seed=0)
    shapes: list[tuple[int, int]] = []
    monkeypatch.setattr(stats, "_MAX_BOOTSTRAP_ELEMENTS", 1000)
    monkeypatch.setattr(stats.np.random, "default_rng", lambda s: _RecordingGenerator(s, shapes))
    chunked = bootstrap_ci(values, n_resamples=2000, seed=0)
    assert len(shapes) == 100 and all(rows * n <= 1000 for rows, n in shapes)
    assert sum(rows for rows, _ in shapes) == 2000
    # Same statistic from a different draw: bounds agree to Monte Carlo error.
    assert chunked.value == reference.value
    assert chunked.low == pytest.approx(reference.low, abs=0.02)
    assert chunked.high == pytest.approx(reference.high, abs=0.02)


def test_bootstrap_ci_edge_cases():
    empty = bootstrap_ci([])
    assert empty.n == 0 and all(math.isnan(x) for x in (empty.value, empty.low, empty.high))
    assert bootstrap_ci([0.7]) == Estimate(0.7, 0.7, 0.7, 1)
    assert bootstrap_ci([2.0] * 10) == Estimate(2.0, 2.0, 2.0, 10)
    with pytest.raises(ValueError, match="index 2"):
        bootstrap_ci([1.0, 0.0, float("nan")])
    with pytest.raises(ValueError, match="missing"):
        bootstrap_ci([1.0, None, 0.0])
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci([[1.0, 0.0]])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 0.0], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([1.0, 0.0], n_resamples=0)


def test_estimate_dict_round_trip_is_strict_json():
    est = Estimate(0.5, 0.25, 0.75, 12)
    assert est.to_dict() == {"value": 0.5, "low": 0.25, "high": 0.75, "n": 12}
    assert Estimate.from_dict(json.loads(json.dumps(est.to_dict()))) == est
    empty = bootstrap_ci([])
    text = json.dumps(empty.to_dict(), allow_nan=False)
    back = Estimate.from_dict(json.loads(text))
    assert back.n == 0 and math.isnan(back.value) and math.isnan(back.high)
    test = PairedTest(0.1, 0.05, 0.15, 0.002, 30)
    assert PairedTest.from_dict(json.loads(json.dumps(test.to_dict()))) == test
    assert set(test.to_dict()) == {"diff", "low", "high", "p_value", "n"}


# --------------------------------------------------------------------------- paired_bootstrap


def _paired_scores(seed, n, shift):
    """Scores of two runs on the same items: a large per-item effect plus small noise."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, 1.0, n)
    a = difficulty + rng.normal(0.0, 0.2, n)
    b = difficulty + shift + rng.normal(0.0, 0.2, n)
    return a, b


def test_paired_bootstrap_detects_real_shift():
    a, b = _paired_scores(0, 100, 0.1)
    test = paired_bootstrap(a, b)
    assert test.n == 100 and test.diff == pytest.approx(np.mean(b - a))
    assert 0.0 < test.low < test.diff < test.high
    assert test.p_value < 0.01
    # Pairing removes the item variance: the unpaired CIs of the two runs overlap.
    ca, cb = bootstrap_ci(a), bootstrap_ci(b)
    assert ca.high > cb.low
    # A shift the other way gives a negative difference, just as significant.
    reverse = paired_bootstrap(b, a)
    assert reverse.diff == pytest.approx(-test.diff)
    assert reverse.high < 0.0 and reverse.p_value < 0.01


def test_paired_bootstrap_no_shift_is_calibrated():
    p_values = []
    for seed in range(200):
        a, b = _paired_scores(seed, 40, 0.0)
        p_values.append(paired_bootstrap(a, b, n_resamples=500, seed=seed).p_value)
    p_values = np.array(p_values)
    assert np.all((p_values > 0.0) & (p_values <= 1.0))
    assert np.mean(p_values < 0.05) <= 0.10  # nominal 5% false positives
    assert 0.3 <= np.median(p_values) <= 0.7  # roughly uniform under the null


def test_paired_bootstrap_edge_cases():
    empty = paired_bootstrap([], [])
    assert empty.n == 0 and math.isnan(empty.diff) and math.isnan(empty.p_value)
    assert paired_bootstrap([0.0], [1.0]) == PairedTest(1.0, 1.0, 1.0, 1.0, 1)
    same = paired_bootstrap([0.0, 1.0, 1.0], [0.0, 1.0, 1.0])
    assert same.diff == 0.0 and same.p_value == 1.0
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="b: value at index 1"):
        paired_bootstrap([0.0, 1.0], [1.0, float("nan")])
    a, b = _paired_scores(3, 30, 0.5)
    assert paired_bootstrap(a, b, seed=1) == paired_bootstrap(a, b, seed=1)


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
