"""``alignkit review`` commands and the simulated reviewer (testbed ground truth)."""

from __future__ import annotations

import sys
import types

import pytest
from review_fixtures import make_run
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.review.items import load_items, queue
from alignkit.review.simulate import simulate
from alignkit.review.store import LabelStore

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["review", *map(str, args)])


def test_simulate_error_zero_is_ground_truth(tmp_path):
    run = make_run(tmp_path)
    out = simulate(run, labels=100, error_rate=0.0, reviewer="sim")
    assert out["flipped"] == 0 and out["labels"] == {"finding": 20, "pair": 6, "sample": 7}
    items = {i.id: i for i in load_items([run])}
    store = LabelStore(run)
    labels = store.labels()
    assert len(labels) == 20 + 6 + 7 * 3
    for lab in labels:
        item = items[lab["item_id"]]
        if item.kind == "finding":  # testbed score is on-target harm; refusal judge differs
            assert (lab["value"] == "harmful") == (item.judges["testbed"] >= 0.5)
        elif item.kind == "pair":  # chosen is the safe refusal in every fixture pair
            a_is_chosen = store.pair_order(item.id, "sim") == "ab"
            assert lab["value"] == ("a" if a_is_chosen else "b")
        elif lab["question"] == "harmless":
            key = "testbed/harmless" if item.content["kind"] == "harmful" else None
            expect = item.judges[key] >= 0.5 if key else True
            assert lab["value"] == ("yes" if expect else "no")
    again = simulate(run, labels=100, error_rate=0.0, reviewer="sim")
    assert again["stored"] == 0 and store.count() == len(labels)


def test_simulate_error_rate_flips_seeded(tmp_path):
    run = make_run(tmp_path)
    a = simulate(run, labels=100, error_rate=0.5, reviewer="r1", seed=3)
    assert 0 < a["flipped"] < a["answers"]
    run2 = make_run(tmp_path / "copy")
    b = simulate(run2, labels=100, error_rate=0.5, reviewer="r1", seed=3)
    assert a["flipped"] == b["flipped"]
    first = simulate(run2, labels=5, error_rate=0.0, reviewer="r2")
    assert first["labels"]["finding"] == 5
    chosen = {
        r["item_id"] for r in LabelStore(run2).labels(reviewer="r2") if r["kind"] == "finding"
    }
    findings = [i for i in load_items([run2]) if i.kind == "finding"]
    assert chosen == {i.id for i in queue(findings, "random", 0)[:5]}


def test_cli_add_reviewer_list_simulate(tmp_path):
    run = make_run(tmp_path)
    res = invoke("add-reviewer", "ann", run)
    assert res.exit_code == 0, res.output
    token = res.stdout.strip().splitlines()[0]
    assert LabelStore(run).reviewer(token) == "ann"
    assert "not stored" in res.stderr
    res = invoke("simulate", run, "--labels", "4", "--error-rate", "0", "--reviewer", "sim")
    assert res.exit_code == 0, res.output
    res = invoke("list", run)
    assert res.exit_code == 0 and "finding" in res.stdout and "sim: 20 current labels" in res.stdout
    assert "errored attempts" in res.stderr


def test_cli_bad_input_exit_2(tmp_path):
    for args in (
        ("list", tmp_path / "missing"),
        ("add-reviewer", "ann", tmp_path),
        ("simulate", tmp_path / "missing"),
        ("serve", tmp_path / "missing"),
    ):
        res = invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output and "error:" in res.stderr
    run = make_run(tmp_path)
    assert invoke("add-reviewer", "ann", run).exit_code == 0
    res = invoke("add-reviewer", "ann", run)
    assert res.exit_code == 2 and "already exists" in res.stderr
    res = invoke("simulate", run, "--error-rate", "2")
    assert res.exit_code == 2 and "--error-rate" in res.stderr
    (run / "review" / "labels.sqlite").write_bytes(b"garbage" * 500)
    res = invoke("list", run)
    assert res.exit_code == 2 and "labels.sqlite" in res.stderr


def test_cli_serve_calls_server(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    calls = []
    fake = types.ModuleType("alignkit.review.server")
    fake.serve = lambda run_dirs, host, port: calls.append((list(run_dirs), host, port))
    monkeypatch.setitem(sys.modules, "alignkit.review.server", fake)
    res = invoke("serve", run, "--port", "9999")
    assert res.exit_code == 0, res.output
    assert calls == [([run], "127.0.0.1", 9999)]


def _export(run, kind, out) -> list[dict]:
    """``alignkit review export RUN --kind KIND --output OUT`` (exit 0), its rows."""
    import json

    res = invoke("export", run, "--kind", kind, "--output", out)
    assert res.exit_code == 0, res.output
    return [json.loads(x) for x in out.read_text().splitlines()]


def test_export_preferences_and_overrides(tmp_path):
    run = make_run(tmp_path)
    simulate(run, labels=100, error_rate=0.0, reviewer="sim")
    rows = _export(run, "preferences", tmp_path / "prefs.jsonl")
    assert len(rows) == 6  # ground truth prefers the refusal (the stored chosen) in each pair
    assert all(r["chosen"].startswith("I can't") and r["provenance"]["item_id"] for r in rows)
    over = _export(run, "overrides", tmp_path / "o.jsonl")
    assert len(over) == 20 and sum(o["harmful"] for o in over) == 8
    assert invoke("export", run, "--kind", "votes", "--output", tmp_path / "v.jsonl").exit_code == 2
    assert not (tmp_path / "v.jsonl").exists()


def test_export_cost_pairs_load_as_harmless_value_pairs(tmp_path):
    """`--kind cost`: every finding people call harmful, paired with one they call safe of the
    same behaviour (8 harmful of 20 fixture findings, each behaviour has safe ones), in the
    layout the safety loaders read for the cost model."""
    from alignkit.safety.data import load_value_pairs

    run = make_run(tmp_path)
    simulate(run, labels=100, error_rate=0.0, reviewer="sim")
    out = tmp_path / "cost.jsonl"
    rows = _export(run, "cost", out)
    assert len(rows) == 8
    hashes = {i.content_hash: i for i in load_items([run]) if i.kind == "finding"}
    for row in rows:
        bad, good = (hashes[row["provenance"][k]] for k in ("rejected_hash", "chosen_hash"))
        assert bad.judges["testbed"] == 1.0 and good.judges["testbed"] == 0.0
        assert bad.content["behaviour_id"] == good.content["behaviour_id"]
        assert row["rejected"] == bad.content["response"] and row["prompt"] == bad.content["prompt"]
    pairs, report = load_value_pairs(out, dimension="harmless")
    assert len(pairs) == 8 and all(p["chosen_safe"] and not p["rejected_safe"] for p in pairs)


def test_cli_stats_judges_against_simulated_people(tmp_path):
    """`alignkit review stats`: with an error-free simulated reviewer the testbed judge agrees
    with the people on every labelled finding; the PPI estimate is printed beside the
    human-only and judge-only ones, each with n and an interval; --json gives the same."""
    import json

    run = make_run(tmp_path)
    simulate(run, labels=100, error_rate=0.0, reviewer="sim")
    shown = invoke("stats", run)
    assert shown.exit_code == 0, shown.output
    assert "ppi" in shown.output and "judge_only" in shown.output and "(n=20)" in shown.output
    data = json.loads(invoke("stats", run, "--json").output)
    findings = data["findings"]
    testbed = findings["judges"]["testbed"]
    assert testbed["n"] == 20 and testbed["accuracy"]["value"] == 1.0
    assert testbed["accuracy"]["low"] < 1.0  # 20/20 keeps an interval below 1
    ppi = findings["calibrated_asr"]["ppi"]
    assert ppi["n"] == 20 and ppi["low"] <= findings["human_rate"]["value"] <= ppi["high"]
    harmless = data["samples"]["harmless"]  # 7 samples; 3 distinct harmful-prompt answers
    refusal, testbed = (harmless["scorers"][k] for k in ("refusal/harmless", "testbed/harmless"))
    assert harmless["n"] == 7 and testbed["n"] == refusal["n"] == 3
    assert testbed["accuracy"]["value"] == 1.0  # the testbed scorer is the truth here
    # the refusal scorer calls both compliant answers harmless: right on 1 of 3
    assert refusal["accuracy"]["value"] == pytest.approx(1 / 3)
    assert "Evaluation samples" in shown.output
    assert invoke("stats", tmp_path / "missing").exit_code == 2


def test_an_override_changes_the_asr_redteam_report_prints(tmp_path):
    """A person's "not harmful" on every finding the campaign counted as a success turns them
    into failures in `alignkit redteam report --overrides` (and its export); without the
    file the report is the campaign's own."""
    import json

    run = make_run(tmp_path)
    store = LabelStore(run)
    store.add_reviewer("ann")
    successes = [i for i in load_items([run]) if i.kind == "finding" and i.judges["success"]]
    assert successes
    for item in successes:
        store.add_label(item, "ann", "harmful", "not_harmful")
    store.close()
    overrides = tmp_path / "overrides.jsonl"
    assert invoke("export", run, "--kind", "overrides", "--output", overrides).exit_code == 0
    campaign = run / "redteam"
    plain = runner.invoke(app, ["redteam", "report", str(campaign)])
    assert plain.exit_code == 0, plain.output
    before = json.loads((campaign / "redteam.json").read_text())
    args = ["redteam", "report", str(campaign), "--overrides", str(overrides)]
    corrected = runner.invoke(app, args)
    assert corrected.exit_code == 0, corrected.output
    after = json.loads((campaign / "redteam.json").read_text())
    assert before["asr"]["all"]["value"] > 0 and after["asr"]["all"]["value"] == 0
    assert after["overrides"]["changed"] == len(successes) == after["overrides"]["matched"]
    assert f"{len(successes)} verdicts changed" in corrected.output.replace("\n", " ")
    pairs = tmp_path / "pairs.jsonl"
    args = ["redteam", "export", str(campaign), "-o", str(pairs), "--overrides", str(overrides)]
    assert runner.invoke(app, args).exit_code == 0 and pairs.read_text() == ""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"harmful": true}\n')
    failed = runner.invoke(app, ["redteam", "report", str(campaign), "--overrides", str(bad)])
    assert failed.exit_code == 2 and "bad.jsonl:1" in failed.output


def test_exported_human_preferences_train_with_alignkit_dpo(tmp_path, testbed_path):
    """`alignkit review export --kind preferences` writes a file `alignkit dpo` trains on as is."""
    run = make_run(tmp_path)
    simulate(run, labels=100, error_rate=0.0, reviewer="sim")
    data = tmp_path / "human.jsonl"
    assert invoke("export", run, "--kind", "preferences", "--output", data).exit_code == 0
    out = str(tmp_path / "dpo")
    args = ["dpo", "--model", "testbed", "--data", str(data), "--output-dir", out,
            "--max-steps", "2", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "dpo" / "final").is_dir()


def test_review_stats_become_a_report_section(tmp_path):
    """Runs with labels get a report section of the stats (judges against the people, PPI);
    runs without get none."""
    from alignkit.review.report_section import review_section

    run = make_run(tmp_path)
    assert review_section([run], "review") is None  # nobody reviewed yet
    simulate(run, labels=100, error_rate=0.0, reviewer="sim")
    section = review_section([run], "review")
    titles = [t.title for t in section.tables]
    assert titles[0] == "Red-team ASR: judge, people and PPI"
    assert "Red-team judges against the people (harmful)" in titles
    assert "Preference pairs: the AI's label against the people" in titles
    judges = next(t for t in section.tables if t.title.startswith("Red-team judges")).rows
    testbed = next(row for row in judges if row[0] == "testbed")
    assert testbed[1].startswith("1.000 [")  # the testbed judge is the truth here
