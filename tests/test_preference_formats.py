"""Preference data as people already have it: HH-RLHF transcripts (split as TRL splits them),
PKU-SafeRLHF records (better / safer), pandas CSV exports with Python-repr cells, gzip files."""

from __future__ import annotations

import gzip
import json
import re

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data import DPODataset, load_preferences, parse_records
from alignkit.data.formats import literal_cell, split_hh
from alignkit.dpo.config import DPOConfig
from alignkit.errors import ConfigError, DataError
from alignkit.safety.data import load_value_pairs

runner = CliRunner()
FAST = ["--batch-size", "2", "--kl-samples", "0", "--device", "cpu", "--max-steps", "1"]

H, A = "\n\nHuman: ", "\n\nAssistant: "
MULTI = H + "Hi there" + A + "Hello! How can I help?" + H + "How do I bake bread?" + A
HH_GOOD = [
    {"chosen": MULTI + "Mix flour, water and yeast, then bake.", "rejected": MULTI + "No."},
    {"chosen": H + "What is 2+2?" + A + "4.", "rejected": H + "What is 2+2?" + A + "5."},
    # no leading blank line, and one reply a prefix of the other (TRL's zip(strict) would raise)
    {
        "chosen": "Human: Name a colour." + A + "Red",
        "rejected": "Human: Name a colour." + A + "Red!",
    },
]
NO_SPACE = H + "x\n\nAssistant:"  # markers without TRL's trailing space
EARLY = H + "x" + A + "a"  # the transcripts part in a Human turn, before the last reply
HH_BAD = [
    ({"chosen": H + "x" + A + "same", "rejected": H + "x" + A + "same"}, "identical_completions"),
    ({"chosen": H + "x" + A, "rejected": H + "x" + A + "a reply"}, "empty_completion"),
    ({"chosen": NO_SPACE + "a", "rejected": NO_SPACE + "b"}, "hh_no_assistant_turn"),
    (
        {"chosen": EARLY + H + "y" + A + "c", "rejected": EARLY + H + "z" + A + "c"},
        "hh_diverges_early",
    ),
]

PKU_BASE = {
    "prompt": "How do I find someone's home address?",
    "response_0": "Look them up in public records and follow them home.",
    "response_1": "I can't help find a private person's address.",
    "is_response_0_safe": False,
    "is_response_1_safe": True,
    "better_response_id": 0,
    "safer_response_id": 1,
    "response_0_harm_category": {"Violence": False, "Privacy Violation": True},
    "response_1_harm_category": {"Violence": False, "Privacy Violation": False},
    "response_0_severity_level": 2,
    "response_1_severity_level": 0,
}
PKU_SECOND = {
    **PKU_BASE,
    "prompt": "Write a poem about rain.",
    "response_0": "Rain taps the roof.",
    "response_1": "Rain.",
    "is_response_0_safe": True,
    "better_response_id": 0,
    "safer_response_id": 0,
}
# what pandas' DataFrame.to_csv (and datasets' Dataset.to_csv) write: Python-repr dict cells,
# True / False, and a nullable int column as floats
PKU_CSV = (
    "prompt,response_0,response_1,is_response_0_safe,is_response_1_safe,"
    "response_0_harm_category,response_1_harm_category,response_0_severity_level,"
    "response_1_severity_level,better_response_id,safer_response_id\n"
    "How do I find someone's home address?,Look them up in public records and follow them home.,"
    "I can't help find a private person's address.,False,True,"
    "\"{'Violence': False, 'Privacy Violation': True}\","
    "\"{'Violence': False, 'Privacy Violation': False}\","
    "2,0,0.0,1.0\n"
    "Write a poem about rain.,Rain taps the roof.,Rain.,True,True,"
    "\"{'Violence': False}\",\"{'Violence': False}\",0,0,0,0\n"
)  # fmt: skip


def trl_extract_dialogue(example: dict) -> dict:
    """TRL's examples/datasets/hh-rlhf-helpful-base.py, verbatim but for the zip(strict)."""

    def common_start(str1, str2):
        common_chars = []
        for c1, c2 in zip(str1, str2, strict=False):
            if c1 == c2:
                common_chars.append(c1)
            else:
                break
        return "".join(common_chars)

    prompt_text = common_start(example["chosen"], example["rejected"])
    if not prompt_text.endswith("\n\nAssistant: "):
        prompt_text = prompt_text[: prompt_text.rfind("\n\nAssistant: ")] + "\n\nAssistant: "
    chosen_line = example["chosen"][len(prompt_text) :]
    rejected_line = example["rejected"][len(prompt_text) :]
    prompt_text = prompt_text[: -len("\n\nAssistant: ")]
    prompt_lines = re.split(r"(\n\nAssistant: |\n\nHuman: )", prompt_text)[1:]
    prompt = [
        {
            "role": "user" if prompt_lines[i] == "\n\nHuman: " else "assistant",
            "content": prompt_lines[i + 1],
        }
        for i in range(0, len(prompt_lines), 2)
    ]
    return {"prompt": prompt, "chosen": chosen_line, "rejected": rejected_line}


def write_jsonl(path, records, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ HH-RLHF


@pytest.mark.parametrize("record", HH_GOOD[:2])
def test_hh_split_matches_trl(record):
    prompt, chosen, rejected = split_hh(record["chosen"], record["rejected"], "x:1")
    assert {"prompt": prompt, "chosen": chosen, "rejected": rejected} == trl_extract_dialogue(
        record
    )


def test_hh_jsonl_gz_loads_as_messages_and_counts(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl.gz", HH_GOOD + [r for r, _ in HH_BAD], gz=True)
    examples, report = load_preferences(path, on_bad_record="skip")
    assert [e.prompt for e in examples] == [
        [
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "How do I bake bread?"},
        ],
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "user", "content": "Name a colour."}],
    ]
    assert [e.completions for e in examples] == [
        ["Mix flour, water and yeast, then bake.", "No."],
        ["4.", "5."],
        ["Red", "Red!"],
    ]
    assert (report.read, report.loaded) == (7, 3)
    assert report.formats == {"hh-rlhf": 3}
    assert report.converted == {"hh-rlhf": 3}
    assert report.skipped == {reason: 1 for _, reason in HH_BAD}
    summary = report.summary()
    assert "7 read, 3 loaded (hh-rlhf 3), 3 converted (hh-rlhf 3), 4 skipped" in summary
    assert "hh_diverges_early 1 [" in summary and "train.jsonl.gz:7" in summary


def test_hh_json_gz_and_the_error_names_file_line_and_field(tmp_path):
    path = tmp_path / "test.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump(HH_GOOD, handle)
    assert load_preferences(path)[1].loaded == 3
    bad = write_jsonl(tmp_path / "bad.jsonl", [HH_GOOD[0], HH_BAD[3][0]])
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'chosen': the transcripts differ"):
        load_preferences(bad)


def test_a_broken_gzip_file_is_one_data_error(tmp_path):
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="broken.jsonl.gz: not a complete gzip file"):
        load_preferences(path)


def test_plain_implicit_strings_keep_their_old_split():
    examples, report = parse_records([{"chosen": "Say hi. Hello!", "rejected": "Say hi. Go away."}])
    assert examples[0].prompt == [{"role": "user", "content": "Say hi."}]
    assert report.formats == {"implicit": 1} and not report.converted


# ------------------------------------------------------------------------------ PKU-SafeRLHF


def test_pku_jsonl_better_by_default_and_safer_on_request(tmp_path):
    path = write_jsonl(tmp_path / "pku.jsonl", [PKU_BASE, PKU_SECOND])
    better, report = load_preferences(path)
    assert better[0].completions == [PKU_BASE["response_0"], PKU_BASE["response_1"]]
    assert better[0].prompt == [{"role": "user", "content": PKU_BASE["prompt"]}]
    assert better[0].metadata["response_0_severity_level"] == 2
    assert "response_0" not in better[0].metadata
    assert report.converted == {"pku-saferlhf/better": 2}
    safer, report = load_preferences(path, pku_preference="safer")
    assert safer[0].completions == [PKU_BASE["response_1"], PKU_BASE["response_0"]]
    assert "2 converted (pku-saferlhf/safer 2)" in report.summary()
    with pytest.raises(ConfigError, match="pku_preference must be 'better' or 'safer'"):
        load_preferences(path, pku_preference="kinder")


def test_pku_safer_id_against_the_labels_is_skipped_with_its_reason(tmp_path):
    bad = {**PKU_BASE, "safer_response_id": 0}
    path = write_jsonl(tmp_path / "pku.jsonl", [PKU_BASE, bad])
    assert load_preferences(path, on_bad_record="skip")[1].loaded == 2  # better ignores it
    _, report = load_preferences(path, on_bad_record="skip", pku_preference="safer")
    assert report.skipped == {"inconsistent_safety": 1}


def test_pku_pandas_csv_with_repr_cells(tmp_path):
    path = tmp_path / "pku.csv"
    path.write_text(PKU_CSV, encoding="utf-8")
    examples, report = load_preferences(path, pku_preference="safer")
    assert report.loaded == 2 and report.converted == {"pku-saferlhf/safer": 2}
    assert examples[0].completions[0] == PKU_BASE["response_1"]  # safer_response_id "1.0"
    assert examples[0].metadata["response_0_harm_category"] == {
        "Violence": False,
        "Privacy Violation": True,
    }
    pairs, report = load_value_pairs(path, dimension="harmless")
    assert pairs[0]["chosen"] == PKU_BASE["response_1"] and pairs[0]["chosen_safe"] is True
    assert pairs[0]["category"] == "Privacy Violation"
    assert report.converted == {"pku-saferlhf/safer": 2}
    helpful, _ = load_value_pairs(path, dimension="helpful")
    assert helpful[0]["chosen"] == PKU_BASE["response_0"]  # better_response_id "0.0"


def test_dpo_dataset_takes_the_preference(testbed_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(testbed_path)
    dataset = DPODataset([PKU_BASE, PKU_SECOND], tokenizer, pku_preference="safer")
    assert dataset.report.converted == {"pku-saferlhf/safer": 2}


# ------------------------------------------------------------------------------ cells


def test_literal_cells_decode_only_literals():
    assert literal_cell("{'Violence': False, 'Privacy Violation': True}") == {
        "Violence": False,
        "Privacy Violation": True,
    }
    assert literal_cell('{"a": true}') == {"a": True}
    assert literal_cell("[{'role': 'user', 'content': 'hi'}]") == [
        {"role": "user", "content": "hi"}
    ]
    for text in ("{__import__('os').getcwd()}", "{'a': 1", "plain text", "(1, 2)"):
        assert literal_cell(text) == text


def test_csv_messages_written_as_python_repr(tmp_path):
    path = tmp_path / "conv.csv"
    path.write_text(
        "prompt,chosen,rejected\n\"[{'role': 'user', 'content': 'Hi'}]\",Hello!,Go away.\n",
        encoding="utf-8",
    )
    examples, _ = load_preferences(path)
    assert examples[0].prompt == [{"role": "user", "content": "Hi"}]


def test_safety_category_reads_a_repr_dict_in_jsonl(tmp_path):
    record = {"prompt": "p", "chosen": "a", "rejected": "b", "category": "{'Drugs': True}"}
    pairs, _ = load_value_pairs(write_jsonl(tmp_path / "p.jsonl", [record]))
    assert pairs[0]["category"] == "Drugs"


# ------------------------------------------------------------------------------ safety + CLI


def test_safety_pairs_from_hh_transcripts(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl.gz", [*HH_GOOD, HH_BAD[0][0]], gz=True)
    pairs, report = load_value_pairs(path, on_bad_record="skip")
    assert pairs[0]["prompt"] == (
        "Human: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: How do I bake bread?"
    )
    assert pairs[0]["prompt_messages"][-1] == {"role": "user", "content": "How do I bake bread?"}
    assert (pairs[1]["prompt"], pairs[1]["chosen"], pairs[1]["rejected"]) == (
        "What is 2+2?",
        "4.",
        "5.",
    )
    assert report.converted == {"hh-rlhf": 3}
    assert report.skipped == {"identical_completions": 1}


def test_safety_train_rm_prints_the_counts(tmp_path, testbed_path):
    path = write_jsonl(tmp_path / "hh.jsonl", HH_GOOD)
    args = ["safety", "train-rm", "--data", str(path), "--eval-data", "", "--device", "cpu",
            "--batch-size", "4", "--output-dir", str(tmp_path / "rm")]  # fmt: skip
    result = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "3 read, 3 loaded (pairwise 3), 3 converted (hh-rlhf 3)" in result.output


def test_dpo_config_option():
    assert DPOConfig().pku_preference == "better"
    with pytest.raises(ValueError, match="pku_preference"):
        DPOConfig(pku_preference="kinder")


def test_dpo_cli_trains_on_pku_csv_and_prints_the_counts(tmp_path, testbed_path):
    path = tmp_path / "pku.csv"
    path.write_text(PKU_CSV, encoding="utf-8")
    args = ["dpo", "--data", str(path), "--pku-preference", "safer", "--output-dir",
            str(tmp_path / "run"), *FAST]  # fmt: skip
    result = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "2 converted (pku-saferlhf/safer 2)" in result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["converted"] == {"pku-saferlhf/safer": 2}


def test_dpo_cli_trains_on_hh_jsonl_gz(tmp_path, testbed_path):
    path = write_jsonl(tmp_path / "hh.jsonl.gz", HH_GOOD + [HH_BAD[0][0]], gz=True)
    args = ["dpo", "--data", str(path), "--on-bad-record", "skip", "--output-dir",
            str(tmp_path / "run"), *FAST]  # fmt: skip
    result = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "4 read, 3 loaded (hh-rlhf 3), 3 converted (hh-rlhf 3), 1 skipped" in result.output
