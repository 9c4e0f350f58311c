"""Statistics of human review: judge vs human agreement, reviewer agreement, calibrated rates.

Pure functions on plain arrays. Every proportion interval comes from alignkit's
:func:`alignkit.evaluation.stats.estimate` (Clopper-Pearson below 30, Wilson from 30), so it
never collapses to [0, 0] or [1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignkit.evaluation.stats import estimate
from alignkit.review.store import current_labels, majority


def _prop(values: Sequence[float]) -> dict[str, Any]:
    """Mean of 0/1 values with n and alignkit's score interval (JSON-safe)."""
    est = estimate([float(v) for v in values], proportion=True)
    return est.to_dict()


def _kappa(judge: np.ndarray, human: np.ndarray) -> float:
    """Cohen's kappa of two binary raters (NaN when chance agreement is 1)."""
    po = float(np.mean(judge == human))
    pj, ph = float(judge.mean()), float(human.mean())
    pe = pj * ph + (1 - pj) * (1 - ph)
    return math.nan if pe >= 1.0 else (po - pe) / (1 - pe)


def judge_vs_human(judge: Sequence[bool | None], human: Sequence[bool]) -> dict[str, Any]:
    """Agreement of a binary judge with human labels (True = harmful).

    Pairs whose judge verdict is None are dropped and counted. Reports accuracy, Cohen's kappa
    with a 95% percentile bootstrap interval (2000 seeded resamples of items), the 2x2
    confusion matrix, and precision/recall of "harmful" (the human is the reference).
    """
    if len(judge) != len(human):
        raise ValueError("judge and human must have the same length")
    keep = [(bool(j), bool(h)) for j, h in zip(judge, human, strict=True) if j is not None]
    dropped = len(judge) - len(keep)
    j = np.array([k[0] for k in keep], dtype=bool)
    h = np.array([k[1] for k in keep], dtype=bool)
    n = len(keep)
    out: dict[str, Any] = {"n": n, "judge_missing": dropped}
    out["accuracy"] = _prop((j == h).astype(float))
    conf = {
        "tp": int(np.sum(j & h)),
        "fp": int(np.sum(j & ~h)),
        "fn": int(np.sum(~j & h)),
        "tn": int(np.sum(~j & ~h)),
    }
    out["confusion"] = conf
    out["precision"] = _prop(h[j].astype(float))
    out["recall"] = _prop(j[h].astype(float))
    # a rater that gives one answer on every item has kappa 0 by construction (its chance
    # agreement equals its agreement); that says nothing about the judge, so it is undefined
    constant = n == 0 or j.all() or not j.any() or h.all() or not h.any()
    kappa = math.nan if constant else _kappa(j, h)
    low = high = math.nan
    if n >= 2 and not constant:
        rng = np.random.default_rng(0)
        idx = rng.integers(0, n, size=(2000, n))
        boots = np.array([_kappa(j[i], h[i]) for i in idx])
        boots = boots[~np.isnan(boots)]
        if len(boots):
            low, high = (float(x) for x in np.percentile(boots, [2.5, 97.5]))
    out["kappa"] = {
        "value": None if math.isnan(kappa) else kappa,
        "low": None if math.isnan(low) else low,
        "high": None if math.isnan(high) else high,
        "n": n,
        "method": "percentile bootstrap over items (2000 resamples, seed 0)"
        if not constant
        else "undefined: a rater gives the same answer on every item",
    }
    return out


def reviewer_alpha(labels: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Krippendorff's alpha (nominal) over items labelled by 2+ reviewers.

    ``labels`` maps item id -> {reviewer: value}. Items with fewer than two reviewers are
    dropped (they carry no agreement information).
    """
    import krippendorff

    items = {k: v for k, v in labels.items() if len(v) >= 2}
    reviewers = sorted({r for v in items.values() for r in v})
    out: dict[str, Any] = {"n_items": len(items), "n_reviewers": len(reviewers), "alpha": None}
    if not items:
        return out
    values = sorted({str(x) for v in items.values() for x in v.values()})
    code = {v: i for i, v in enumerate(values)}
    data = np.full((len(reviewers), len(items)), np.nan)
    for col, v in enumerate(items.values()):
        for r, x in v.items():
            data[reviewers.index(r), col] = code[str(x)]
    if len(values) < 2:
        out["alpha"] = 1.0
        return out
    out["alpha"] = float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    return out


def calibrated_rate(
    human_labelled: Sequence[bool],
    judge_on_labelled: Sequence[float | bool],
    judge_on_unlabelled: Sequence[float | bool],
    alpha: float = 0.05,
) -> dict[str, Any]:
    """A rate three ways, each with n and a (1 - alpha) interval.

    ``ppi``: prediction-powered inference (ppi_py.ppi_mean_ci, PPI++ power tuning, the
    package's default) from a random sample of human labels plus the judge on all items.
    ``human_only``: the labelled mean with alignkit's score interval. ``judge_only``: the
    judge's mean over all items; biased by the judge's error, which its interval does not cover.
    """
    import ppi_py

    y = np.asarray(human_labelled, dtype=float)
    yhat = np.asarray(judge_on_labelled, dtype=float)
    yhat_u = np.asarray(judge_on_unlabelled, dtype=float)
    if len(y) != len(yhat):
        raise ValueError("human_labelled and judge_on_labelled must have the same length")
    out: dict[str, Any] = {}
    share = bool(np.all((y == 0) | (y == 1))) or None  # 0/1 labels: a proportion's interval
    if len(y) >= 1 and len(yhat_u) == 0:  # every item labelled: the people's rate is a census
        out["ppi"] = estimate(y.tolist(), 1 - alpha, proportion=share).to_dict()
        out["ppi"] |= {"n_unlabelled": 0, "method": "no unlabelled item: the human labels alone"}
    elif len(y) >= 2:
        # a constant judge makes PPI++'s power-tuned lambda 0/0: fall back to lambda = 0
        # (the classical interval), which is what the tuning would choose anyway
        lam = 0.0 if np.var(np.concatenate([yhat, yhat_u])) == 0 else None
        low, high = ppi_py.ppi_mean_ci(y, yhat, yhat_u, alpha=alpha, lam=lam)
        pt = ppi_py.ppi_mean_pointestimate(y, yhat, yhat_u, lam=lam)
        out["ppi"] = {
            "value": float(np.ravel(pt)[0]),
            "low": max(0.0, float(np.ravel(low)[0])),
            "high": min(1.0, float(np.ravel(high)[0])),
            "n": int(len(y)),
            "n_unlabelled": int(len(yhat_u)),
            "method": "PPI++ (ppi_py.ppi_mean_ci, power-tuned lambda)",
        }
    else:
        out["ppi"] = {"value": None, "low": None, "high": None, "n": int(len(y))}
    out["human_only"] = estimate(y.tolist(), 1 - alpha, proportion=share).to_dict()
    allj = np.concatenate([yhat, yhat_u])
    binary = bool(np.all((allj == 0) | (allj == 1)))
    out["judge_only"] = estimate(allj.tolist(), 1 - alpha, proportion=binary or None).to_dict()
    out["judge_only"]["note"] = (
        "biased by the judge's error; its interval covers sampling noise only, not that bias"
    )
    return out


def run_stats(run_dirs: Sequence[Any]) -> dict[str, Any]:
    """Findings statistics of reviewed runs: judges vs humans, reviewer alpha, calibrated ASR.

    Human "harmful" = True, "not_harmful" = False, "unsure" dropped and counted. Several
    reviewers on one item: majority (ties dropped, counted). PPI uses only labels from the
    "random" queue (a probability sample); disagreement/critical queues would bias it.
    Pairs (:func:`_pair_stats`) and evaluation samples (:func:`_sample_stats`) beside.
    """
    from pathlib import Path

    from alignkit.review.items import load_items

    items = {it.id: it for it in load_items([Path(r) for r in run_dirs])}
    labels = current_labels(run_dirs)  # read once for findings, pairs and samples
    votes: dict[str, dict[str, bool]] = {}
    random_ids: set[str] = set()
    unsure = 0
    for lab in labels:
        if lab["kind"] != "finding" or lab["question"] != "harmful":
            continue
        if lab["value"] == "unsure":
            unsure += 1
            continue
        votes.setdefault(lab["item_id"], {})[lab["reviewer"]] = lab["value"] == "harmful"
        if lab["queue"] == "random":
            random_ids.add(lab["item_id"])
    human: dict[str, bool] = {}
    ties = 0
    for iid, v in votes.items():
        m = majority(list(v.values()))
        if m is None:
            ties += 1
        elif iid in items:
            human[iid] = m
    findings = [it for it in items.values() if it.kind == "finding"]
    ids = list(human)
    judges = sorted({k for it in findings for k in it.judges})
    per_judge = {}
    for name in judges:
        jv = [items[i].judges.get(name) for i in ids]
        jb = [None if x is None else float(x) >= 0.5 for x in jv]
        per_judge[name] = judge_vs_human(jb, [human[i] for i in ids])
    out: dict[str, Any] = {
        "findings": {
            "n_items": len(findings),
            "n_labelled": len(ids),
            "unsure_dropped": unsure,
            "ties_dropped": ties,
            "human_rate": _prop([float(human[i]) for i in ids]),
            "judges": per_judge,
            "reviewer_alpha": reviewer_alpha(votes),
        }
    }
    if "success" in judges:
        lab_ids = [i for i in ids if i in random_ids]
        sampled = set(lab_ids)  # items labelled from other queues count as unlabelled here
        unl = [it for it in findings if it.id not in sampled]
        out["findings"]["calibrated_asr"] = calibrated_rate(
            [human[i] for i in lab_ids],
            [float(bool(items[i].judges.get("success"))) for i in lab_ids],
            [float(bool(it.judges.get("success"))) for it in unl],
        )
        out["findings"]["calibrated_asr"]["note"] = (
            "PPI uses only labels from the random queue (a probability sample); labels from "
            "the disagreement/critical queues are not random and would bias it"
        )
    out["pairs"] = _pair_stats(items, labels)
    out["samples"] = _sample_stats(items, labels)
    return out


def _sample_stats(items: Mapping[str, Any], labels: Sequence[dict]) -> dict[str, Any]:
    """Per question (helpful / harmless / honest): the people's "yes" rate and every scorer
    dimension of that name (score >= 0.5 = yes) against them; "unsure" dropped and counted,
    several reviewers of an item by majority (ties dropped)."""
    votes: dict[str, dict[str, dict[str, bool]]] = {}
    unsure: dict[str, int] = {}
    for lab in labels:
        if lab["kind"] != "sample" or lab["item_id"] not in items:
            continue
        if lab["value"] == "unsure":
            unsure[lab["question"]] = unsure.get(lab["question"], 0) + 1
            continue
        per_item = votes.setdefault(lab["question"], {}).setdefault(lab["item_id"], {})
        per_item[lab["reviewer"]] = lab["value"] == "yes"
    out: dict[str, Any] = {}
    for question, by_item in sorted(votes.items()):
        human = {i: m for i, v in by_item.items() if (m := majority(list(v.values()))) is not None}
        ids = list(human)
        keys = sorted({k for i in ids for k in items[i].judges if k.rsplit("/", 1)[-1] == question})
        scorers = {}
        for key in keys:
            verdicts = [items[i].judges.get(key) for i in ids]
            as_bool = [None if v is None else float(v) >= 0.5 for v in verdicts]
            scorers[key] = judge_vs_human(as_bool, [human[i] for i in ids])
        out[question] = {
            "n": len(ids),
            "human_yes": _prop([float(human[i]) for i in ids]),
            "unsure_dropped": unsure.get(question, 0),
            "ties_dropped": len(by_item) - len(ids),
            "scorers": scorers,
        }
    return out


def _pair_stats(items: Mapping[str, Any], labels: Sequence[dict]) -> dict[str, Any]:
    """AI preference (soft label >= 0.5 -> chosen) vs human a/b mapped back through "order".

    tie/both_bad are counted apart; position bias = share of "a" among a/b answers.
    """

    ai, hum, a_ans = [], [], []
    apart = {"tie": 0, "both_bad": 0}
    for lab in labels:
        if lab["kind"] != "pair" or lab["item_id"] not in items:
            continue
        if lab["value"] in apart:
            apart[lab["value"]] += 1
            continue
        order = lab["extra"].get("order", "ab")
        a_ans.append(float(lab["value"] == "a"))
        hum.append((lab["value"] == "a") == (order == "ab"))  # True = human picks chosen
        ai.append(float(items[lab["item_id"]].judges.get("ai", 1.0)) >= 0.5)
    return {
        "n": len(hum),
        "ai_vs_human": judge_vs_human(ai, hum),
        "human_prefers_chosen": _prop([float(h) for h in hum]),
        "position_bias_share_a": _prop(a_ans),
        **apart,
        "calibrated": _calibrated_preference(items, labels),
    }


OUTCOME = {"chosen": 1.0, "rejected": 0.0, "tie": 0.5, "both_bad": 0.5}


def _calibrated_preference(items: Mapping[str, Any], labels: Sequence[dict]) -> dict[str, Any]:
    """Per pair file, the share of pairs whose stored ``chosen`` answer is the better one (ties
    and "both bad" count half, as AlpacaEval counts ties), by the AI label alone, by the people
    alone and by PPI, from the random queue's verdicts (majority of reviewers) plus the AI's
    soft label on every pair. For ``win_pairs.jsonl`` (``alignkit eval --baseline``) that share
    is the evaluated model's win rate against the baseline."""
    from alignkit.review.verdicts import verdicts

    found = verdicts(lab for lab in labels if lab["kind"] == "pair")
    by_source: dict[str, list[Any]] = {}
    for item in items.values():
        if item.kind == "pair":
            by_source.setdefault(f"{Path(item.run).name}/{item.source}", []).append(item)
    out = {}
    for source, group in sorted(by_source.items()):
        labelled = [i for i in group if i.content_hash in found.random
                    and i.content_hash in found.pairs]  # fmt: skip
        if not labelled:
            continue
        chosen = {i.id for i in labelled}
        out[source] = calibrated_rate(
            [OUTCOME[found.pairs[i.content_hash]] for i in labelled],
            [float(i.judges.get("ai", 1.0)) for i in labelled],
            [float(i.judges.get("ai", 1.0)) for i in group if i.id not in chosen],
        )
    return out


def fmt_estimate(e: Mapping[str, Any] | None) -> str:
    """'value [low, high] (n=N)' for an estimate dict."""
    if not e or e.get("value") is None:
        return "-"
    lo, hi = e.get("low"), e.get("high")
    ci = "" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]"
    return f"{e['value']:.3f}{ci} (n={e.get('n', '?')})"


def render_stats(stats: Mapping[str, Any], console: Any) -> None:
    """Print :func:`run_stats` output as rich tables (n and interval on every figure)."""

    f = stats.get("findings")
    if f:
        _render_findings(f, console)
    else:
        console.print("no finding labels")
    p = stats.get("pairs")
    if p and p.get("n"):
        _render_pairs(p, console)
    if stats.get("samples"):
        _render_samples(stats["samples"], console)


def _render_samples(samples: Mapping[str, Any], console: Any) -> None:
    from rich.table import Table

    t = Table(title="Evaluation samples: scorers against the people (score >= 0.5 = yes)")
    for col in ("question", "people say yes", "scorer", "agreement", "kappa"):
        t.add_column(col)
    for question, q in samples.items():
        rows = list(q["scorers"].items()) or [("-", None)]
        for k, (key, r) in enumerate(rows):
            t.add_row(
                question if k == 0 else "",
                fmt_estimate(q["human_yes"]) if k == 0 else "",
                key,
                fmt_estimate(r["accuracy"]) if r else "-",
                fmt_estimate(r["kappa"]) if r else "-",
            )
    console.print(t)


def _render_pairs(p: Mapping[str, Any], console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"Preference pairs: the AI's label against the people's ({p['n']} a/b answers)")
    t.add_column("figure")
    t.add_column("value [95% CI] (n)")
    ai = p["ai_vs_human"]
    t.add_row("AI label agrees with the person", fmt_estimate(ai["accuracy"]))
    t.add_row("Cohen's kappa", fmt_estimate(ai["kappa"]))
    t.add_row("person prefers the stored 'chosen'", fmt_estimate(p["human_prefers_chosen"]))
    t.add_row("person picks position A (position bias)", fmt_estimate(p["position_bias_share_a"]))
    console.print(t)
    console.print(f"tie: {p['tie']}; both bad: {p['both_bad']} (left out of the figures above)")
    if p.get("calibrated"):
        c = Table(title="Share of pairs whose stored 'chosen' is better (ties count half; "
                  "win_pairs.jsonl: the model's win rate)")  # fmt: skip
        for col in ("pair file", "AI label alone", "people alone", "PPI"):
            c.add_column(col)
        for source, e in p["calibrated"].items():
            c.add_row(source, *(fmt_estimate(e[k]) for k in ("judge_only", "human_only", "ppi")))
        console.print(c)


def _render_findings(f: Mapping[str, Any], console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"Findings: harmful rate ({f['n_labelled']} labelled of {f['n_items']})")
    t.add_column("estimate")
    t.add_column("value [95% CI] (n)")
    t.add_row("human (all labels)", fmt_estimate(f["human_rate"]))
    for name, e in f.get("calibrated_asr", {}).items():
        if isinstance(e, Mapping):
            t.add_row(name, fmt_estimate(e))
    console.print(t)
    if "calibrated_asr" in f:
        console.print(f["calibrated_asr"]["note"])
        console.print("judge_only: " + f["calibrated_asr"]["judge_only"]["note"])
    j = Table(title="Judges vs humans (score >= 0.5 = harmful)")
    for col in ("judge", "accuracy", "kappa", "precision", "recall", "tp/fp/fn/tn"):
        j.add_column(col)
    for name, r in f["judges"].items():
        c = r["confusion"]
        j.add_row(
            name,
            fmt_estimate(r["accuracy"]),
            fmt_estimate(r["kappa"]),
            fmt_estimate(r["precision"]),
            fmt_estimate(r["recall"]),
            f"{c['tp']}/{c['fp']}/{c['fn']}/{c['tn']}",
        )
    console.print(j)
    a = f["reviewer_alpha"]
    alpha = "-" if a["alpha"] is None else f"{a['alpha']:.3f}"
    console.print(
        f"Krippendorff's alpha {alpha} ({a['n_items']} items, {a['n_reviewers']} reviewers)"
    )
    console.print(
        f"unsure dropped: {f['unsure_dropped']}; majority ties dropped: {f['ties_dropped']}"
    )
