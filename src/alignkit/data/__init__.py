"""Preference data: load and validate files, tokenize with the chat template, report counts.

from alignkit.data import load_preferences, DPODataset

examples, report = load_preferences("prefs.jsonl", on_bad_record="skip")
dataset = DPODataset(examples, tokenizer, max_length=1024, report=report)
dataset = DPODataset.from_file("prefs.jsonl", tokenizer)   # the same in one call
print(dataset.report.summary())
"""

from alignkit.data.preference import (
    FILE_TYPES,
    LoadReport,
    OnBadRecord,
    load_preferences,
    parse_records,
    read_records,
)
from alignkit.data.records import RECORD_LAYOUTS, BadRecord, PreferenceExample, parse_record
from alignkit.data.tokenize import ChatEncoder, DPODataset, TokenizedExample, truncate

__all__ = [
    "FILE_TYPES",
    "RECORD_LAYOUTS",
    "BadRecord",
    "ChatEncoder",
    "DPODataset",
    "LoadReport",
    "OnBadRecord",
    "PreferenceExample",
    "TokenizedExample",
    "load_preferences",
    "parse_record",
    "parse_records",
    "read_records",
    "truncate",
]
