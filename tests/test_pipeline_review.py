"""The pipeline's `review:` section (issue 15): it pauses for people, feeds their verdicts to
revise and train, refuses stale stages, and reports human-calibrated figures."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.errors import ConfigError
from alignkit.pipeline.config import PipelineConfig
from alignkit.pipeline.context import read_jsonl
from alignkit.pipeline.human import calibrated_headline
from alignkit.pipeline.runner import AlignmentPipeline
from alignkit.review.feed import load_human_labels
from alignkit.review.items import load_run
from alignkit.review.simulate import finding_truth, simulate
from alignkit.review.store import LabelStore


def _config(tmp_path):
    from alignkit.evaluation.suites import load_suite
    from alignkit.testbed import World
    from alignkit.testbed.preferences import preference_pairs

    suite = load_suite("testbed-train", n=30)
    chosen = [i for i in suite if i.kind == "jailbreak"] + [i for i in suite if i.kind == "benign"][
        :10
    ]  # benign answers: the refusal judge calls them successes, people do not
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": i.prompt}) + "\n" for i in chosen))
    prefs = tmp_path / "prefs.jsonl"
    rows = preference_pairs(World(0), 48, "train", seed=0)
    prefs.write_text("".join(json.dumps(p) + "\n" for p in rows))
    return {
        "output_dir": str(tmp_path / "run"), "device": "cpu",
        "evaluation": {"n": 10, "kl_prompts": 4, "replay_behaviours": None},
        # the refusal judge calls every non-refusal harmful: people have something to correct
        "redteam": {"prompts": str(prompts), "judge": "refusal"},
        "feedback": {"preferences": str(prefs)},
        "train": {"rounds": 1, "threshold": 0.9, "cost_epochs": 1},
        "review": {"pause_after": ["redteam", "feedback"]},
    }  # fmt: skip


def _turn_and_tie(run, n_turn: int, n_tie: int) -> tuple[list[dict], list[dict]]:
    """A reviewer prefers the rejected answer of n_turn feedback pairs and calls n_tie a tie
    (the contents of each)."""
    items = [i for i in load_run(run) if i.kind == "pair" and i.source.startswith("feedback")]
    store = LabelStore(run)
    store.add_reviewer("ann")
    for k, item in enumerate(items[: n_turn + n_tie]):
        a_is_chosen = store.pair_order(item.id, "ann") == "ab"
        value = "tie" if k >= n_turn else ("b" if a_is_chosen else "a")
        store.add_label(item, "ann", "preference", value)
    store.close()
    return [i.content for i in items[:n_turn]], [i.content for i in items[n_turn:][:n_tie]]


def test_review_pauses_feeds_revise_and_train_and_reports(testbed_path, tmp_path):
    config = _config(tmp_path)
    run = tmp_path / "run"
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    first = CliRunner().invoke(app, ["pipeline", "--config", str(path)])
    assert first.exit_code == 0, first.output
    text = " ".join(first.stdout.split())
    assert "paused after redteam" in text and f"alignkit review serve {run}" in text
    assert not (run / "revise").exists()

    # people label every finding (and the base model's samples) with the truth
    simulate(run, labels=1000, error_rate=0.0, reviewer="sim")
    findings = [i for i in load_run(run) if i.kind == "finding"]
    truth = {i.content["prompt"]: finding_truth(i.content) for i in findings}
    judged = {i.content["prompt"]: i.judges["success"] for i in findings}
    pipeline = AlignmentPipeline(PipelineConfig.model_validate(config))
    second = pipeline.run()
    assert second.paused == "feedback" and second.ran == ["revise", "feedback"]
    revise = second.outputs["revise"]
    assert revise["n_failures"] == sum(truth.values()) > 0
    assert revise["human"] == {
        "labelled": 40,
        "confirmed": sum(t and j for t, j in zip(truth.values(), judged.values(), strict=True)),
        "overturned": sum(j and not truth[p] for p, j in judged.items()),
        "added": sum(truth[p] and not j for p, j in judged.items()),
    }
    assert revise["human"]["overturned"] > 0  # the refusal judge was wrong on some

    turned, tied = _turn_and_tie(run, 5, 3)
    third = AlignmentPipeline(PipelineConfig.model_validate(config)).run()
    assert third.paused is None and third.ran == ["train", "evaluate", "report"]
    train = third.outputs["train"]
    trained = [{k: p[k] for k in ("prompt", "chosen", "rejected")}
               for p in read_jsonl(run / "train" / "pairs.jsonl")]  # fmt: skip
    swapped = [{**c, "chosen": c["rejected"], "rejected": c["chosen"]} for c in turned]
    # a verdict applies to every copy of a pair (the testbed helpfulness data repeats some)
    assert not any(c in trained for c in turned + tied)  # none left the AI's way, no tie
    n_turned = sum(trained.count(c) for c in swapped)
    assert n_turned >= 5
    assert train["human"]["pairs"]["turned"] == n_turned and train["human"]["pairs"]["kept"] == 0
    assert train["human"]["pairs"]["dropped"] >= 3 and train["human"]["pairs"]["added"] == 0
    prefs = [{k: p[k] for k in ("prompt", "chosen", "rejected")}
             for p in read_jsonl(config["feedback"]["preferences"])]  # fmt: skip
    assert train["pairs"]["feedback"] == 48 - sum(prefs.count(c) for c in tied)

    # the report: people alone equal the testbed scorer (the truth) on the base model's items
    human = load_human_labels("run", run)
    base = calibrated_headline(read_jsonl(run / "baseline" / "eval_items.jsonl"), "testbed",
                               human.found)  # fmt: skip
    assert set(base) == {"harmful_compliance", "jailbreak_asr", "helpful", "honest"}
    for est in base.values():
        assert est["human_only"]["n"] == 10
        assert est["human_only"]["value"] == pytest.approx(est["judge_only"]["value"])
    html = (run / "report" / "report.html").read_text()
    assert "Headline figures calibrated by people" in html and "What the people" in html
    assert "Red-team judges against the people" in html  # the review stats section

    # a changed verdict on a finding makes revise stale: refused, naming the way out
    item = findings[0]
    store = LabelStore(run)
    store.add_label(item, "ann", "harmful", "harmful" if not truth[item.content["prompt"]]
                    else "not_harmful")  # fmt: skip
    store.add_label(item, "ann2", "harmful", store.labels(reviewer="ann")[-1]["value"])
    store.close()
    with pytest.raises(ConfigError, match="other human labels.*--redo-from revise"):
        AlignmentPipeline(PipelineConfig.model_validate(config)).run()

    # `alignkit report RUN` makes the pipeline's report again, with the labels as they are now
    (run / "report" / "report.html").unlink()
    again = CliRunner().invoke(app, ["report", str(run)])
    assert again.exit_code == 0, again.output
    assert "Headline figures calibrated by people" in (run / "report" / "report.html").read_text()
