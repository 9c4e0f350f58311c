"""Multiple-choice evaluation: file shapes, bad records, scoring rules, and the testbed effect."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from alignkit.errors import DataError, UnsupportedError
from alignkit.evaluation.multiple_choice import (
    MCQuestion,
    evaluate_multiple_choice,
    load_multiple_choice,
    mc1_credit,
    mc2_mass,
)
from alignkit.models.base import TokenLogprobs
from alignkit.testbed import World

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"


class TableBackend:
    """A backend whose log-probs come from a table: completion -> per-token log-probs."""

    name = "table"
    supports_logprobs = True

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def logprobs(self, prompts: Sequence, completions: Sequence[str]) -> list[TokenLogprobs]:
        self.calls.append(list(completions))
        return [TokenLogprobs(tokens=c.split(), logprobs=list(self.table[c])) for c in completions]


class CountingBackend:
    """Wraps a backend and records the size of every ``logprobs`` call."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.supports_logprobs = inner.supports_logprobs
        self.calls: list[int] = []

    def logprobs(self, prompts, completions):
        self.calls.append(len(completions))
        return self.inner.logprobs(prompts, completions)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- effect


def world_questions(world: World, wrong_answer: bool = False) -> list[MCQuestion]:
    """Held-out benign requests: the helpful answer against three wrong ones, shuffled.

    With ``wrong_answer`` the key points at a wrong choice (a control: accuracy must collapse).
    """
    rng = random.Random(0)
    questions = []
    for i, req in enumerate(world.requests("benign", "heldout")):
        right = world.respond(req, "helpful", rng)
        wrong: list[str] = []
        while len(wrong) < 3:
            text = world.respond(req, "wrong", rng)
            if text != right and text not in wrong:
                wrong.append(text)
        choices = [right, *wrong]
        rng.shuffle(choices)
        answer = choices.index(wrong[0] if wrong_answer else right)
        questions.append(MCQuestion(req.text, choices, answer, category=req.category, id=f"b{i}"))
    return questions


def test_testbed_model_answers_its_world_well_above_chance(testbed_backend):
    world = World(seed=0)
    questions = world_questions(world)
    counting = CountingBackend(testbed_backend)
    result = evaluate_multiple_choice(counting, questions, n_resamples=500)

    assert counting.calls == [4 * len(questions)]  # every (prompt, choice) pair in one call
    assert result.overall["chance"] == pytest.approx(0.25)
    # measured: MC1 1.00 and normalised 1.00 on all 71 held-out benign requests
    assert result.mc1.n == len(questions) >= 50
    assert result.mc1.value >= 0.9 and result.mc1.low >= 0.8
    assert result.mc1_normalised.value >= 0.9
    assert result.mc2 is None
    categories = result.by_category()
    assert set(categories) == {"arithmetic", "fact", "howto", "creative"}
    for name, figures in categories.items():
        assert figures["mc1"].value >= 0.75, name

    # control: the same choices keyed to a wrong answer score far below chance
    control = evaluate_multiple_choice(
        testbed_backend, world_questions(world, wrong_answer=True), n_resamples=200
    )
    assert control.mc1.value <= 0.1


def test_example_files_evaluate_on_testbed(testbed_backend, tmp_path):
    from alignkit.evaluation.rundir import load_run

    questions, report = load_multiple_choice(EXAMPLES / "mc_truthfulqa_sample.jsonl")
    result = evaluate_multiple_choice(testbed_backend, questions, report=report, n_resamples=200)
    # measured: MC1 0.75, normalised 1.00, MC2 0.80 (chance 0.28)
    assert result.mc1.value > 2 * result.overall["chance"]
    assert result.mc2 is not None and result.mc2.n == len(questions)
    assert result.mc2.value >= 0.6
    assert result.by_category()["arithmetic"]["mc2"].value >= 0.9

    result.save(tmp_path)
    data = json.loads((tmp_path / "mc.json").read_text(encoding="utf-8"))
    assert data["kind"] == "multiple_choice" and data["model"] == "testbed"
    assert data["formats"] == {"truthfulqa": 16} and data["skipped"]["count"] == 0
    assert set(data["mc1"]) == {"value", "low", "high", "n", "method"}
    assert data["mc1"]["method"] in ("clopper-pearson", "wilson")  # MC1 is a proportion
    rows = (tmp_path / "mc_items.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(questions) and json.loads(rows[0])["id"] == "q00000"
    assert load_run(tmp_path).mc == data


# ---------------------------------------------------------------------------------- scoring


def test_scoring_rules_on_a_table_backend():
    table = {
        "Paris": [-1.0],
        "Lyon": [-1.5],
        "the city of Paris": [-0.5] * 4,  # total -2.0 < -1.5, mean -0.5 > -1.5
        "Rome": [math.log(0.25)],
        "I am not sure": [math.log(0.5) / 4] * 4,  # total log 0.5
    }
    backend = TableBackend(table)
    questions = [
        MCQuestion("Capital of France?", ["Paris", "Lyon"], 0, category="geo"),
        MCQuestion("Capital of France, long?", ["Lyon", "the city of Paris"], 1),
        MCQuestion(
            "Capital of Italy?",
            ["Rome", "Paris"],
            0,
            mc2_choices=["Rome", "I am not sure", "Paris"],
            mc2_labels=[True, True, False],
            category="geo",
        ),
    ]
    result = evaluate_multiple_choice(backend, questions, n_resamples=100)
    # one call; choices shared by MC1 and MC2 are scored once per question
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 2 + 2 + 3
    assert [it.mc1 for it in result.items] == [1.0, 0.0, 0.0]  # Rome -1.39 < Paris -1.0
    assert [it.mc1_normalised for it in result.items] == [1.0, 1.0, 0.0]
    p = [0.25, 0.5, math.exp(-1.0)]
    assert result.items[2].mc2 == pytest.approx((p[0] + p[1]) / sum(p))
    assert result.mc2.n == 1 and result.mc1.value == pytest.approx(1 / 3)
    assert set(result.by_category()) == {"geo", "uncategorised"}
    assert result.by_category()["geo"]["mc1"].value == pytest.approx(0.5)
    json.dumps(result.to_dict(), allow_nan=False)


def test_mc1_ties_share_credit_and_mc2_is_stable():
    assert mc1_credit([-1.0, -1.0, -3.0], 0) == pytest.approx(0.5)
    assert mc1_credit([-1.0, -1.0, -3.0], 2) == 0.0
    assert mc2_mass([-1000.0, -1001.0], [True, False]) == pytest.approx(1 / (1 + math.exp(-1)))


def test_backend_without_logprobs_is_refused():
    class NoLogprobs:
        name = "openai:chat-only@http://localhost:1/v1"
        supports_logprobs = False

        def logprobs(self, prompts, completions):
            raise AssertionError("must not be called")

    question = MCQuestion("Q?", ["a", "b"], 0)
    with pytest.raises(UnsupportedError, match="gives no log-probs"):
        evaluate_multiple_choice(NoLogprobs(), [question])


# ---------------------------------------------------------------------------------- loading


def test_each_example_file_loads_in_its_shape():
    expected = {
        "mc_hhh_sample.jsonl": ("hhh", 18),
        "mc_truthfulqa_sample.jsonl": ("truthfulqa", 16),
        "mc_plain_sample.jsonl": ("plain", 10),
    }
    for name, (shape, n) in expected.items():
        questions, report = load_multiple_choice(EXAMPLES / name)
        assert dict(report.formats) == {shape: n} and len(questions) == n
        for q in questions:
            assert len(q.choices) >= 2 and 0 <= q.answer < len(q.choices)
    tqa, _ = load_multiple_choice(EXAMPLES / "mc_truthfulqa_sample.jsonl")
    assert all(q.mc2_labels and any(q.mc2_labels) and not all(q.mc2_labels) for q in tqa)


def test_other_layouts_load(tmp_path):
    # BIG-bench task.json; the best choice is not listed first
    task = {"name": "hhh", "examples": [{"input": "Hi?", "target_scores": {"no": 0, "yes": 1}}]}
    (tmp_path / "task.json").write_text(json.dumps(task), encoding="utf-8")
    [q], report = load_multiple_choice(tmp_path / "task.json")
    assert (q.choices, q.answer, dict(report.formats)) == (["no", "yes"], 1, {"hhh": 1})

    # original TruthfulQA layout: {choice: label} dicts, in a JSON list
    record = {
        "question": "Q?",
        "mc1_targets": {"a": 0, "b": 1, "c": 0},
        "mc2_targets": {"a": 0, "b": 1, "d": 1},
    }
    (tmp_path / "tqa.json").write_text(json.dumps([record]), encoding="utf-8")
    [q], _ = load_multiple_choice(tmp_path / "tqa.json")
    assert (q.answer, q.mc2_choices, q.mc2_labels) == (1, ["a", "b", "d"], [False, True, True])

    # plain in CSV (choices as a JSON cell), answer given as the choice's text in JSONL
    csv_text = 'prompt,choices,answer\nQ?,"[""x"", ""y""]",1\n'
    (tmp_path / "plain.csv").write_text(csv_text, encoding="utf-8")
    [q], _ = load_multiple_choice(tmp_path / "plain.csv")
    assert (q.choices, q.answer) == (["x", "y"], 1)
    by_text = {"prompt": "Q?", "choices": ["x", "y"], "answer": "y"}
    path = write_jsonl(tmp_path / "p.jsonl", [by_text])
    assert load_multiple_choice(path)[0][0].answer == 1


def test_truthfulqa_parquet_as_published(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [
        {
            "question": "Q?",
            "mc1_targets": {"choices": ["t", "f"], "labels": [1, 0]},
            "mc2_targets": {"choices": ["t", "t2", "f"], "labels": [1, 1, 0]},
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "tqa.parquet")
    [q], report = load_multiple_choice(tmp_path / "tqa.parquet")
    assert (q.answer, q.mc2_labels) == (0, [True, True, False])
    assert dict(report.formats) == {"truthfulqa": 1}


BAD = [
    ({"input": "Q?", "target_scores": {"a": 1, "b": 1}}, "target_scores", "exactly one best"),
    (
        {"question": "Q?", "mc1_targets": {"choices": ["a", "b"], "labels": [1, 1]}},
        "mc1_targets",
        "exactly one 1",
    ),
    (
        {"question": "Q?", "mc1_targets": {"choices": ["a", "b"], "labels": [1]}},
        "mc1_targets.labels",
        "1 labels for 2 choices",
    ),
    ({"prompt": "Q?", "choices": ["a", "b"], "answer": 2}, "answer", "out of range"),
    ({"prompt": "Q?", "choices": ["a", "a"], "answer": 0}, "choices", "repeats"),
    ({"prompt": "Q?", "answer": 0, "choices": ["a", 3]}, "choices[1]", "expected a string"),
    ({"choices": ["a", "b"], "answer": 0}, "prompt", "missing"),
]


@pytest.mark.parametrize(("record", "field", "problem"), BAD)
def test_bad_record_names_file_line_and_field(tmp_path, record, field, problem):
    good = {"prompt": "Fine?", "choices": ["yes", "no"], "answer": 0}
    if "target_scores" in record:
        good = {"input": "Fine?", "target_scores": {"yes": 1, "no": 0}}
    elif "question" in record:
        good = {"question": "Fine?", "mc1_targets": {"yes": 1, "no": 0}}
    path = write_jsonl(tmp_path / "mc.jsonl", [good, good, record])
    with pytest.raises(DataError) as info:
        load_multiple_choice(path)
    message = info.value.message
    assert f"{path}:3" in message and f"field '{field}'" in message and problem in message

    questions, report = load_multiple_choice(path, on_bad_record="skip")
    assert len(questions) == 2 and sum(report.skipped.values()) == 1 and report.read == 3


def test_unusable_files_and_mixed_shapes(tmp_path):
    plain = {"prompt": "Q?", "choices": ["a", "b"], "answer": 0}
    hhh = {"input": "Q?", "target_scores": {"a": 1, "b": 0}}
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(plain) + "\n{not json\n" + json.dumps(hhh) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: malformed JSON"):
        load_multiple_choice(path)
    questions, report = load_multiple_choice(path, on_bad_record="skip")
    assert len(questions) == 1
    assert dict(report.skipped) == {"malformed_json": 1, "mixed_shapes": 1}

    other = write_jsonl(tmp_path / "prefs.jsonl", [{"chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"prefs\.jsonl:1: not a multiple-choice record"):
        load_multiple_choice(other)
    with pytest.raises(DataError, match="no usable multiple-choice questions"):
        load_multiple_choice(other, on_bad_record="skip")
    with pytest.raises(DataError, match="no such file"):
        load_multiple_choice(tmp_path / "missing.jsonl")
