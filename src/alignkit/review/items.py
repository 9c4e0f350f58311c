"""Review items: red-team findings, preference pairs and evaluation samples read from run dirs.

An item's id is ``f"{kind}-{sha256(canonical JSON of content)[:16]}"``, so it is stable across
reloads and identical content in one run is one item. :func:`queue` orders items for review:
``"random"`` is a seeded stratified random order with proportional allocation (see
:func:`queue`), so the first n labelled items are a probability sample of the whole queue;
``"disagreement"`` and ``"critical"`` sort by the item's key, ties broken by the random order.

Keys: a finding's ``critical`` is its highest judge score and its ``disagreement`` the spread of
its judges' binary verdicts (score >= 0.5), 2*min(p, 1-p); a pair's ``disagreement`` is
1 - 2|soft_label - 0.5| (1 at an undecided AI label); a sample's ``critical`` is its highest harm
score (1 - ``*/harmless``, or ``*/harmful``) and its ``disagreement`` the largest spread among
judges scoring the same metric (``testbed/helpful`` vs ``refusal/helpful``). Errored attempts,
unreadable lines and duplicate items are skipped and counted in a :class:`LoadReport`.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alignkit.errors import DataError

Kind = Literal["finding", "pair", "sample"]
QUESTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "finding": {"harmful": ("harmful", "not_harmful", "unsure")},
    "pair": {"preference": ("a", "b", "tie", "both_bad")},
    "sample": {
        "helpful": ("yes", "no", "unsure"),
        "harmless": ("yes", "no", "unsure"),
        "honest": ("yes", "no", "unsure"),
    },
}
ORDERS = ("random", "disagreement", "critical")
_LOOKED_FOR = "campaign.sqlite, preference/DPO *.jsonl, eval_items.jsonl"


@dataclass(frozen=True)
class Item:
    """One thing a person reviews (see the module docstring and the review spec)."""

    id: str
    kind: Kind
    run: str
    source: str
    content: dict
    judges: dict
    stratum: str
    critical: float
    disagreement: float
    content_hash: str


@dataclass
class LoadReport:
    """What :func:`load_items` skipped, per source file: errored attempts, bad lines, duplicates."""

    skipped: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, source: str, reason: str, n: int = 1) -> None:
        if n:
            per = self.skipped.setdefault(source, {})
            per[reason] = per.get(reason, 0) + n


def content_hash(content: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``content``."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def finding_content(
    prompt: str, response: str | None, attack: str, behaviour_id: str, category: str | None
) -> dict:
    """What identifies a red-team finding (its id and content hash come from this): the one
    definition the review queues and ``redteam report --overrides`` both match on."""
    return {"prompt": prompt, "response": response, "attack": attack,
            "behaviour_id": behaviour_id, "category": category}  # fmt: skip


def sample_content(row: dict) -> dict:
    """What identifies an evaluation sample (an ``eval_items.jsonl`` row): its text, kind and
    category. The same answer to the same prompt is one item wherever it appears (in the base
    and in the trained model's run): one verdict of the people applies to both."""
    return {"prompt": row["prompt"], "response": row["response"], "kind": row.get("kind"),
            "category": row.get("category")}  # fmt: skip


def _num(v: object) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _spread(values: list[float]) -> float:
    """Disagreement of binary verdicts (score >= 0.5): 2*min(p, 1-p), 0 = all agree, 1 = split."""
    if len(values) < 2:
        return 0.0
    p = sum(v >= 0.5 for v in values) / len(values)
    return 2.0 * min(p, 1.0 - p)


def _make(kind: str, run: Path, source: str, content: dict, judges: dict, stratum: str,
          critical: float, disagreement: float) -> Item:  # fmt: skip
    h = content_hash(content)
    return Item(f"{kind}-{h[:16]}", kind, str(run), source, content, judges, stratum,  # type: ignore[arg-type]
                float(critical), float(disagreement), h)  # fmt: skip


def _findings(run: Path, path: Path, report: LoadReport) -> list[Item]:
    source = str(path.relative_to(run))
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        rows = db.execute(
            "SELECT attack, behaviour_id, category, prompt, response, scores, success, error "
            "FROM attempts ORDER BY attack, behaviour_id, step, idx"
        ).fetchall()
        db.close()
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path}: not a campaign store ({exc})") from None
    items = []
    for attack, bid, category, prompt, response, scores, success, error in rows:
        if error or response is None:
            report.add(source, "errored attempts")
            continue
        try:
            sc = json.loads(scores) or {}
        except ValueError:
            report.add(source, "bad scores")
            continue
        judges = {k: (v if v is None else float(v)) for k, v in sc.items() if _num(v)}
        vals = [v for v in judges.values() if v is not None]
        judges["success"] = bool(success)
        content = finding_content(prompt, response, attack, bid, category)
        items.append(_make("finding", run, source, content, judges, category or bid,
                           max(vals, default=float(bool(success))), _spread(vals)))  # fmt: skip
    return items


def _jsonl(path: Path, report: LoadReport, source: str) -> list[dict]:
    """The JSON objects of a JSONL file (alignkit's reader); other lines counted as bad."""
    from alignkit.data.preference import read_records

    rows = []
    for _, row in read_records(path):  # a malformed line arrives as a BadRecord
        if isinstance(row, dict):
            rows.append(row)
        else:
            report.add(source, "bad lines")
    return rows


def _pairs(run: Path, path: Path, rows: list[dict], report: LoadReport) -> list[Item]:
    source = str(path.relative_to(run))
    items = []
    for row in rows:
        if not all(isinstance(row.get(k), str) for k in ("prompt", "chosen", "rejected")):
            report.add(source, "bad lines")
            continue
        soft = row.get("soft_label")
        soft = 1.0 if soft is None else float(soft)
        content = {k: row[k] for k in ("prompt", "chosen", "rejected")}
        items.append(_make("pair", run, source, content, {"ai": soft}, source, 0.0,
                           1.0 - 2.0 * abs(soft - 0.5)))  # fmt: skip
    return items


def _harm(key: str, value: float) -> float | None:
    """A score as harm (1 = harmful): ``*harmless`` inverted, ``*harmful``/``*harm`` as is."""
    name = key.rsplit("/", 1)[-1]
    if name == "harmless":
        return 1.0 - value
    return value if name in ("harmful", "harm", "harm_rate") else None


def _samples(run: Path, path: Path, rows: list[dict], report: LoadReport) -> list[Item]:
    source = str(path.relative_to(run))
    items = []
    for row in rows:
        if not (isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str)):
            report.add(source, "bad lines")
            continue
        raw = row.get("scores") if isinstance(row.get("scores"), dict) else {}
        scores = {k: float(v) for k, v in raw.items() if v is not None and _num(v)}
        content = sample_content(row)
        harm = [_harm(k, v) for k, v in scores.items() if _harm(k, v) is not None]
        groups: dict[str, list[float]] = {}
        for k, v in scores.items():
            groups.setdefault(k.split("/")[-1], []).append(v)
        dis = max((_spread(vs) for vs in groups.values()), default=0.0)
        items.append(_make("sample", run, source, content, scores, str(row.get("kind") or "?"),
                           max(harm, default=0.0), dis))  # fmt: skip
    return items


def _is_pair_file(rows: list[dict]) -> bool:
    return bool(rows) and all(k in rows[0] for k in ("prompt", "chosen", "rejected"))


def load_run(run_dir: Path, report: LoadReport | None = None) -> list[Item]:
    """Every reviewable item in one run dir (deduplicated by id); skips counted in ``report``."""
    report = report if report is not None else LoadReport()
    run = Path(run_dir)
    if run.is_file() and run.suffix == ".jsonl":
        run = run.parent
    if not run.is_dir():
        raise DataError(f"{run_dir}: not a directory")
    run = run.resolve()
    items: list[Item] = []
    for path in sorted(run.rglob("campaign.sqlite")):
        items += _findings(run, path, report)
    for path in sorted(run.rglob("*.jsonl")):
        if "review" in path.relative_to(run).parts[:1]:
            continue
        source = str(path.relative_to(run))
        if path.name == "eval_items.jsonl":
            items += _samples(run, path, _jsonl(path, report, source), report)
            continue
        with path.open(encoding="utf-8", errors="replace") as fh:
            head = fh.readline()
        try:
            first = json.loads(head)
        except ValueError:
            continue
        if isinstance(first, dict) and _is_pair_file([first]):
            items += _pairs(run, path, _jsonl(path, report, source), report)
    seen: dict[str, Item] = {}
    for it in items:
        if it.id in seen:
            report.add(it.source, "duplicates")
        else:
            seen[it.id] = it
    if not seen:
        raise DataError(f"{run_dir}: nothing to review (looked for {_LOOKED_FOR})")
    return list(seen.values())


def load_items(run_dirs: Sequence[Path], report: LoadReport | None = None) -> list[Item]:
    """Items of every run dir, in load order (see :func:`load_run`)."""
    if not run_dirs:
        raise DataError("no run directory given")
    items: list[Item] = []
    for run in run_dirs:
        items += load_run(Path(run), report)
    return items


def _stratified(items: Sequence[Item], seed: int) -> list[Item]:
    """Proportional-allocation stratified random order.

    Items are shuffled uniformly within each stratum (seeded); the merged order takes, at each
    position k (1-based), the stratum whose share is furthest behind its target k * N_h / N
    (largest ``k*N_h/N - taken_h``; ties by a seeded random rank of the strata). So every prefix
    holds each stratum within one item of its proportional count, and within a stratum the
    labelled prefix is a simple random sample: the first n items are a stratified probability
    sample with inclusion probability ~ n/N for every item.
    """
    rng = random.Random(f"review-queue:{seed}")
    strata: dict[str, list[Item]] = {}
    for it in sorted(items, key=lambda i: i.id):
        strata.setdefault(it.stratum, []).append(it)
    names = sorted(strata)
    for name in names:
        rng.shuffle(strata[name])
    rank = {name: rng.random() for name in names}
    n = len(items)
    taken = dict.fromkeys(names, 0)
    out: list[Item] = []
    for k in range(1, n + 1):
        open_ = [s for s in names if taken[s] < len(strata[s])]
        best = max(open_, key=lambda s: (k * len(strata[s]) / n - taken[s], rank[s]))
        out.append(strata[best][taken[best]])
        taken[best] += 1
    return out


def queue(items: Sequence[Item], order: str = "random", seed: int = 0) -> list[Item]:
    """Items in review order: ``random`` (stratified), ``disagreement`` or ``critical`` first."""
    if order not in ORDERS:
        raise DataError(f"unknown queue order {order!r} (choose from {', '.join(ORDERS)})")
    base = _stratified(items, seed)
    if order == "random":
        return base
    pos = {it.id: i for i, it in enumerate(base)}
    key = (lambda it: it.disagreement) if order == "disagreement" else (lambda it: it.critical)
    return sorted(base, key=lambda it: (-key(it), pos[it.id]))
