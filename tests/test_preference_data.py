"""Preference data: every file type and record layout, every bad-input message, skip-and-count,
chat-template tokenization on templates that differ, and counted truncation."""

from __future__ import annotations

import json

import pytest
import tiny_models as tm
from transformers import AutoTokenizer

from alignkit.data import DPODataset, LoadReport, load_preferences, parse_records
from alignkit.errors import AlignkitError, ConfigError, DataError

PAIR = {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Rome."}
SYSTEM_CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is two plus two?"},
]
MULTI_TURN = [
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "Name a colour."},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def only(path, **kwargs):
    examples, report = load_preferences(path, **kwargs)
    assert len(examples) == 1
    return examples[0], report


# --------------------------------------------------------------------------- record layouts


def test_standard_layout(tmp_path):
    example, report = only(write_jsonl(tmp_path / "p.jsonl", [{**PAIR, "id": 7}]))
    assert example.prompt == [{"role": "user", "content": PAIR["prompt"]}]
    assert example.completions == ["Paris.", "Rome."]
    assert example.source == f"{tmp_path / 'p.jsonl'}:1"
    assert example.metadata == {"id": 7}
    assert report.formats == {"standard": 1}


def test_conversational_layout_with_strings_messages_and_repeated_prompt(tmp_path):
    records = [
        {
            "prompt": SYSTEM_CHAT,
            "chosen": [{"role": "assistant", "content": "Four."}],
            "rejected": "Five.",
        },
        {  # completions that repeat the whole conversation (the prompt is removed)
            "prompt": MULTI_TURN,
            "chosen": [*MULTI_TURN, {"role": "assistant", "content": "Blue."}],
            "rejected": [*MULTI_TURN, {"role": "assistant", "content": "No."}],
        },
    ]
    examples, report = load_preferences(write_jsonl(tmp_path / "c.jsonl", records))
    assert examples[0].prompt == SYSTEM_CHAT
    assert examples[0].completions == ["Four.", "Five."]
    assert examples[1].prompt == MULTI_TURN
    assert examples[1].completions == ["Blue.", "No."]
    assert report.formats == {"conversational": 2}


def test_implicit_prompt_from_messages_and_strings(tmp_path):
    records = [
        {
            "chosen": [*MULTI_TURN, {"role": "assistant", "content": "Blue."}],
            "rejected": [*MULTI_TURN, {"role": "assistant", "content": "Go away."}],
        },
        {  # the shared "Par" is cut back to a word boundary, so it stays in the completions
            # (HH-RLHF transcripts are split by their markers: tests/test_preference_formats.py)
            "chosen": "Capital of France? Paris.",
            "rejected": "Capital of France? Parma.",
        },
    ]
    examples, report = load_preferences(write_jsonl(tmp_path / "i.jsonl", records))
    assert examples[0].prompt == MULTI_TURN
    assert examples[0].completions == ["Blue.", "Go away."]
    assert examples[1].prompt == [{"role": "user", "content": "Capital of France?"}]
    assert examples[1].completions == ["Paris.", "Parma."]
    assert report.formats == {"implicit": 2}


@pytest.mark.parametrize(
    ("key", "value", "order"),
    [
        ("ranking", [2, 0, 1], ["c", "a", "b"]),  # indices, best first
        ("ranks", [2, 3, 1], ["c", "a", "b"]),  # lower rank is better
        ("ranks", [1, 2, 0], ["c", "a", "b"]),  # 0-based ranks give the same order
        ("scores", [0.5, 0.1, 0.9], ["c", "a", "b"]),  # higher score is better
    ],
)
def test_ranked_layouts(tmp_path, key, value, order):
    record = {"prompt": "Pick one", "responses": ["a", "b", "c"], key: value}
    example, report = only(write_jsonl(tmp_path / "r.jsonl", [record]))
    assert example.completions == order
    assert report.formats == {"ranked": 1}


def test_tied_scores_keep_the_first_of_each_tie_and_are_counted(tmp_path):
    record = {"prompt": "Pick", "responses": ["a", "b", "c", "d"], "scores": [1, 3, 3, 0]}
    example, report = only(write_jsonl(tmp_path / "t.jsonl", [record]))
    assert example.completions == ["b", "a", "d"]  # "c" ties with "b" and comes later
    assert report.adjusted == {"tied_responses_dropped": 1}
    assert "tied_responses_dropped 1" in report.summary()


# ------------------------------------------------------------------------------- file types


def test_json_list_data_key_and_json_lines_in_a_json_file(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([PAIR, PAIR]))
    (tmp_path / "data.json").write_text(json.dumps({"data": [PAIR]}))
    write_jsonl(tmp_path / "lines.json", [PAIR, PAIR, PAIR])
    examples, _ = load_preferences(tmp_path / "list.json")
    assert [e.source for e in examples] == [
        f"{tmp_path / 'list.json'}:record 0",
        f"{tmp_path / 'list.json'}:record 1",
    ]
    assert len(load_preferences(tmp_path / "data.json")[0]) == 1
    assert len(load_preferences(tmp_path / "lines.json")[0]) == 3


def test_parquet_with_message_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"prompt": SYSTEM_CHAT, "chosen": [{"role": "assistant", "content": "Four."}],
         "rejected": [{"role": "assistant", "content": "Five."}]},
        {"prompt": MULTI_TURN, "chosen": [{"role": "assistant", "content": "Red."}],
         "rejected": [{"role": "assistant", "content": "Maybe."}]},
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    examples, report = load_preferences(tmp_path / "p.parquet")
    assert examples[1].prompt == MULTI_TURN and examples[1].completions == ["Red.", "Maybe."]
    assert examples[1].source.endswith("p.parquet:row 1")
    assert report.formats == {"conversational": 2}


def test_csv_with_pairs_json_message_cells_and_ranked_rows(tmp_path):
    import csv

    with (tmp_path / "p.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, ["prompt", "chosen", "rejected", "responses", "scores", "note"]
        )
        writer.writeheader()
        writer.writerow({**PAIR, "note": "x"})
        writer.writerow({"prompt": json.dumps(SYSTEM_CHAT), "chosen": "Four.", "rejected": "Five."})
        writer.writerow({"prompt": "[INST] not JSON", "chosen": "Yes.\nReally.", "rejected": "No."})
        writer.writerow({"prompt": "Pick", "responses": json.dumps(["a", "b"]), "scores": "[1, 2]"})
    examples, report = load_preferences(tmp_path / "p.csv")
    assert examples[0].metadata == {"note": "x"}
    assert examples[1].prompt == SYSTEM_CHAT
    assert examples[2].prompt[0]["content"] == "[INST] not JSON"
    assert examples[2].completions[0] == "Yes.\nReally."
    assert examples[3].completions == ["b", "a"]
    assert examples[3].source.endswith("p.csv:6")  # the row above spans lines 4-5
    assert report.formats == {"standard": 2, "conversational": 1, "ranked": 1}


def test_hf_dataset_directories_and_splits(tmp_path):
    import datasets

    datasets.Dataset.from_list([PAIR, PAIR]).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([PAIR] * 3),
            "test": datasets.Dataset.from_list([PAIR]),
        }
    ).save_to_disk(str(tmp_path / "splits"))
    assert len(load_preferences(tmp_path / "single")[0]) == 2
    train, _ = load_preferences(tmp_path / "splits")
    test, _ = load_preferences(f"{tmp_path / 'splits'}::test")
    assert (len(train), len(test)) == (3, 1)
    assert test[0].source == f"{tmp_path / 'splits'}::test:row 0"
    with pytest.raises(DataError, match=r"no split 'dev'; available: train, test"):
        load_preferences(f"{tmp_path / 'splits'}::dev")
    with pytest.raises(DataError, match="single dataset, not splits"):
        load_preferences(f"{tmp_path / 'single'}::test")


# ----------------------------------------------------------------------- bad input messages

BAD_RECORDS = [
    # (line written to the file, expected message after "FILE:1: ", skip reason)
    ('{"prompt": "x", "chosen": "a",', "malformed JSON: ", "malformed_json"),
    ('["x", "a", "b"]', "expected an object with preference fields, got list", "not_an_object"),
    ('{"prompt": "x", "chosen": "a"}', "field 'rejected': missing", "missing_field"),
    ('{"chosen": "a", "rejected": "b", "prompt": 3}',
     "field 'prompt': expected a string or a list of messages, got number", "wrong_type"),
    ('{"prompt": "x", "chosen": 3, "rejected": "b"}',
     "field 'chosen': expected a string or a list of messages, got number", "wrong_type"),
    ('{"prompt": [{"role": "user", "content": 5}], "chosen": "a", "rejected": "b"}',
     "field 'prompt[0].content': expected a string, got number", "wrong_type"),
    ('{"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}',
     "field 'prompt[0].content': missing", "missing_field"),
    ('{"prompt": "x", "chosen": "  ", "rejected": "b"}',
     "field 'chosen': empty completion", "empty_completion"),
    ('{"prompt": "", "chosen": "a", "rejected": "b"}', "field 'prompt': empty prompt",
     "empty_prompt"),
    ('{"prompt": "x", "chosen": "same", "rejected": "same"}',
     "field 'rejected': identical to 'chosen'", "identical_completions"),
    ('{"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}',
     "field 'chosen': expected one assistant message, got 1 (user)", "bad_message"),
    ('{"chosen": "Yes", "rejected": "No"}', "field 'prompt': no 'prompt' field",
     "no_shared_prompt"),
    ('{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
     '"chosen": "b", "rejected": "c"}',
     "field 'prompt': the last prompt message is from the assistant", "bad_message"),
    ('{"chosen": "Q: x A: yes", "rejected": "Q: x A: yes indeed"}',
     "field 'chosen': empty completion after the shared prompt", "empty_completion"),
    ('{"chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}',
     "field 'rejected': without a 'prompt' field, 'chosen' and 'rejected' must both be",
     "wrong_type"),
    ('{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
     '"rejected": [{"role": "user", "content": "r"}, {"role": "assistant", "content": "b"}]}',
     "field 'prompt': no 'prompt' field and 'chosen' / 'rejected' share no leading messages",
     "no_shared_prompt"),
    ('{"question": "x", "answer": "a"}',
     "no preference fields (found: answer, question); expected one of: prompt + chosen",
     "unknown_record_format"),
    ('{"prompt": "x", "responses": ["a", "b"]}', "field 'ranking': a ranked record needs",
     "missing_field"),
    ('{"prompt": "x", "responses": ["a", "b"], "ranking": [0, 1, 2]}',
     "field 'ranking': has 3 entries for 2 responses", "bad_ranking"),
    ('{"prompt": "x", "responses": ["a", "b"], "ranking": [1, 2]}',
     "field 'ranking': [1, 2] is not an ordering of the response indices 0..1", "bad_ranking"),
    ('{"prompt": "x", "responses": ["a", "b"], "ranking": [0, 0]}',
     "is not an ordering of the response indices", "bad_ranking"),
    ('{"prompt": "x", "responses": ["a", "b"], "scores": [2, 2]}',
     "field 'scores': every response ties", "bad_ranking"),
    ('{"prompt": "x", "responses": ["a", "b"], "scores": [1, 2], "ranking": [0, 1]}',
     "exactly one of 'ranking'", "bad_ranking"),
    ('{"prompt": "x", "responses": ["a", "a"], "ranking": [1, 0]}',
     "field 'responses[0]': identical to 'responses[1]'", "identical_completions"),
    ('{"prompt": "x", "responses": ["a", "b"], "scores": [NaN, 1]}',
     "field 'scores': holds a NaN or infinite value", "bad_ranking"),
    ('{"prompt": "x", "responses": ["a", "b"], "ranking": [0.5, 1]}',
     "field 'ranking': expected integer indices", "wrong_type"),
    ('{"prompt": "x", "responses": ["a", "b"], "ranks": "1,2"}',
     "field 'ranks': expected a list of numbers, got string", "wrong_type"),
    ('{"prompt": "x", "responses": ["a"], "ranking": [0]}',
     "field 'responses': needs at least 2 responses, got 1", "bad_ranking"),
    # soft_label / margin compare chosen with rejected: a list of three has no such pair
    ('{"prompt": "x", "responses": ["a", "b", "c"], "ranking": [0, 1, 2], "soft_label": 0.8}',
     "field 'soft_label': belongs to a pair (chosen vs rejected); this ranked record has 3",
     "bad_soft_label"),
    ('{"prompt": "x", "responses": ["a", "b", "c"], "scores": [3, 2, 1], "margin": 1.0}',
     "field 'margin': belongs to a pair", "bad_margin"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "message", "reason"), BAD_RECORDS)
def test_bad_record_message_names_file_line_and_field(tmp_path, line, message, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PAIR) + "\n\n" + line + "\n")  # line 3 (a blank line between)
    with pytest.raises(DataError) as info:
        load_preferences(path)
    text = str(info.value)
    assert text.startswith(f"{path}:3: "), text
    assert message in text, text
    assert "\n" not in text and info.value.exit_code == 2
    assert info.value.reason == reason
    examples, report = load_preferences(path, on_bad_record="skip")
    assert len(examples) == 1 and report.read == 2 and report.loaded == 1
    assert report.skipped == {reason: 1} and report.where[reason] == [f"{path}:3"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "missing.jsonl: no such file or directory"),
        ("data.txt", "x", "unknown file type '.txt'; accepted: JSON Lines (.jsonl), JSON"),
        ("latin1.jsonl", b"\xff\xfe{}", "latin1.jsonl: not UTF-8 text"),
        ("broken.json", '[{"prompt": "x",\n "chosen": }]', "malformed JSON at line 2 column"),
        ("scalar.json", "42", "expected a JSON list of records"),
        ("broken.parquet", b"PAR1 not really", "unreadable Parquet file"),
        ("empty.jsonl", "\n\n", "no usable preference records"),
        ("plain_dir", "dir", "a directory not saved by datasets"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as info:
        load_preferences(path, on_bad_record="skip")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, AlignkitError) and info.value.exit_code == 2


def test_skip_counts_every_reason_and_all_bad_is_still_an_error(tmp_path):
    lines = [
        json.dumps(PAIR),
        "{oops",
        json.dumps({"prompt": "x", "chosen": "", "rejected": "b"}),
        json.dumps({"prompt": "x", "chosen": "", "rejected": "c"}),
        json.dumps({"prompt": "x", "chosen": "a"}),
        json.dumps(PAIR),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"mixed.jsonl:2: malformed JSON"):
        load_preferences(path)
    examples, report = load_preferences(path, on_bad_record="skip")
    assert len(examples) == 2 and report.read == 6 and report.loaded == 2
    assert report.skipped == {"empty_completion": 2, "malformed_json": 1, "missing_field": 1}
    summary = report.summary()
    assert "6 read, 2 loaded (standard 2), 4 skipped (empty_completion 2 [" in summary
    assert f"{path}:3, {path}:4]" in summary
    assert json.loads(json.dumps(report.to_dict()))["skipped"]["malformed_json"] == 1
    write_jsonl(tmp_path / "all_bad.jsonl", [{"prompt": "x"}, {"chosen": "a"}])
    with pytest.raises(DataError, match=r"no usable preference records.*2 skipped"):
        load_preferences(tmp_path / "all_bad.jsonl", on_bad_record="skip")
    with pytest.raises(ConfigError, match="on_bad_record must be 'error' or 'skip'"):
        load_preferences(path, on_bad_record="ignore")


# ---------------------------------------------------------------------------- tokenization


@pytest.fixture(scope="session")
def tokenizers(testbed_path):
    """Tokenizers whose chat templates differ (and one without a template)."""
    return {
        "testbed": AutoTokenizer.from_pretrained(testbed_path),
        "chatml": tm.build_tokenizer(chat_template="chatml", eos_token="<|im_end|>"),
        "llama2": tm.build_tokenizer(add_bos=True, chat_template="llama2"),
        "plain": tm.build_tokenizer(add_bos=True),
    }


END_OF_TURN = {"testbed": "<|end|>", "chatml": "<|im_end|>", "llama2": "</s>", "plain": "</s>"}
EXAMPLES = [
    PAIR,
    {"prompt": SYSTEM_CHAT, "chosen": "Four.", "rejected": "Five."},
    {"prompt": MULTI_TURN, "responses": ["Blue.", "Nope.", "Green."], "ranking": [0, 2, 1]},
]


@pytest.mark.parametrize("name", ["testbed", "chatml", "llama2"])
def test_template_tokens_are_what_the_model_sees_with_no_duplicates(tokenizers, name):
    tok = tokenizers[name]
    dataset = DPODataset(EXAMPLES, tok)
    assert len(dataset) == 3 and dataset.is_ranked
    end = tok.convert_tokens_to_ids(END_OF_TURN[name])
    for record, item in zip(EXAMPLES, dataset, strict=True):
        prompt = parse_records([record])[0][0].prompt
        rendered = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        assert item.prompt_ids == tok(rendered, add_special_tokens=False)["input_ids"]
        replies = record.get("responses") or [record["chosen"], record["rejected"]]
        for ids in item.completion_ids:
            full = [*item.prompt_ids, *ids]
            text = tok.decode(ids)
            assert text.strip().endswith(END_OF_TURN[name]) and ids.count(end) == 1
            reply = next(r for r in replies if r in text)
            conversation = tok.apply_chat_template(
                [*prompt, {"role": "assistant", "content": reply}], tokenize=False
            )
            assert full == tok(conversation, add_special_tokens=False)["input_ids"]
            # exactly the BOS tokens the template writes (llama2: one per user turn, first)
            if tok.bos_token is not None:  # the testbed tokenizer has no BOS at all
                bos = tok.bos_token_id
                assert full.count(bos) == conversation.count(tok.bos_token)
                assert (full[0] == bos) == (name == "llama2") and full[1] != bos


def test_testbed_tokens_decode_to_the_template_text(tokenizers):
    tok = tokenizers["testbed"]
    item = DPODataset([PAIR], tok)[0]
    assert tok.decode(item.prompt_ids) == (
        "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n"
    )
    assert [tok.decode(c) for c in item.completion_ids] == ["Paris.<|end|>\n", "Rome.<|end|>\n"]


def test_no_template_uses_the_plain_format_with_one_bos_and_eos(tokenizers):
    tok = tokenizers["plain"]
    item = DPODataset([{"prompt": SYSTEM_CHAT, "chosen": "Four.", "rejected": "Five."}], tok)[0]
    assert item.prompt_ids[0] == tok.bos_token_id
    assert (
        tok.decode(item.prompt_ids[1:])
        == "System: Be brief.\nUser: What is two plus two?\nAssistant:"
    )  # noqa: E501
    full = [*item.prompt_ids, *item.completion_ids[0]]
    assert full.count(tok.bos_token_id) == 1 and full.count(tok.eos_token_id) == 1
    assert [tok.decode(c) for c in item.completion_ids] == [" Four.</s>", " Five.</s>"]


def test_template_that_rejects_a_record_or_breaks_the_prefix(tokenizers):
    tool = {"prompt": [{"role": "tool", "content": "x"}], "chosen": "a", "rejected": "b"}
    with pytest.raises(
        DataError, match=r"records:record 1: field 'prompt': the chat template rejected it"
    ):  # noqa: E501
        DPODataset([PAIR, tool], tokenizers["testbed"])
    dataset = DPODataset([PAIR, tool], tokenizers["testbed"], on_bad_record="skip")
    assert len(dataset) == 1 and dataset.report.dropped == {"template_error": 1}
    odd = tm.build_tokenizer(
        chat_template="{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    )
    with pytest.raises(DataError, match="does not render the prompt as a prefix"):
        DPODataset([PAIR], odd)


# ------------------------------------------------------------------------------ truncation

LONG = {
    "prompt": " ".join(f"word{i}" for i in range(60)),
    "chosen": "The capital of France is Paris, and the capital of Italy is Rome.",
    "rejected": "Water boils at one hundred degrees Celsius at sea level, said the fox.",
}


def test_truncation_keeps_the_chosen_side_and_counts_it(tokenizers):
    tok = tokenizers["plain"]
    full = DPODataset([LONG], tok, max_length=1000, max_prompt_length=999)[0]
    p, longest = len(full.prompt_ids), max(map(len, full.completion_ids))
    assert p > 40 and longest > 10
    end = DPODataset([LONG], tok, max_length=p, max_prompt_length=p - 10)
    item = end[0]
    assert item.prompt_ids[0] == tok.bos_token_id  # keep_end keeps the BOS
    assert item.prompt_ids[1:] == full.prompt_ids[11:]
    assert item.completion_ids == [c[:10] for c in full.completion_ids]
    assert end.report.truncated == {"prompt": 1, "completion": 1}
    assert end.report.truncated_records == 1 and "1 truncated" in end.report.summary()
    start = DPODataset([LONG], tok, max_length=p - 10 + longest, max_prompt_length=p - 10,
                       truncation_mode="keep_start")  # fmt: skip
    assert start[0].prompt_ids == full.prompt_ids[: p - 10]
    assert start[0].completion_ids == full.completion_ids  # room enough once the prompt is cut
    assert start.report.truncated == {"prompt": 1}
    fits = DPODataset([LONG], tok, max_length=p + longest, max_prompt_length=p - 10)
    assert fits[0] == full and fits.report.truncated_records == 0


def test_prompt_longer_than_max_length_and_identical_after_cut(tokenizers, tmp_path):
    tok = tokenizers["chatml"]
    shared = "The quick brown fox jumps over the lazy dog near the river bank. " * 2
    same_start = {"prompt": "Hi", "chosen": shared + "Yes.", "rejected": shared + "No."}
    path = write_jsonl(tmp_path / "long.jsonl", [PAIR, LONG, same_start])
    with pytest.raises(
        DataError, match=r"long.jsonl:2: field 'prompt': \d+ tokens, longer than max_length=30"
    ):  # noqa: E501
        DPODataset.from_file(path, tok, max_length=30, max_prompt_length=20)
    with pytest.raises(DataError, match=r"records:record 0: field 'chosen': identical to another"):  # noqa: E501
        DPODataset([same_start], tok, max_length=30, max_prompt_length=20)
    dataset = DPODataset.from_file(
        path, tok, max_length=30, max_prompt_length=20, on_bad_record="skip"
    )
    assert len(dataset) == 1 and dataset[0].source.endswith("long.jsonl:1")
    report = dataset.report
    assert report.dropped == {"prompt_too_long": 1, "identical_after_truncation": 1}
    assert report.kept == 1 and "2 dropped (" in report.summary()
    assert f"prompt_too_long 1 [{path}:2]" in report.summary()


def test_dataset_parameters_and_report_for_examples(tokenizers):
    examples, _ = parse_records([PAIR])
    dataset = DPODataset(examples, tokenizers["testbed"])
    assert isinstance(dataset.report, LoadReport) and dataset.report.loaded == 1
    assert not dataset.is_ranked and dataset[0].num_tokens == sum(
        map(len, [dataset[0].prompt_ids, *dataset[0].completion_ids])
    )
    for kwargs, message in [
        ({"max_length": 64, "max_prompt_length": 64}, "below max_length=64"),
        ({"truncation_mode": "middle"}, "truncation_mode must be"),
        ({"on_bad_record": "drop"}, "on_bad_record must be"),
    ]:
        with pytest.raises(ConfigError, match=message):
            DPODataset(examples, tokenizers["testbed"], **kwargs)
