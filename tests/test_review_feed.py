"""Human verdicts fed to the loop (`review.human_labels`): from a label store or export files,
applied to red-team rows and preference pairs (no model: small run directories)."""

from __future__ import annotations

import pytest
from review_fixtures import make_run, pairs

from alignkit.errors import DataError
from alignkit.review.export import export
from alignkit.review.feed import HumanLabels, load_human_labels
from alignkit.review.items import load_items
from alignkit.review.simulate import finding_truth, simulate
from alignkit.review.store import LabelStore


def _rows(run):
    """The fixture's findings as pipeline red-team rows (judged by the refusal judge)."""
    return [
        {"prompt": i.content["prompt"], "response": i.content["response"],
         "attack": i.content["attack"], "behaviour": i.content["behaviour_id"],
         "category": i.content["category"], "harmful": i.judges["refusal"] >= 0.5}
        for i in load_items([run]) if i.kind == "finding"
    ]  # fmt: skip


def test_people_correct_the_judges_failures(tmp_path):
    """The refusal judge calls every non-refusal harmful (14 of 20 fixture findings); people
    (error-free) call only the on-target ones harmful (8): 6 failures overturned, none added,
    and every row's verdict is the truth."""
    run = make_run(tmp_path)
    simulate(run, labels=100, error_rate=0.0, reviewer="sim")
    human = load_human_labels("run", run)
    rows, counts = human.correct_findings(_rows(run))
    assert counts == {"labelled": 20, "confirmed": 8, "overturned": 6, "added": 0}
    items = {i.content["prompt"]: i for i in load_items([run]) if i.kind == "finding"}
    assert all(r["harmful"] == finding_truth(items[r["prompt"]].content) for r in rows)
    same = load_human_labels(str(run), tmp_path)  # the run dir named as a source
    assert same.found.findings == human.found.findings
    assert load_human_labels(str(run / "review" / "labels.sqlite"), tmp_path).found.findings


def test_pairs_are_kept_turned_round_dropped_or_added(tmp_path):
    run = make_run(tmp_path)
    items = [i for i in load_items([run]) if i.kind == "pair"]
    store = LabelStore(run)
    store.add_reviewer("ann")
    answers = ["a", "b", "tie", "both_bad"]  # item k gets answers[k]; the rest unlabelled
    for item, value in zip(items, answers, strict=False):
        store.add_label(item, "ann", "preference", value)
    store.close()
    human = load_human_labels("run", run)
    rows = [{**p, "origin": "feedback"} for p in pairs()]
    out, counts = human.orient_pairs(rows)
    order = {i.id: LabelStore.pair_order(i.id, "ann") for i in items[:2]}
    labelled = zip(items[:2], "ab", strict=True)
    turned = sum((value == "a") != (order[item.id] == "ab") for item, value in labelled)
    assert counts == {"kept": 2 - turned, "turned": turned, "dropped": 2, "added": 0}
    assert len(out) == len(rows) - 2
    assert all("soft_label" not in p for p in out if p.get("human"))
    # a pair labelled elsewhere (another run) and not among the pipeline's is added
    extra, counts = human.orient_pairs(rows[4:])
    assert counts["added"] == 2 - sum(1 for i in items[:2] if i.content["prompt"] in
                                      {r["prompt"] for r in rows[4:]})  # fmt: skip


def test_export_files_are_a_source_too(tmp_path):
    """Overrides, preferences and cost exports load as verdicts equal to the store's."""
    run = make_run(tmp_path)
    simulate(run, labels=100, error_rate=0.0, reviewer="sim")
    store = load_human_labels("run", run)
    for kind in ("overrides", "preferences", "cost"):
        export(run, kind, tmp_path / f"{kind}.jsonl")
    over = load_human_labels(str(tmp_path / "overrides.jsonl"), run)
    assert over.found.findings == store.found.findings and len(over.found.findings) == 20
    prefs = load_human_labels(str(tmp_path / "preferences.jsonl"), run)
    assert prefs.found.pairs == store.found.pairs and len(prefs.found.pairs) == 6
    cost = load_human_labels(str(tmp_path / "cost.jsonl"), run)
    assert cost.found.findings.items() <= store.found.findings.items()
    pairs_from_file, counts = prefs.orient_pairs([])
    assert counts["added"] == 6 and all(p["chosen"].startswith("I can't") for p in pairs_from_file)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1"):
        load_human_labels(str(bad), run)
    with pytest.raises(DataError, match="no review/labels.sqlite"):
        load_human_labels(str(tmp_path), run)


def test_cost_pairs_from_rows_people_labelled(tmp_path):
    run = make_run(tmp_path)
    simulate(run, labels=100, error_rate=0.0, reviewer="sim")
    human: HumanLabels = load_human_labels("run", run)
    extra, skipped = human.cost_pairs(_rows(run))
    assert len(extra) == 8 and not skipped  # each of 2 behaviours: 4 harmful, 6 safe answers
    assert all(p["chosen_safe"] and not p["rejected_safe"] for p in extra)
