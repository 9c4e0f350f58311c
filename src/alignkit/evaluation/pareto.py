"""Pareto dominance, Pareto fronts and the hypervolume indicator for multi-objective comparisons.

All objectives are higher-is-better; callers negate lower-is-better ones first. A point is a
sequence of objective values, or a mapping ``objective -> value`` (then every point must have
the same objectives, taken in the order of the first point).

The hypervolume (Zitzler & Thiele 1998, "Multiobjective Optimization Using Evolutionary
Algorithms - A Comparative Case Study", PPSN V; the "size of the dominated space") is the
volume of the region dominated by the points and bounded by a reference point. It is computed
exactly by slicing along one objective at a time (the HSO scheme of While et al. 2006, "A Faster
Algorithm for Calculating Hypervolume", IEEE TEC), with a sweep for two objectives; this is
exact in any dimension and fast for the few dozen models or checkpoints compared here.
Only numpy is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _as_point(values: Sequence[float], name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a sequence of numbers ({exc})") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of numbers")
    if np.any(np.isnan(arr)):
        raise ValueError(f"{name}: contains NaN; drop or fill missing objective values first")
    return arr


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True if ``a`` is at least as good as ``b`` in every objective and better in one."""
    xa, xb = _as_point(a, "a"), _as_point(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"points have different numbers of objectives: {xa.size} vs {xb.size}")
    return bool(np.all(xa >= xb) and np.any(xa > xb))


def _as_matrix(
    points: Mapping[str, Sequence[float] | Mapping[str, float]],
) -> tuple[list[str], np.ndarray]:
    """Names and a (points x objectives) matrix; every point must have the same objectives."""
    names = list(points)
    if not names:
        return [], np.zeros((0, 0))
    rows = []
    objectives: list[str] | None = None
    for name in names:
        value = points[name]
        if isinstance(value, Mapping):
            if objectives is None:
                objectives = list(value)
            if set(value) != set(objectives):
                raise ValueError(
                    f"point {name!r} has objectives {sorted(value)}, expected {sorted(objectives)}"
                )
            value = [value[key] for key in objectives]
        rows.append(_as_point(value, f"point {name!r}"))
    if len({row.size for row in rows}) != 1:
        sizes = {name: row.size for name, row in zip(names, rows, strict=True)}
        raise ValueError(f"points have different numbers of objectives: {sizes}")
    return names, np.stack(rows)


def _dominance_matrix(x: np.ndarray) -> np.ndarray:
    """``m[i, j]`` is True when point ``i`` dominates point ``j``."""
    geq = np.all(x[:, None, :] >= x[None, :, :], axis=-1)
    gt = np.any(x[:, None, :] > x[None, :, :], axis=-1)
    return geq & gt


def pareto_front(points: Mapping[str, Sequence[float] | Mapping[str, float]]) -> list[str]:
    """Names of the points no other point dominates, in input order (equal points both stay)."""
    names, x = _as_matrix(points)
    if not names:
        return []
    dominated = _dominance_matrix(x).any(axis=0)
    return [name for name, d in zip(names, dominated, strict=True) if not d]


def dominance(
    points: Mapping[str, Sequence[float] | Mapping[str, float]],
) -> dict[str, list[str]]:
    """For every name, the names of the points it dominates (in input order)."""
    names, x = _as_matrix(points)
    if not names:
        return {}
    m = _dominance_matrix(x)
    return {name: [names[j] for j in np.flatnonzero(m[i])] for i, name in enumerate(names)}


def _nondominated(q: np.ndarray) -> np.ndarray:
    """Rows of ``q`` not dominated by another row, with duplicates kept once."""
    q = np.unique(q, axis=0)
    return q[~_dominance_matrix(q).any(axis=0)]


def _hv2(q: np.ndarray) -> float:
    """Area dominated by 2-D points ``q`` (all positive) above the origin: one sweep."""
    order = np.argsort(-q[:, 0], kind="stable")
    area, top = 0.0, 0.0
    for x, y in q[order]:
        if y > top:
            area += x * (y - top)
            top = y
    return area


def _hv(q: np.ndarray) -> float:
    """Volume dominated by the positive points ``q`` (rows) and bounded below by the origin."""
    if len(q) == 0:
        return 0.0
    dim = q.shape[1]
    if dim == 1:
        return float(q[:, 0].max())
    if dim == 2:
        return _hv2(q)
    q = _nondominated(q)
    last = q[:, -1]
    levels = np.append(np.unique(last)[::-1], 0.0)  # descending, down to the reference
    volume = 0.0
    for upper, lower in zip(levels[:-1], levels[1:], strict=True):
        # The slab lower < z <= upper is covered by every point reaching at least `upper`.
        volume += (upper - lower) * _hv(q[last >= upper, :-1])
    return volume


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume of the region dominated by ``points`` and dominating ``reference``.

    The Lebesgue measure of the union of the boxes ``[reference, p]`` (Zitzler & Thiele 1998),
    any number of objectives. Points not strictly better than ``reference`` in every objective
    contribute nothing; no points gives 0.
    """
    ref = _as_point(reference, "reference")
    rows = [_as_point(p, f"point {i}") for i, p in enumerate(points)]
    for i, row in enumerate(rows):
        if row.shape != ref.shape:
            raise ValueError(
                f"point {i} has {row.size} objectives but the reference has {ref.size}"
            )
    if not rows:
        return 0.0
    x = np.stack(rows)
    if np.any(np.isinf(x)) or np.any(np.isinf(ref)):
        raise ValueError("hypervolume needs finite points and reference")
    q = x[np.all(x > ref, axis=1)] - ref
    return float(_hv(q))
