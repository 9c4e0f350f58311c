"""Review items: loading, stable ids, skip counts, queue orders (stratified random sample)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
from review_fixtures import make_run, write_jsonl

from alignkit.errors import DataError
from alignkit.review.items import LoadReport, load_items, queue


def test_load_kinds_ids_stable_and_skips_counted(tmp_path):
    run = make_run(tmp_path)
    report = LoadReport()
    items = load_items([run], report)
    kinds = Counter(i.kind for i in items)
    assert kinds == {"finding": 20, "pair": 6, "sample": 7}  # two samples are identical
    assert report.skipped["evaluate/eval_items.jsonl"] == {"duplicates": 1}
    assert report.skipped["redteam/campaign.sqlite"] == {"errored attempts": 1}
    assert report.skipped["feedback/preferences.jsonl"] == {"bad lines": 1}
    again = load_items([run])
    assert [i.id for i in items] == [i.id for i in again]
    assert all(i.id.startswith(f"{i.kind}-") and i.id[-16:] == i.content_hash[:16] for i in items)
    finding = next(i for i in items if i.kind == "finding")
    assert set(finding.judges) == {"testbed", "refusal", "success"}
    assert finding.source == "redteam/campaign.sqlite" and finding.run == str(run.resolve())


def test_duplicates_dropped_and_dpo_file_parent(tmp_path):
    run = make_run(tmp_path)
    rows = [
        json.loads(x) for x in (run / "feedback" / "preferences.jsonl").read_text().split("\n")[:6]
    ]
    path = write_jsonl(tmp_path / "dpo" / "data.jsonl", rows + rows[:2])
    report = LoadReport()
    items = load_items([path], report)
    assert len(items) == 6 and report.skipped["data.jsonl"] == {"duplicates": 2}


def test_keys(tmp_path):
    items = load_items([make_run(tmp_path)])
    pair = {i.judges["ai"]: i for i in items if i.kind == "pair"}
    assert pair[0.5].disagreement == pytest.approx(1.0)
    assert pair[1.0].disagreement == pytest.approx(0.0)
    harmful = [i for i in items if i.kind == "sample" and i.content["kind"] == "harmful"]
    assert {i.critical for i in harmful} == {0.0, 1.0}  # 1 - testbed/harmless
    off = [i for i in items if i.kind == "finding" and i.judges["testbed"] != i.judges["refusal"]]
    assert off and all(i.disagreement == 1.0 and i.critical == 1.0 for i in off)


def test_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_items([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="nothing to review"):
        load_items([tmp_path / "empty"])
    bad = tmp_path / "bad"
    (bad / "redteam").mkdir(parents=True)
    (bad / "redteam" / "campaign.sqlite").write_bytes(b"garbage" * 500)
    with pytest.raises(DataError, match="campaign.sqlite"):
        load_items([bad])


def _synthetic(n_by_stratum: dict[str, int]) -> list:
    items = load_items([make_run_cache()])
    base = items[0]
    out = []
    for stratum, n in n_by_stratum.items():
        for k in range(n):
            out.append(replace(base, id=f"x-{stratum}-{k}", stratum=stratum))
    return out


_RUN = {}


def make_run_cache():
    import tempfile
    from pathlib import Path

    if "run" not in _RUN:
        _RUN["run"] = make_run(Path(tempfile.mkdtemp()))
    return _RUN["run"]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_queue_is_stratified_in_every_prefix(seed):
    counts = {"a": 50, "b": 30, "c": 15, "d": 4, "e": 1}
    items = _synthetic(counts)
    q = queue(items, "random", seed)
    assert sorted(i.id for i in q) == sorted(i.id for i in items)
    n = len(items)
    taken = Counter()
    for k, it in enumerate(q, 1):
        taken[it.stratum] += 1
        for s, size in counts.items():
            assert abs(taken[s] - k * size / n) <= 1.0, (k, s)
    assert [i.id for i in queue(items, "random", seed)] == [i.id for i in q]


def test_random_queue_seeded_and_uniform_within_stratum():
    items = _synthetic({"a": 10, "b": 10})
    assert [i.id for i in queue(items, "random", 0)] != [i.id for i in queue(items, "random", 1)]
    firsts = Counter(
        next(i for i in queue(items, "random", s) if i.stratum == "a").id for s in range(400)
    )
    assert len(firsts) == 10 and max(firsts.values()) < 80  # ~40 each if uniform


def test_disagreement_and_critical_orders(tmp_path):
    items = load_items([make_run(tmp_path)])
    for order, key in (("disagreement", "disagreement"), ("critical", "critical")):
        q = queue(items, order, 3)
        values = [getattr(i, key) for i in q]
        assert values == sorted(values, reverse=True)
        rnd = {i.id: k for k, i in enumerate(queue(items, "random", 3))}
        for a, b in zip(q, q[1:], strict=False):
            if getattr(a, key) == getattr(b, key):
                assert rnd[a.id] < rnd[b.id]
    with pytest.raises(DataError, match="unknown queue order"):
        queue(items, "newest")


def test_bare_redteam_and_eval_dirs_and_several_runs(tmp_path):
    import shutil

    run = make_run(tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "redteam" / "campaign.sqlite", bare / "campaign.sqlite")
    ev = tmp_path / "ev"
    ev.mkdir()
    shutil.copy(run / "evaluate" / "eval_items.jsonl", ev / "eval_items.jsonl")
    items = load_items([bare, ev])
    assert Counter(i.kind for i in items) == {"finding": 20, "sample": 7}
    assert {i.run for i in items} == {str(bare.resolve()), str(ev.resolve())}
    assert {i.source for i in items} == {"campaign.sqlite", "eval_items.jsonl"}
