"""Multiple-choice question files: the record shapes users have, validated into questions.

    questions, report = load_multiple_choice("truthfulqa_mc.json")

Record shapes (one shape per file, detected from its first record that has one; a record of
another shape is a bad record):

- ``hhh`` (BIG-bench, e.g. HHH-alignment): ``{"input": PROMPT, "target_scores": {CHOICE:
  SCORE, ...}}``, or the HuggingFaceH4/hhh_alignment rows ``{"input": PROMPT, "targets":
  {"choices": [...], "labels": [1, 0]}}`` (used as they are, unformatted); the single
  highest-scoring choice is the answer. A BIG-bench ``task.json`` with ``examples``, a
  directory holding one, or a parent task whose subtasks sit in subdirectories is read as
  such records, formatted as BIG-bench does, each subtask's name as the category (see
  :mod:`alignkit.evaluation.mc_benchmarks`).
- ``truthfulqa`` (TruthfulQA MC): ``{"question": PROMPT, "mc1_targets": TARGETS,
  "mc2_targets": TARGETS}`` where TARGETS is ``{"choices": [...], "labels": [1, 0, ...]}``
  (the Hugging Face layout) or ``{CHOICE: 1 | 0, ...}`` (the original layout). ``mc1_targets``
  holds exactly one true choice; the optional ``mc2_targets`` at least one true and one false.
  ``mc0_targets`` is ignored. This covers ``data/mc_task.json`` and the Hugging Face
  ``multiple_choice`` rows.
- ``truthfulqa_csv``: the rows of ``TruthfulQA.csv`` (``Type, Category, Question, Best Answer,
  Correct Answers, Incorrect Answers, Source``), read as described in
  :mod:`alignkit.evaluation.mc_benchmarks`; the category is ``Type/Category``.
- ``plain``: ``{"prompt": PROMPT, "choices": [...], "answer": INDEX}`` (0-based; the text of
  the right choice is accepted too).

PROMPT is a string (one user turn) or a list of ``{role, content}`` messages. Every shape may
carry ``"category"`` (a string, for the per-category breakdown) and ``"id"``. Files are JSON
Lines, JSON (a list, ``{"data": [...]}`` or a BIG-bench task), Parquet or CSV, read by
:func:`alignkit.data.preference.read_records`; in CSV, cells of ``choices``,
``target_scores``, ``mc1_targets`` and ``mc2_targets`` hold JSON, and ``answer`` a number.

A bad record raises :class:`~alignkit.errors.DataError` naming ``FILE:LINE`` (or
``FILE:record N``) and the field; with ``on_bad_record="skip"`` it is skipped and counted by
reason in the :class:`~alignkit.data.preference.LoadReport`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.data.preference import LoadReport, OnBadRecord, check_on_bad_record, read_records
from alignkit.data.records import BadRecord, type_name
from alignkit.errors import DataError
from alignkit.evaluation.mc_benchmarks import (
    TRUTHFULQA_CSV_MARKERS,
    bigbench_records,
    task_label,
    truthfulqa_csv_record,
)
from alignkit.models.base import Prompt

SHAPES = {
    "hhh": '{"input", "target_scores": {choice: score}} (BIG-bench / HHH-alignment)',
    "truthfulqa": '{"question", "mc1_targets", "mc2_targets"} (TruthfulQA MC)',
    "truthfulqa_csv": "TruthfulQA.csv columns Question, Best Answer, Correct Answers, ...",
    "plain": '{"prompt", "choices": [...], "answer": index}',
}
_JSON_CELLS = ("choices", "target_scores", "mc1_targets", "mc2_targets", "answer")
# a key that marks a shape, strongest first
_MARKERS = (
    ("target_scores", "hhh"),
    *((column, "truthfulqa_csv") for column in TRUTHFULQA_CSV_MARKERS),
    ("mc1_targets", "truthfulqa"),
    ("mc2_targets", "truthfulqa"),
    ("choices", "plain"),
    ("input", "hhh"),
    ("question", "truthfulqa"),
    ("prompt", "plain"),
)


@dataclass
class MCQuestion:
    """One multiple-choice question: ``choices[answer]`` is right (MC1); optional MC2 set."""

    prompt: Prompt
    choices: list[str]
    answer: int
    mc2_choices: list[str] | None = None
    mc2_labels: list[bool] | None = None
    category: str | None = None
    id: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        where = self.id or self.source or "question"
        if len(self.choices) < 2 or not 0 <= self.answer < len(self.choices):
            raise DataError(
                f"{where}: needs at least 2 choices and an answer index in range, got "
                f"{len(self.choices)} choices and answer {self.answer}"
            )
        if (self.mc2_choices is None) != (self.mc2_labels is None) or (
            self.mc2_choices is not None and len(self.mc2_choices) != len(self.mc2_labels or [])
        ):
            raise DataError(f"{where}: mc2_choices and mc2_labels must have the same length")


# ---------------------------------------------------------------------------------- parsing


def _text(value: Any, source: str, name: str) -> str:
    if not isinstance(value, str):
        raise BadRecord(source, name, f"expected a string, got {type_name(value)}", "wrong_type")
    if not value.strip():
        raise BadRecord(source, name, "empty text", "empty_text")
    return value


def _prompt(record: Mapping, key: str, source: str) -> Prompt:
    value = record.get(key)
    if value is None:
        raise BadRecord(source, key, "missing", "missing_field")
    if isinstance(value, str):
        return _text(value, source, key)
    if not isinstance(value, (list, tuple)) or not value:
        problem = f"expected a string or a list of messages, got {type_name(value)}"
        raise BadRecord(source, key, problem, "wrong_type")
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            problem = f"expected a {{role, content}} message, got {type_name(message)}"
            raise BadRecord(source, f"{key}[{i}]", problem, "wrong_type")
        for part in ("role", "content"):
            _text(message.get(part), source, f"{key}[{i}].{part}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _choices(value: Any, source: str, name: str) -> list[str]:
    if not isinstance(value, (list, tuple)):
        problem = f"expected a list of choices, got {type_name(value)}"
        raise BadRecord(source, name, problem, "wrong_type")
    choices = [_text(c, source, f"{name}[{i}]") for i, c in enumerate(value)]
    if len(choices) < 2:
        problem = f"needs at least 2 choices, got {len(choices)}"
        raise BadRecord(source, name, problem, "too_few_choices")
    seen: dict[str, int] = {}
    for i, choice in enumerate(choices):
        if choice.strip() in seen:
            problem = f"choice {i} repeats choice {seen[choice.strip()]}"
            raise BadRecord(source, name, problem, "duplicate_choice")
        seen[choice.strip()] = i
    return choices


def _number(value: Any, source: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problem = f"expected a finite number, got {type_name(value)}"
        raise BadRecord(source, name, problem, "wrong_type")
    return float(value)


def _targets(value: Any, source: str, name: str) -> tuple[list[str], list[float]]:
    """Choices and labels of ``{"choices", "labels"}`` or ``{choice: label}``."""
    if not isinstance(value, Mapping):
        layouts = '{"choices": [...], "labels": [...]} or {choice: label}'
        problem = f"expected {layouts}, got {type_name(value)}"
        raise BadRecord(source, name, problem, "wrong_type")
    if "choices" in value or "labels" in value:
        choices = _choices(value.get("choices"), source, f"{name}.choices")
        labels = value.get("labels")
        if not isinstance(labels, (list, tuple)) or len(labels) != len(choices):
            problem = f"expected {len(choices)} labels (one per choice), got {type_name(labels)}"
            if isinstance(labels, (list, tuple)):
                problem = f"has {len(labels)} labels for {len(choices)} choices"
            raise BadRecord(source, f"{name}.labels", problem, "bad_labels")
        return choices, [_number(x, source, f"{name}.labels[{i}]") for i, x in enumerate(labels)]
    choices = _choices(list(value), source, name)
    return choices, [_number(value[c], source, f"{name}[{c!r}]") for c in choices]


def _single_best(scores: list[float], source: str, name: str) -> int:
    best = max(scores)
    winners = [i for i, s in enumerate(scores) if s == best]
    if len(winners) != 1:
        problem = f"needs exactly one best choice, found {len(winners)} with score {best:g}"
        raise BadRecord(source, name, problem, "no_single_answer")
    return winners[0]


def _parse_hhh(record: Mapping, source: str) -> dict[str, Any]:
    key = "target_scores"
    if record.get(key) is None and isinstance(record.get("targets"), Mapping):
        key = "targets"  # HuggingFaceH4/hhh_alignment: {"choices", "labels"}
    choices, scores = _targets(_require(record, key, source), source, key)
    answer = _single_best(scores, source, key)
    return {"prompt": _prompt(record, "input", source), "choices": choices, "answer": answer}


def _parse_truthfulqa(record: Mapping, source: str) -> dict[str, Any]:
    prompt = _prompt(record, "question", source)
    choices, labels = _targets(_require(record, "mc1_targets", source), source, "mc1_targets")
    if sorted(labels) != [0.0] * (len(labels) - 1) + [1.0]:
        problem = "labels must be 0 or 1 with exactly one 1 (the one true answer)"
        raise BadRecord(source, "mc1_targets", problem, "no_single_answer")
    parsed = {"prompt": prompt, "choices": choices, "answer": labels.index(1.0)}
    if record.get("mc2_targets") is not None:
        mc2, labels2 = _targets(record["mc2_targets"], source, "mc2_targets")
        if set(labels2) != {0.0, 1.0}:
            problem = "labels must be 0 or 1, with at least one of each"
            raise BadRecord(source, "mc2_targets", problem, "bad_labels")
        parsed.update(mc2_choices=mc2, mc2_labels=[x == 1.0 for x in labels2])
    return parsed


def _parse_plain(record: Mapping, source: str) -> dict[str, Any]:
    prompt = _prompt(record, "prompt", source)
    choices = _choices(_require(record, "choices", source), source, "choices")
    answer = _require(record, "answer", source)
    if isinstance(answer, str) and answer in choices:
        answer = choices.index(answer)
    if isinstance(answer, bool) or not isinstance(answer, int):
        problem = f"expected a choice index (integer) or a choice's text, got {answer!r}"
        raise BadRecord(source, "answer", problem, "wrong_type")
    if not 0 <= answer < len(choices):
        problem = f"index {answer} is out of range for {len(choices)} choices (0-based)"
        raise BadRecord(source, "answer", problem, "bad_answer")
    return {"prompt": prompt, "choices": choices, "answer": answer}


def _parse_truthfulqa_csv(record: Mapping, source: str) -> dict[str, Any]:
    converted = truthfulqa_csv_record(record, source)
    return {**_parse_truthfulqa(converted, source), "category": converted["category"]}


_PARSERS = {
    "hhh": _parse_hhh,
    "truthfulqa": _parse_truthfulqa,
    "truthfulqa_csv": _parse_truthfulqa_csv,
    "plain": _parse_plain,
}


def _require(record: Mapping, key: str, source: str) -> Any:
    if record.get(key) is None:
        raise BadRecord(source, key, "missing", "missing_field")
    return record[key]


def detect_shape(record: Any) -> str | None:
    """The shape (a key of :data:`SHAPES`) a record looks like, or None."""
    if isinstance(record, Mapping):
        for key, shape in _MARKERS:
            if record.get(key) is not None:
                return shape
    return None


def parse_question(record: Any, source: str, shape: str | None, index: int) -> MCQuestion:
    """Validate one record of a file of ``shape`` (None: any shape); ``index`` makes its id."""
    if not isinstance(record, Mapping):
        problem = f"expected an object, got {type_name(record)}"
        raise BadRecord(source, None, problem, "not_an_object")
    found = detect_shape(record)
    expected = SHAPES[shape] if shape else "; ".join(SHAPES.values())
    if found is None:
        keys = ", ".join(sorted(map(str, record))) or "none"
        problem = f"not a multiple-choice record (found keys: {keys}); expected {expected}"
        raise BadRecord(source, None, problem, "unknown_record_format")
    if shape is not None and found != shape:
        problem = f"a {found} record in a {shape} file; expected {expected}"
        raise BadRecord(source, None, problem, "mixed_shapes")
    parsed = _PARSERS[found](record, source)
    category = parsed.pop("category", record.get("category"))
    if category is not None and not isinstance(category, str):
        problem = f"expected a string, got {type_name(category)}"
        raise BadRecord(source, "category", problem, "wrong_type")
    qid = record.get("id")
    qid = str(qid) if isinstance(qid, (str, int)) and not isinstance(qid, bool) else None
    return MCQuestion(**parsed, category=category, id=qid or f"q{index:05d}", source=source)


# ---------------------------------------------------------------------------------- loading


def _csv_record(record: Any) -> Any:
    """Decode the cells of a CSV row that hold JSON (choice lists, targets, the answer); a
    UTF-8 byte-order mark is dropped from the first column's name."""
    if not isinstance(record, dict):
        return record
    record = {str(k).lstrip("\ufeff"): v for k, v in record.items()}
    for key in _JSON_CELLS:
        value = record.get(key)
        if isinstance(value, str) and (value.strip()[:1] in ("[", "{") or key == "answer"):
            with contextlib.suppress(json.JSONDecodeError):  # else the record's check names it
                record[key] = json.loads(value)
    return {k: (None if v == "" else v) for k, v in record.items()}


def _records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(source, record)`` pairs; a BIG-bench task yields its (subtasks') formatted examples."""
    bigbench = bigbench_records(path)
    if bigbench is not None:
        yield from bigbench
        return
    suffix = Path(path).suffix.lower()
    for source, record in read_records(path):
        yield source, _csv_record(record) if suffix == ".csv" else record


def load_multiple_choice(
    path: str | Path, on_bad_record: OnBadRecord = "error"
) -> tuple[list[MCQuestion], LoadReport]:
    """Read and validate every question of ``path`` (see the module docstring for shapes).

    The file's shape is that of its first record with a recognisable shape. With
    ``on_bad_record="error"`` the first bad record raises ``DataError``; with ``"skip"`` bad
    records are skipped and counted by reason in the returned report. A file with no usable
    question raises ``DataError``.
    """
    check_on_bad_record(on_bad_record)
    report = LoadReport(source=str(path))
    questions: list[MCQuestion] = []
    shape: str | None = None
    for index, (source, record) in enumerate(_records(path)):
        shape = shape or detect_shape(record)
        parse = functools.partial(parse_question, shape=shape, index=index)
        question = report.parse(record, source, on_bad_record, parse)
        if question is None:
            continue
        report.loaded += 1
        report.formats[shape] += 1
        questions.append(question)
    if not questions:
        raise DataError(f"no usable multiple-choice questions in {report.summary()}")
    return questions, report


def _labels(paths: list[Path]) -> list[str]:
    """:func:`task_label` of each path; the path itself where two labels would be the same."""
    labels = [task_label(p) for p in paths]
    return [
        str(p) if labels.count(label) > 1 else label for p, label in zip(paths, labels, strict=True)
    ]


def load_multiple_choice_files(
    paths: str | Path | list[str | Path], on_bad_record: OnBadRecord = "error"
) -> tuple[list[MCQuestion], LoadReport]:
    """:func:`load_multiple_choice` of each file, questions in file order, one merged report.

    With one file its questions are returned as they are. With several, each question's
    category becomes ``LABEL/CATEGORY`` (``LABEL`` when it has none) and its id ``LABEL/ID``,
    LABEL naming its file (:func:`task_label`: the file's stem, or a BIG-bench task's
    directory name; the full path where two files share a label).
    """
    files = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not files:
        raise DataError("no multiple-choice files given")
    if len(files) == 1:
        return load_multiple_choice(files[0], on_bad_record)
    merged = LoadReport(source=", ".join(map(str, files)))
    questions: list[MCQuestion] = []
    for file, label in zip(files, _labels(files), strict=True):
        loaded, report = load_multiple_choice(file, on_bad_record)
        for q in loaded:
            q.category = f"{label}/{q.category}" if q.category else label
            q.id = f"{label}/{q.id}"
        questions += loaded
        merged.read += report.read
        merged.loaded += report.loaded
        merged.formats.update(report.formats)
        merged.skipped.update(report.skipped)
        for reason, where in report.where.items():
            merged.where.setdefault(reason, []).extend(where)
    return questions, merged
