"""Confidence intervals, paired significance tests and the length-controlled win rate.

Every figure alignkit reports carries its ``n`` and a confidence interval that stays honest at
rates of 0 and 1; :func:`estimate` picks the interval from the data:

- **Proportions** (every value 0 or 1) get a score interval that never collapses to a point:
  Clopper-Pearson's exact interval for fewer than :data:`SMALL_N` trials, Wilson's score
  interval from then on (Brown, Cai & DasGupta 2001, "Interval Estimation for a Binomial
  Proportion", *Statistical Science* 16(2): Wilson's coverage dips below nominal for small
  ``n``, Clopper-Pearson's never does). 12 successes in 12 give [0.735, 1].
- **Continuous figures** get a BCa bootstrap interval of the mean (Efron 1987, "Better
  Bootstrap Confidence Intervals", *JASA* 82(397); Efron & Tibshirani 1993, ch. 14), falling
  back to the percentile interval where BCa is undefined (e.g. no jackknife spread).

Two runs on the same items are compared by :func:`paired_test`: when both are binary, with the
exact McNemar test (a two-sided binomial test on the discordant pairs; McNemar 1947) and
Newcombe's hybrid score interval for the difference of paired proportions (Newcombe 1998,
"Improved confidence intervals for the difference between binomial proportions based on paired
data", *Statistics in Medicine* 17, method 10); otherwise with a sign-flip permutation test of
the mean difference (exact over all ``2^n`` sign patterns when they number at most
``n_resamples``) and a BCa interval of the per-item differences. Each result records the
``method`` it used. Pairwise win rates are also reported length-controlled, as AlpacaEval 2
does (Dubois et al., 2024, "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic
Evaluators", arXiv:2404.04475).

scipy does the statistics. Results are deterministic given ``seed``. Inputs with NaN raise
:class:`ValueError`: callers drop missing values (``None``) first.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

SMALL_N = 30
"""Proportions over fewer trials than this get the Clopper-Pearson interval, others Wilson's."""
# Largest resample matrix (rows x items) scipy builds at once; larger bootstraps go in batches.
_MAX_BOOTSTRAP_ELEMENTS = 1 << 21
# L2 penalty of the length-controlled win-rate regression: keeps the fit finite when the model
# wins (or loses) every comparison, and is negligible otherwise.
_LC_L2 = 1e-2
_SCIPY_PROPORTION = {"clopper-pearson": "exact", "wilson": "wilson"}


def _json_float(x: float) -> float | None:
    """``x`` as a JSON-safe value: NaN (no data) becomes ``None``."""
    return None if math.isnan(x) else float(x)


def _from_json_float(x: Any) -> float:
    return math.nan if x is None else float(x)


@dataclass
class Estimate:
    """A figure with its confidence interval: ``value`` (the mean) in ``[low, high]`` over ``n``
    values; ``method`` names the interval (``"clopper-pearson"``, ``"wilson"``, ``"bca"``,
    ``"percentile"``, ``"constant"``, ``"none"``; None when not recorded)."""

    value: float
    low: float
    high: float
    n: int
    method: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "low", "high", "n", "method"}``; NaN (no data) is written as ``None``."""
        return {
            "value": _json_float(self.value),
            "low": _json_float(self.low),
            "high": _json_float(self.high),
            "n": int(self.n),
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimate:
        """Inverse of :meth:`to_dict` (``None`` reads back as NaN; files without ``method``,
        written before it was recorded, read back with ``method=None``)."""
        return cls(
            value=_from_json_float(d["value"]),
            low=_from_json_float(d["low"]),
            high=_from_json_float(d["high"]),
            n=int(d["n"]),
            method=d.get("method"),
        )


@dataclass
class PairedTest:
    """Paired comparison of two runs: ``diff = mean(b - a)`` with its CI and two-sided p-value;
    ``method`` names the test and interval (``"mcnemar-exact/newcombe"``, ``"permutation/bca"``,
    ...; None when not recorded)."""

    diff: float
    low: float
    high: float
    p_value: float
    n: int
    method: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"diff", "low", "high", "p_value", "n", "method"}``; NaN is written as ``None``."""
        return {
            "diff": _json_float(self.diff),
            "low": _json_float(self.low),
            "high": _json_float(self.high),
            "p_value": _json_float(self.p_value),
            "n": int(self.n),
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairedTest:
        """Inverse of :meth:`to_dict` (old files without ``method`` read back with None)."""
        return cls(
            diff=_from_json_float(d["diff"]),
            low=_from_json_float(d["low"]),
            high=_from_json_float(d["high"]),
            p_value=_from_json_float(d["p_value"]),
            n=int(d["n"]),
            method=d.get("method"),
        )


def _as_vector(values: Sequence[float], name: str) -> np.ndarray:
    """``values`` as a 1-D float array; raise ``ValueError`` on NaN, infinities or other shapes."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a sequence of numbers ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(
            f"{name}: value at index {bad} is {values[bad]!r}; drop missing values before "
            "computing statistics"
        )
    return arr


def _check_settings(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples}")


def is_binary(values: np.ndarray) -> bool:
    """Whether every value is 0 or 1 (an empty array is not binary)."""
    return values.size > 0 and bool(np.all((values == 0.0) | (values == 1.0)))


def proportion_ci(
    successes: int, n: int, confidence: float = 0.95, method: str | None = None
) -> Estimate:
    """Score interval of a proportion: ``successes`` out of ``n`` trials.

    ``method`` is ``"clopper-pearson"`` (exact; Clopper & Pearson 1934) or ``"wilson"`` (Wilson
    1927); by default Clopper-Pearson below :data:`SMALL_N` trials and Wilson from then on (see
    the module docstring). Neither collapses at 0 or ``n`` successes: 0/40 gives [0, 0.088],
    2/2 gives [0.158, 1]. ``n == 0`` gives NaNs with ``method="none"``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(successes) != successes or int(n) != n or not 0 <= successes <= n:
        raise ValueError(f"need whole numbers 0 <= successes <= n, got {successes} of {n}")
    successes, n = int(successes), int(n)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "none")
    method = method or ("clopper-pearson" if n < SMALL_N else "wilson")
    if method not in _SCIPY_PROPORTION:
        raise ValueError(f"method must be one of {sorted(_SCIPY_PROPORTION)}, got {method!r}")
    ci = sps.binomtest(successes, n).proportion_ci(confidence, _SCIPY_PROPORTION[method])
    return Estimate(successes / n, float(ci.low), float(ci.high), n, method)


def _bootstrap_interval(
    data: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float, str]:
    """BCa bootstrap interval of the mean of ``data`` (percentile where BCa is undefined).

    Constant data (no spread to resample) give the point itself, ``method="constant"``; fewer
    than two values give NaNs (``"none"``). Batches keep scipy's resample and jackknife
    matrices under :data:`_MAX_BOOTSTRAP_ELEMENTS` entries.
    """
    n = len(data)
    if n < 2:
        return math.nan, math.nan, "none"
    if np.ptp(data) == 0.0:
        return float(data[0]), float(data[0]), "constant"
    batch = max(1, _MAX_BOOTSTRAP_ELEMENTS // n)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns, then returns NaN, where BCa fails
            result = sps.bootstrap(
                (data,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                method=method, batch=batch, rng=np.random.default_rng(seed),
            )  # fmt: skip
        low, high = result.confidence_interval
        if math.isfinite(low) and math.isfinite(high):
            return float(low), float(high), method.lower()
    return math.nan, math.nan, "none"


def estimate(
    values: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    proportion: bool | None = None,
) -> Estimate:
    """The mean of ``values`` with its confidence interval, the method chosen from the data.

    A proportion (``proportion=True``, or by default when every value is 0 or 1):
    :func:`proportion_ci` of the count (a score interval, never [1, 1]). Otherwise (pass
    ``proportion=False`` for a continuous figure such as a KL or a margin, whose values may all
    happen to be 0): a BCa bootstrap interval of the mean from ``n_resamples`` resamples
    (seeded), falling back to the percentile interval where BCa is undefined; constant values
    give the point itself, one value gives NaN bounds. No values gives
    ``Estimate(nan, nan, nan, 0)``. NaN in ``values`` raises ``ValueError``, and so does
    ``proportion=True`` with a value other than 0 or 1.
    """
    _check_settings(confidence, n_resamples)
    arr = _as_vector(values, "values")
    n = len(arr)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "none")
    binary = is_binary(arr)
    if proportion and not binary:
        raise ValueError("values: a proportion needs every value to be 0 or 1")
    if binary and proportion is not False:
        return proportion_ci(int(arr.sum()), n, confidence)
    low, high, method = _bootstrap_interval(arr, confidence, int(n_resamples), seed)
    return Estimate(float(arr.mean()), low, high, n, method)


def bootstrap_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Former name of :func:`estimate`, kept for existing callers.

    It used to give every figure a percentile-bootstrap interval, which collapses to [0, 0] or
    [1, 1] at rates of 0 and 1; it now returns exactly what :func:`estimate` does (a score
    interval for proportions, BCa for continuous values).
    """
    return estimate(values, confidence, n_resamples, seed)


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the exact McNemar test (McNemar 1947) of paired binary outcomes.

    Under the null of equal marginal rates, the discordant pairs split evenly: the p-value is
    the two-sided binomial test of the ``(a=0, b=1)`` count among all discordant pairs at 1/2.
    No discordant pair gives 1.
    """
    xa, xb = _as_vector(a, "a"), _as_vector(b, "b")
    gains = int(np.count_nonzero((xa == 0.0) & (xb == 1.0)))
    losses = int(np.count_nonzero((xa == 1.0) & (xb == 0.0)))
    if gains + losses == 0:
        return 1.0
    return float(sps.binomtest(gains, gains + losses, 0.5).pvalue)


def newcombe_paired_ci(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval for ``mean(b) - mean(a)`` of paired binary outcomes.

    Newcombe (1998), *Statistics in Medicine* 17:2635-2650, method 10 (the "square-and-add"
    interval of Fagerland, Lydersen & Laake 2014, *Statistics in Medicine* 33): with Wilson
    intervals ``[l1, u1]`` of ``p1 = mean(b)`` and ``[l2, u2]`` of ``p2 = mean(a)``,
    ``low = d - sqrt((p1-l1)^2 - 2 phi (p1-l1)(u2-p2) + (u2-p2)^2)`` and
    ``high = d + sqrt((u1-p1)^2 - 2 phi (u1-p1)(p2-l2) + (p2-l2)^2)``, where ``phi`` is the
    correlation of the 2x2 table with ``A = n11 n00 - n10 n01`` shrunk as Newcombe does
    (``A - n/2`` when ``A > n/2``, 0 when ``0 <= A <= n/2``; ``phi = 0`` when a margin is
    empty). Like the Wilson intervals it is built from, it never has zero width, even when both
    runs are all 0 or all 1.
    """
    xa, xb = _as_vector(a, "a"), _as_vector(b, "b")
    n = len(xa)
    k1, k2 = int(xb.sum()), int(xa.sum())
    p1, p2 = k1 / n, k2 / n
    w1 = proportion_ci(k1, n, confidence, "wilson")
    w2 = proportion_ci(k2, n, confidence, "wilson")
    both = int(np.count_nonzero((xa == 1.0) & (xb == 1.0)))
    only_b, only_a = k1 - both, k2 - both
    neither = n - both - only_a - only_b
    margins = float(k1) * (n - k1) * k2 * (n - k2)
    cross = both * neither - only_b * only_a
    shrunk = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
    phi = shrunk / math.sqrt(margins) if margins > 0 else 0.0
    d1, e1 = p1 - w1.low, w1.high - p1
    d2, e2 = p2 - w2.low, w2.high - p2
    delta = math.sqrt(max(d1 * d1 - 2.0 * phi * d1 * e2 + e2 * e2, 0.0))
    epsilon = math.sqrt(max(e1 * e1 - 2.0 * phi * e1 * d2 + d2 * d2, 0.0))
    diff = p1 - p2
    return max(-1.0, diff - delta), min(1.0, diff + epsilon)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(y - x, axis=axis)


def permutation_p_value(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 2000, seed: int = 0
) -> float:
    """Two-sided sign-flip permutation test of ``mean(b - a) = 0`` for paired values.

    Under the null each pair's two values are exchangeable, so the sign of each difference is
    flipped at random (``scipy.stats.permutation_test``, ``permutation_type="samples"``). The
    test is exact, over all ``2^n`` sign patterns, when they number at most ``n_resamples``;
    otherwise ``n_resamples`` random patterns (seeded) give a p-value that counts the observed
    one, so it is never 0. One pair gives 1 (its two sign patterns are equally extreme).
    """
    xa, xb = _as_vector(a, "a"), _as_vector(b, "b")
    if len(xa) < 2:
        return 1.0
    result = sps.permutation_test(
        (xa, xb), _mean_difference, permutation_type="samples", vectorized=True,
        n_resamples=int(n_resamples), alternative="two-sided", rng=np.random.default_rng(seed),
    )  # fmt: skip
    return min(1.0, float(result.pvalue))


def paired_test(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedTest:
    """Paired comparison of ``mean(b - a)`` for two runs scored on the same items.

    Both runs binary: the exact McNemar test (:func:`mcnemar_exact`) and Newcombe's hybrid score
    interval (:func:`newcombe_paired_ci`), ``method="mcnemar-exact/newcombe"``. Otherwise: the
    sign-flip permutation test (:func:`permutation_p_value`) and a BCa bootstrap interval of the
    per-item differences, ``method="permutation/bca"`` (``/percentile``, ``/constant`` or
    ``/none`` where BCa is undefined, see :func:`estimate`). Pairing removes the item-difficulty
    variance a two-sample test would carry. ``n == 0`` gives NaNs.
    """
    _check_settings(confidence, n_resamples)
    xa, xb = _as_vector(a, "a"), _as_vector(b, "b")
    if len(xa) != len(xb):
        raise ValueError(f"paired samples differ in length: {len(xa)} vs {len(xb)}")
    n = len(xa)
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, 0, "none")
    d = xb - xa
    diff = float(d.mean())
    if is_binary(xa) and is_binary(xb):
        low, high = newcombe_paired_ci(xa, xb, confidence)
        return PairedTest(diff, low, high, mcnemar_exact(xa, xb), n, "mcnemar-exact/newcombe")
    p_value = permutation_p_value(xa, xb, n_resamples, seed)
    low, high, method = _bootstrap_interval(d, confidence, int(n_resamples), seed)
    return PairedTest(diff, low, high, p_value, n, f"permutation/{method}")


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedTest:
    """Former name of :func:`paired_test`, kept for existing callers.

    It used to take its p-value from a paired percentile bootstrap (inverting an interval, not a
    test under the null); it now returns exactly what :func:`paired_test` does.
    """
    return paired_test(a, b, confidence, n_resamples, seed)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # numerically stable logistic


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, max_iter: int = 100) -> np.ndarray:
    """Weights of L2-regularised logistic regression with soft labels ``y`` (damped Newton)."""

    def objective(w: np.ndarray) -> float:
        z = x @ w
        # Binary cross-entropy with logits: log(1 + e^z) - y z, computed stably.
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w @ w)

    w = np.zeros(x.shape[1])
    loss = objective(w)
    for _ in range(max_iter):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:  # backtracking keeps each Newton step a descent step
            candidate = w - t * step
            new_loss = objective(candidate)
            if new_loss <= loss:
                break
            t *= 0.5
        else:
            break
        w, improvement, loss = candidate, loss - new_loss, new_loss
        if improvement <= 1e-12 * max(1.0, loss) or np.max(np.abs(t * step)) < 1e-10:
            break
    return w


def length_controlled_win_rate(
    outcomes: Sequence[float],
    length_diff: Sequence[float],
) -> float:
    """Win rate against the baseline with the effect of response length regressed out.

    ``outcomes`` are 0 / 0.5 / 1 (model loses / ties / wins; any value in [0, 1] is used as a soft
    label) and ``length_diff`` is ``len(model) - len(baseline)`` per comparison, in characters or
    tokens. As in AlpacaEval 2 (Dubois et al. 2024) a logistic model
    ``P(win) = sigmoid(t0 + t1 * tanh(d / sd(d)))`` is fitted (Newton / IRLS with a small L2
    penalty, :data:`_LC_L2`) and the win rate it predicts at zero length difference,
    ``sigmoid(t0)``, is returned.
    A model that wins only by being longer gets about 0.5. If the length differences do not vary,
    length cannot be separated from quality and the raw win rate is returned. No outcomes gives NaN.
    """
    y = _as_vector(outcomes, "outcomes")
    d = _as_vector(length_diff, "length_diff")
    if len(y) != len(d):
        raise ValueError(f"outcomes and length_diff differ in length: {len(y)} vs {len(d)}")
    if np.any((y < 0.0) | (y > 1.0)):
        raise ValueError("outcomes must lie in [0, 1] (0 = loss, 0.5 = tie, 1 = win)")
    if len(y) == 0:
        return math.nan
    sd = float(d.std())
    if sd == 0.0:
        return float(y.mean())
    x = np.column_stack([np.ones_like(d), np.tanh(d / sd)])
    w = _fit_logistic(x, y, _LC_L2)
    return float(_sigmoid(np.asarray(w[0])))
