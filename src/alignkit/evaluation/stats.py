"""Confidence intervals, paired significance tests and the length-controlled win rate.

Every figure alignkit reports carries a percentile-bootstrap confidence interval of its mean
(Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13). Two runs on the same items
are compared with a paired bootstrap of the per-item differences (ibid., ch. 15-16). Pairwise win
rates are also reported length-controlled, as AlpacaEval 2 does (Dubois et al., 2024,
"Length-Controlled AlpacaEval: A Simple Way to Debias Automatic Evaluators", arXiv:2404.04475).

Only numpy is used, so this module imports fast. Results are deterministic given ``seed``.
Inputs with NaN raise :class:`ValueError`: callers drop missing values (``None``) first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Largest resample-index matrix (rows x items) built at once; larger bootstraps go in chunks.
_MAX_BOOTSTRAP_ELEMENTS = 1 << 21
# L2 penalty of the length-controlled win-rate regression: keeps the fit finite when the model
# wins (or loses) every comparison, and is negligible otherwise.
_LC_L2 = 1e-2


def _json_float(x: float) -> float | None:
    """``x`` as a JSON-safe value: NaN (no data) becomes ``None``."""
    return None if math.isnan(x) else float(x)


def _from_json_float(x: Any) -> float:
    return math.nan if x is None else float(x)


@dataclass
class Estimate:
    """A figure with a bootstrap confidence interval: ``value`` (the mean) in ``[low, high]``."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "low", "high", "n"}``; NaN (no data) is written as ``None`` (JSON null)."""
        return {
            "value": _json_float(self.value),
            "low": _json_float(self.low),
            "high": _json_float(self.high),
            "n": int(self.n),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimate:
        """Inverse of :meth:`to_dict` (``None`` reads back as NaN)."""
        return cls(
            value=_from_json_float(d["value"]),
            low=_from_json_float(d["low"]),
            high=_from_json_float(d["high"]),
            n=int(d["n"]),
        )


@dataclass
class PairedTest:
    """Paired comparison of two runs: ``diff = mean(b - a)`` with its CI and two-sided p-value."""

    diff: float
    low: float
    high: float
    p_value: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """``{"diff", "low", "high", "p_value", "n"}``; NaN is written as ``None``."""
        return {
            "diff": _json_float(self.diff),
            "low": _json_float(self.low),
            "high": _json_float(self.high),
            "p_value": _json_float(self.p_value),
            "n": int(self.n),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairedTest:
        """Inverse of :meth:`to_dict`."""
        return cls(
            diff=_from_json_float(d["diff"]),
            low=_from_json_float(d["low"]),
            high=_from_json_float(d["high"]),
            p_value=_from_json_float(d["p_value"]),
            n=int(d["n"]),
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


def _bootstrap_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of ``n_resamples`` bootstrap resamples (with replacement) of the 1-D array ``values``.

    Vectorised: each chunk draws a (rows x n) index matrix; chunks keep that matrix under
    :data:`_MAX_BOOTSTRAP_ELEMENTS` entries so memory stays bounded for large ``n``.
    """
    n = len(values)
    rng = np.random.default_rng(seed)
    rows = max(1, _MAX_BOOTSTRAP_ELEMENTS // max(n, 1))
    means = np.empty(n_resamples, dtype=float)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def _percentile_interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Percentile-bootstrap confidence interval of the mean of ``values``.

    The interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    means of ``n_resamples`` resamples drawn with replacement (Efron & Tibshirani 1993, ch. 13).
    No values gives ``Estimate(nan, nan, nan, 0)``; one value gives ``low == high == value``.
    NaN in ``values`` raises ``ValueError``.
    """
    _check_settings(confidence, n_resamples)
    arr = _as_vector(values, "values")
    n = len(arr)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    value = float(arr.mean())
    if n == 1:
        return Estimate(value, value, value, 1)
    low, high = _percentile_interval(_bootstrap_means(arr, int(n_resamples), seed), confidence)
    return Estimate(value, low, high, n)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedTest:
    """Paired bootstrap test of ``mean(b - a)`` for two runs scored on the same items.

    Items are resampled jointly (the per-item differences are bootstrapped), which removes the
    item-difficulty variance a two-sample test would carry. The two-sided p-value is twice the
    add-one-smoothed fraction of resampled mean differences on the other side of zero from the
    observed one (Efron & Tibshirani 1993, ch. 15-16), clipped to 1. ``n == 0`` gives NaNs; with
    ``n == 1`` (no variance information) or a zero observed difference, ``p_value`` is 1.
    """
    _check_settings(confidence, n_resamples)
    xa, xb = _as_vector(a, "a"), _as_vector(b, "b")
    if len(xa) != len(xb):
        raise ValueError(f"paired samples differ in length: {len(xa)} vs {len(xb)}")
    n = len(xa)
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, 0)
    d = xb - xa
    diff = float(d.mean())
    if n == 1:
        return PairedTest(diff, diff, diff, 1.0, 1)
    means = _bootstrap_means(d, int(n_resamples), seed)
    low, high = _percentile_interval(means, confidence)
    if diff > 0:
        other_side = int(np.count_nonzero(means <= 0.0))
    elif diff < 0:
        other_side = int(np.count_nonzero(means >= 0.0))
    else:
        return PairedTest(diff, low, high, 1.0, n)
    p_value = min(1.0, 2.0 * (other_side + 1) / (len(means) + 1))
    return PairedTest(diff, low, high, p_value, n)


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
