"""An always-valid test that a rate has risen above a bound, checked after every round.

The monitor asks, after each round, whether a "bad" rate (harmful compliance, jailbreak ASR,
over-refusal; one minus helpfulness or honesty) is now above ``p0``: the baseline's upper
confidence bound. Looking after every round would inflate false alarms for a fixed-sample
test, so the evidence is a *test martingale* (an e-process): the mixture likelihood ratio of
Robbins' mixture SPRT, here with a uniform prior on the alternative ``p > p0``,

    Lambda(k, n) = [ integral_{p0}^{1} p^k (1-p)^(n-k) dp / (1 - p0) ] / [ p0^k (1-p0)^(n-k) ],

for ``k`` bad outcomes in ``n`` Bernoulli trials. Under any rate ``p <= p0`` it is a
nonnegative supermartingale with mean at most 1, so by Ville's inequality the chance that it
*ever* reaches ``1/alpha`` is at most ``alpha`` (Howard, Ramdas, McAuliffe & Sekhon 2021,
"Time-uniform, nonparametric, nonasymptotic confidence sequences"; Ramdas et al. 2023, "Game-
theoretic statistics and safe anytime-valid inference").

A deployed model may drift at any time, so evidence restarts at every round: for each start
round ``s``, ``Lambda_s`` pools the rounds from ``s`` to now (a change-point scan, as in the
e-detectors of Shin, Ramdas & Rinaldo 2023). With a union bound over the ``horizon`` possible
start rounds, an alarm when some ``Lambda_s >= horizon * metrics / alpha`` keeps the chance of
any false alarm, over ``horizon`` rounds and all ``metrics`` tested, at most ``alpha`` (for
true rates at or below their bounds; the bound itself is the baseline's upper 97.5% limit, so
the baseline being unlucky adds at most 0.025 per metric).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def log_mixture_lr(k: int, n: int, p0: float) -> float:
    """``log Lambda(k, n)`` for ``k`` bad outcomes in ``n`` against the bound ``p0``."""
    from scipy import special, stats

    if n == 0:
        return 0.0
    if not 0.0 <= p0 < 1.0:
        raise ValueError(f"p0 must be in [0, 1), got {p0}")
    a, b = k + 1, n - k + 1
    log_tail = stats.beta.logsf(p0, a, b) if p0 > 0 else 0.0  # P(Beta(a, b) > p0)
    log_alt = special.betaln(a, b) + log_tail - math.log1p(-p0)
    if p0 == 0.0:
        return math.inf if k > 0 else log_alt
    log_null = k * math.log(p0) + (n - k) * math.log1p(-p0)
    return float(log_alt - log_null)


@dataclass
class Scan:
    """The strongest evidence of a rise above ``p0`` over every start round: ``log_lr`` of the
    best start ``start`` (an index into the rounds), with the pooled ``k`` of ``n`` there."""

    log_lr: float
    start: int
    k: int
    n: int

    def alarm(self, threshold: float) -> bool:
        return self.log_lr >= math.log(threshold)


def scan(rounds: Sequence[tuple[int, int]], p0: float) -> Scan:
    """Scan ``rounds`` of ``(bad, trials)`` for the start round with the largest evidence that
    the rate since then is above ``p0``."""
    best = Scan(-math.inf, 0, 0, 0)
    k = n = 0
    for start in range(len(rounds) - 1, -1, -1):  # pool from the latest round backwards
        k, n = k + rounds[start][0], n + rounds[start][1]
        value = log_mixture_lr(k, n, p0)
        if value > best.log_lr:
            best = Scan(value, start, k, n)
    return best


def threshold(alpha: float, horizon: int, metrics: int) -> float:
    """The alarm level on ``Lambda``: ``horizon * metrics / alpha`` (see the module docstring)."""
    if not 0.0 < alpha < 1.0 or horizon < 1 or metrics < 1:
        raise ValueError("alpha in (0, 1), horizon >= 1 and metrics >= 1 needed")
    return horizon * metrics / alpha
