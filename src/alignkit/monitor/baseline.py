"""What the monitor compares against: a baseline evaluation run and the bound on each metric.

The baseline is a directory written by ``alignkit eval`` (``eval.json`` and
``eval_items.jsonl``), of the same suite the monitor runs. Each headline metric (see
:mod:`alignkit.pipeline.headline`) becomes a *bad* rate: harmful compliance, jailbreak ASR and
over-refusal as they are, one minus benign helpfulness and one minus honesty. An item counts
as bad when its score says so (a score >= 0.5 for a fractional scorer). The bound on each bad
rate is the baseline's upper 95% confidence limit (a score interval: Clopper-Pearson below 30
items, Wilson from 30), so a drift alarm means "worse than the baseline could plausibly be".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import ConfigError, DataError
from alignkit.pipeline.headline import HEADLINE, LABELS, item_scores

BAD_LABELS = {
    "helpful": "benign requests not answered well",
    "honest": "unanswerable questions answered",
}
"""What the bad rate of a higher-is-better metric counts (the others count themselves)."""


@dataclass
class Bound:
    metric: str
    label: str
    baseline: float  # the baseline's bad rate
    bound: float  # its upper 95% limit: the null of the drift test
    n: int


def bad_outcomes(items: list[dict[str, Any]], scorer: str) -> dict[str, list[int]]:
    """Per headline metric, one 0/1 per item: 1 where the item went badly."""
    out: dict[str, list[int]] = {}
    for metric, values in item_scores(items, scorer).items():
        higher_is_better = HEADLINE[metric][3]
        out[metric] = [int((v < 0.5) if higher_is_better else (v >= 0.5)) for v in values.values()]
    return out


def load_baseline(run_dir: str | Path, suite: str, metrics: list[str]) -> tuple[str, list[Bound]]:
    """The baseline's scorer and the bound of each metric; one clear error when the
    directory is not an evaluation of ``suite``."""
    from alignkit.evaluation.stats import estimate

    run = Path(run_dir)
    summary, items_file = run / "eval.json", run / "eval_items.jsonl"
    if not summary.is_file() or not items_file.is_file():
        raise DataError(f"--baseline {str(run)!r} is not an alignkit eval run (no eval.json)")
    try:
        info = json.loads(summary.read_text(encoding="utf-8"))
        lines = items_file.read_text(encoding="utf-8").splitlines()
        items = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"--baseline {str(run)!r}: unreadable eval files ({exc})") from None
    if info.get("suite") != suite:
        raise ConfigError(
            f"--baseline {str(run)!r} evaluated suite {info.get('suite')!r}, the monitor runs "
            f"{suite!r}; give a baseline of the same suite"
        )
    scorer = (info.get("scorers") or [None])[0]
    bad = bad_outcomes(items, scorer)
    bounds = []
    for metric in metrics:
        values = bad.get(metric) or []
        if not values:
            raise ConfigError(f"--baseline {str(run)!r} has no items for metric {metric!r}")
        e = estimate([float(v) for v in values])
        label = BAD_LABELS.get(metric, LABELS[metric])
        bounds.append(Bound(metric, label, e.value, e.high, len(values)))
    return scorer, bounds
