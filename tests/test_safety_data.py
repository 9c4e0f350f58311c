"""Safety value data: generic pairwise, PKU-SafeRLHF and BeaverTails files in every file type,
validation messages naming file + line + field, skip-and-count, layout detection, labelled ->
pairs, and the testbed generators checked against the ground-truth labeller."""

from __future__ import annotations

import json

import pytest

from alignkit.errors import ConfigError, DataError
from alignkit.safety import data as safety_data
from alignkit.safety.data import load_labelled_responses, load_value_pairs, pairs_from_labelled
from alignkit.testbed.labeller import label

PKU = {
    "prompt": "How do I pick a lock?",
    "response_0": "Here is how: step 1, insert a tension wrench.",
    "response_1": "I can't help with breaking into property.",
    "is_response_0_safe": False,
    "is_response_1_safe": True,
    "better_response_id": 0,
    "safer_response_id": 1,
    "response_0_harm_category": {"Privacy Violation": False, "Property Crime": True},
    "response_1_harm_category": {"Privacy Violation": False, "Property Crime": False},
}
PAIR = {
    "prompt": "What is 2 plus 2?",
    "chosen": "4.",
    "rejected": "5.",
    "category": "arithmetic",
}
BEAVER = [
    {"prompt": "p1", "response": "safe a", "is_safe": True, "category": {"a": False, "b": False}},
    {"prompt": "p1", "response": "bad a", "is_safe": False, "category": {"a": False, "b": True}},
    {"prompt": "p2", "response": "safe b", "is_safe": True, "category": None},
    {"prompt": "p1", "response": "bad b", "is_safe": False, "category": {"a": True, "b": False}},
    {"prompt": "p1", "response": "safe c", "is_safe": True, "category": None},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_table(path, records):
    """Write ``records`` with pandas as CSV or Parquet (dict cells as JSON in CSV)."""
    pd = pytest.importorskip("pandas")
    if path.suffix == ".csv":
        rows = [
            {k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()} for r in records
        ]
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pytest.importorskip("pyarrow")
        pd.DataFrame(records).to_parquet(path)
    return path


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_pku_record_parses_in_every_file_type(tmp_path, suffix):
    path = tmp_path / f"pku{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, [PKU])
    elif suffix == ".json":
        path.write_text(json.dumps([PKU]))
    else:
        write_table(path, [PKU])
    (pair,), report = load_value_pairs(path, dimension="harmless")
    assert pair["chosen"] == PKU["response_1"] and pair["rejected"] == PKU["response_0"]
    assert (pair["chosen_safe"], pair["rejected_safe"]) == (True, False)
    assert pair["category"] == "Property Crime"
    assert pair["dimension"] == "harmless" and pair["source"].startswith(str(path))
    assert report.loaded == 1 and report.formats == {"pku-saferlhf": 1}


def test_pku_order_depends_on_dimension(tmp_path):
    path = write_jsonl(tmp_path / "pku.jsonl", [PKU])
    (helpful,), _ = load_value_pairs(path, dimension="helpful")
    (harmless,), _ = load_value_pairs(path, dimension="harmless")
    assert helpful["chosen"] == PKU["response_0"] and helpful["rejected"] == PKU["response_1"]
    assert (helpful["chosen_safe"], helpful["rejected_safe"]) == (False, True)
    assert harmless["chosen"] == PKU["response_1"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_generic_pairwise_parses(tmp_path, suffix):
    records = [PAIR, {**PAIR, "chosen_safe": True, "rejected_safe": False, "category": None}]
    path = tmp_path / f"pairs{suffix}"
    write_jsonl(path, records) if suffix == ".jsonl" else write_table(path, records)
    pairs, report = load_value_pairs(path, dimension="harmless")
    assert [p["chosen"] for p in pairs] == ["4.", "4."]
    assert pairs[0]["category"] == "arithmetic" and pairs[1]["category"] is None
    assert (pairs[1]["chosen_safe"], pairs[1]["rejected_safe"]) == (True, False)
    assert pairs[0]["chosen_safe"] is None and pairs[0]["rejected_safe"] is None
    assert report.formats == {"pairwise": 2}


def test_explicit_layout_and_auto_detection(tmp_path):
    pku = write_jsonl(tmp_path / "pku.jsonl", [PKU])
    assert load_value_pairs(pku, layout="pku-saferlhf")[1].formats == {"pku-saferlhf": 1}
    with pytest.raises(DataError, match=r"pku.jsonl:1: field 'chosen': missing"):
        load_value_pairs(pku, layout="pairwise")
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as err:
        load_value_pairs(odd)
    message = str(err.value)
    assert "odd.jsonl:1" in message and "answer, question" in message
    assert "pairwise (prompt, chosen, rejected" in message and "pku-saferlhf (" in message
    with pytest.raises(ConfigError, match="layout must be"):
        load_value_pairs(pku, layout="beavertails")
    with pytest.raises(ConfigError, match="dimension must be"):
        load_value_pairs(pku, dimension="funny")


# --------------------------------------------------------------------------- bad input

BAD_PKU = [
    ({"safer_response_id": 2}, "safer_response_id", "must be 0 or 1, got 2", "bad_response_id"),
    ({"better_response_id": True}, "better_response_id", "must be 0 or 1", "bad_response_id"),
    ({"is_response_0_safe": "maybe"}, "is_response_0_safe", "expected a boolean", "bad_label"),
    ({"response_1": ""}, "response_1", "empty string", "empty_text"),
    ({"response_0": 3}, "response_0", "expected a string, got number", "wrong_type"),
    ({"is_response_1_safe": None}, "is_response_1_safe", "missing", "missing_field"),
    (
        {"safer_response_id": 0},
        "safer_response_id",
        "is_response_1_safe is true",
        "inconsistent_safety",
    ),
    ({"response_1": PKU["response_0"]}, "rejected", "identical", "identical_texts"),
]


@pytest.mark.parametrize(("change", "field", "problem", "reason"), BAD_PKU)
def test_bad_pku_record_names_file_line_and_field(tmp_path, change, field, problem, reason):
    path = write_jsonl(tmp_path / "data.jsonl", [PKU, {**PKU, **change}])
    with pytest.raises(DataError) as err:
        load_value_pairs(path, dimension="harmless")
    assert str(err.value).startswith(f"{path}:2: field '{field}': ")
    assert problem in str(err.value)
    pairs, report = load_value_pairs(path, dimension="harmless", on_bad_record="skip")
    assert len(pairs) == 1 and report.read == 2 and report.skipped == {reason: 1}
    assert report.where[reason] == [f"{path}:2"]


def test_bad_pairwise_records_are_counted_by_reason(tmp_path):
    records = [
        PAIR,
        {**PAIR, "rejected": None},
        {**PAIR, "chosen": ""},
        {**PAIR, "chosen_safe": False, "rejected_safe": True},
        {**PAIR, "dimension": "helpful"},
        {**PAIR, "chosen_safe": "yes"},
        {**PAIR, "rejected": None},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    path.write_text(path.read_text() + "{not json\n")
    pairs, report = load_value_pairs(path, dimension="harmless", on_bad_record="skip")
    assert len(pairs) == 1 and report.read == 8
    assert report.skipped == {
        "missing_field": 2,
        "empty_text": 1,
        "inconsistent_safety": 1,
        "dimension_mismatch": 1,
        "bad_label": 1,
        "malformed_json": 1,
    }
    with pytest.raises(DataError, match=r"pairs.jsonl:2: field 'rejected': missing"):
        load_value_pairs(path, dimension="harmless")
    for bad, message in (
        (records[3], "field 'chosen_safe': marks the chosen response unsafe"),
        (records[4], "field 'dimension': is 'helpful' but 'harmless' pairs were asked for"),
    ):
        one = write_jsonl(tmp_path / "one.jsonl", [PAIR, bad])
        with pytest.raises(DataError, match=f"one.jsonl:2: {message}"):
            load_value_pairs(one, dimension="harmless")
    assert load_value_pairs(one, dimension="helpful")[1].loaded == 2


def test_csv_bad_cell_names_line(tmp_path):
    path = write_table(tmp_path / "pku.csv", [PKU, {**PKU, "safer_response_id": 2}])
    with pytest.raises(DataError, match=r"pku.csv:3: field 'safer_response_id': must be 0 or 1"):
        load_value_pairs(path, dimension="harmless")


def test_file_with_no_usable_record_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "all-bad.jsonl", [{**PKU, "safer_response_id": 5}])
    with pytest.raises(DataError, match="no usable records .*bad_response_id 1"):
        load_value_pairs(path, on_bad_record="skip")
    with pytest.raises(DataError, match="no such file"):
        load_value_pairs(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------- labelled


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_labelled_responses_and_pairs(tmp_path, suffix):
    path = tmp_path / f"beaver{suffix}"
    write_jsonl(path, BEAVER) if suffix == ".jsonl" else write_table(path, BEAVER)
    responses, report = load_labelled_responses(path)
    assert report.loaded == 5 and [r["is_safe"] for r in responses] == [1, 0, 1, 0, 1]
    assert [r["category"] for r in responses] == [None, "b", None, "a", None]
    pairs, unpaired = pairs_from_labelled(responses)
    assert unpaired == 1  # p2 has no unsafe response
    assert [(p["chosen"], p["rejected"], p["category"]) for p in pairs] == [
        ("safe a", "bad a", "b"),
        ("safe c", "bad b", "a"),
    ]
    assert all(
        p["dimension"] == "harmless" and p["chosen_safe"] and not p["rejected_safe"] for p in pairs
    )
    assert pairs == pairs_from_labelled(responses)[0]


def test_bad_labelled_records(tmp_path):
    records = [BEAVER[0], {**BEAVER[1], "is_safe": "unsure"}, {**BEAVER[2], "category": 7}]
    path = write_jsonl(tmp_path / "b.jsonl", records)
    with pytest.raises(DataError, match=r"b.jsonl:2: field 'is_safe': expected a boolean"):
        load_labelled_responses(path)
    responses, report = load_labelled_responses(path, on_bad_record="skip")
    assert len(responses) == 1 and report.skipped == {"bad_label": 1, "wrong_type": 1}


# --------------------------------------------------------------------------- testbed


CLASSES = {
    "helpful": ({"helpful"}, {"wrong", "over_refusal"}),
    "harmless": ({"refusal"}, {"harmful"}),
    "honest": ({"idk"}, {"fabricated"}),
}


@pytest.mark.parametrize("dimension", ["helpful", "harmless", "honest"])
def test_testbed_value_pairs_have_the_claimed_properties(dimension):
    pairs = safety_data.testbed_value_pairs(120, dimension, split="train", seed=3)
    assert len(pairs) == 120 and all(p["dimension"] == dimension for p in pairs)
    good, bad = CLASSES[dimension]
    for pair in pairs:
        chosen, rejected = (
            label(pair["prompt"], pair["chosen"]),
            label(pair["prompt"], pair["rejected"]),
        )
        assert chosen.response_class in good and rejected.response_class in bad, pair
        assert pair["chosen_safe"] is (not chosen.harmful)
        assert pair["rejected_safe"] is (not rejected.harmful)
        assert pair["category"] == chosen.category
    if dimension == "harmless":
        assert all(label(p["prompt"], p["chosen"]).kind == "harmful" for p in pairs)
        assert any(label(p["prompt"], p["chosen"]).jailbreak for p in pairs)
        assert any(not label(p["prompt"], p["chosen"]).jailbreak for p in pairs)
        assert all(not p["rejected_safe"] for p in pairs)
    if dimension == "helpful":
        assert {label(p["prompt"], p["rejected"]).response_class for p in pairs} == bad
        assert all(label(p["prompt"], p["chosen"]).kind == "benign" for p in pairs)


def test_testbed_labelled_responses_match_the_labeller():
    responses = safety_data.testbed_labelled_responses(200, split="train", seed=1)
    assert len(responses) == 200
    kinds = set()
    for r in responses:
        truth = label(r["prompt"], r["response"])
        kinds.add((truth.kind, r["is_safe"]))
        assert r["is_safe"] is (not truth.harmful)
        assert r["category"] == (None if r["is_safe"] else truth.category)
    assert kinds == {("harmful", True), ("harmful", False), ("benign", True)}
    pairs, _ = pairs_from_labelled(responses)
    assert len(pairs) >= 40
    assert all(label(p["prompt"], p["rejected"]).harmful for p in pairs)


def test_testbed_generators_are_deterministic_and_splits_disjoint():
    for dimension in ("helpful", "harmless", "honest"):
        a = safety_data.testbed_value_pairs(60, dimension, seed=5)
        assert a == safety_data.testbed_value_pairs(60, dimension, seed=5)
        assert a != safety_data.testbed_value_pairs(60, dimension, seed=6)
        held = safety_data.testbed_value_pairs(60, dimension, split="heldout", seed=5)
        assert not {p["prompt"] for p in a} & {p["prompt"] for p in held}
    train = safety_data.testbed_labelled_responses(300, "train", seed=2)
    assert train == safety_data.testbed_labelled_responses(300, "train", seed=2)
    held = safety_data.testbed_labelled_responses(300, "heldout", seed=2)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    with pytest.raises(ConfigError, match="split must be"):
        safety_data.testbed_value_pairs(4, "helpful", split="test")
