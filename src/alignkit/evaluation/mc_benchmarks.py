"""Published multiple-choice benchmark layouts, turned into the records of
:mod:`alignkit.evaluation.multiple_choice_data`.

**BIG-bench** task directories (e.g. ``hhh_alignment``). :func:`bigbench_records` reads a
``task.json`` (or a directory holding one). A task with an ``examples`` list yields those
examples. A parent task without ``examples`` yields the examples of every subdirectory holding
a ``task.json`` (sorted by name, as BIG-bench's loader walks them), each with ``category`` set
to the subtask's name: its ``name`` field after the last ``:`` (names like ``parent:sub``), or
the directory name when there is none. Nested subtasks are not read.

Every example's ``input`` is rewritten as BIG-bench's ``default_format_fn`` formats it for
zero-shot scoring, with the keys of the task file that holds the example (or these defaults)::

    task_prefix + example_input_prefix + input
        [+ choice_prefix + choice_prefix.join(choices in BIG-bench's order)]
        + example_output_prefix

``task_prefix`` "" ; ``example_input_prefix`` "\\nQ: " ; ``example_output_prefix`` "\\nA: " ;
``choice_prefix`` "\\n  choice: " ; ``append_choices_to_input`` true. BIG-bench's order is
``numpy.random.RandomState(42).permutation(sorted(choices))`` with the generator seeded again
for every example, reproduced exactly here (two sorted choices come out swapped, three stay in
order). The defaults apply to every task file, also one without formatting keys. Few-shot
keys (``few_shot_example_separator``) and ``output_regex`` / ``stop_string`` are not used:
each choice is scored zero-shot as the reply to the formatted prompt.

**TruthfulQA.csv** rows (7 columns, or 8 with ``Best Incorrect Answer``, which is not used):
:func:`truthfulqa_csv_record` turns one into the TruthfulQA MC record, as TruthfulQA's own
``split_multi_answer`` / ``format_best`` read the cells: answers split on ``;``, stripped,
empty parts dropped, a final ``.`` added where missing. MC1 is ``Best Answer`` against the
``Incorrect Answers``; MC2 the ``Correct Answers`` (with ``Best Answer`` first) against the
``Incorrect Answers``; the category is ``Type/Category`` (e.g. ``Adversarial/Misconceptions``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from alignkit.data.records import BadRecord, type_name
from alignkit.errors import DataError

BIGBENCH_FORMAT: dict[str, Any] = {
    "task_prefix": "",
    "example_input_prefix": "\nQ: ",
    "example_output_prefix": "\nA: ",
    "choice_prefix": "\n  choice: ",
    "append_choices_to_input": True,
}
BIGBENCH_SEED = 42
TRUTHFULQA_CSV_MARKERS = ("Best Answer", "Correct Answers", "Incorrect Answers")

# ---------------------------------------------------------------------------------- BIG-bench


def bigbench_order(n: int, seed: int = BIGBENCH_SEED) -> list[int]:
    """Indices into the sorted choices in BIG-bench's order: ``RandomState(seed).permutation``."""
    import numpy as np

    return [int(i) for i in np.random.RandomState(seed).permutation(n)]


def bigbench_prompt(text: str, choices: list[str], fmt: Mapping[str, Any]) -> str:
    """``text`` formatted as ``default_format_fn`` does (see the module docstring)."""
    body = text
    if fmt["append_choices_to_input"]:
        ordered = sorted(choices)
        prefix = fmt["choice_prefix"]
        body += prefix + prefix.join(ordered[i] for i in bigbench_order(len(ordered)))
    return fmt["task_prefix"] + fmt["example_input_prefix"] + body + fmt["example_output_prefix"]


def bigbench_format(task: Mapping[str, Any], file: Path) -> dict[str, Any]:
    """The formatting keys of ``task`` over the defaults; a key of the wrong type raises."""
    fmt = dict(BIGBENCH_FORMAT)
    for key, default in BIGBENCH_FORMAT.items():
        value = task.get(key, default)
        if type(value) is not type(default):
            expected = type_name(default)
            problem = f"expected a {expected}, got {type_name(value)}"
            raise BadRecord(str(file), key, problem, "bad_task_format")
        fmt[key] = value
    return fmt


def format_example(record: Any, fmt: Mapping[str, Any]) -> Any:
    """``record`` with its ``input`` formatted; records the parser will reject pass as they are."""
    if not isinstance(record, Mapping):
        return record
    text, scores = record.get("input"), record.get("target_scores")
    if not isinstance(text, str) or not text.strip() or not isinstance(scores, Mapping):
        return record
    return {**record, "input": bigbench_prompt(text, [str(c) for c in scores], fmt)}


def _read_task(file: Path) -> Any:
    """The parsed JSON of ``file``; unreadable or invalid JSON raises DataError naming it."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot read the task file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}: invalid JSON ({exc.msg}, line {exc.lineno})") from None


def _subtask_name(task: Mapping[str, Any], file: Path) -> str:
    name = task.get("name")
    if isinstance(name, str) and name.split(":")[-1].strip():
        return name.split(":")[-1].strip()
    return file.parent.name


def _examples(file: Path, task: Any, category: str | None) -> Iterator[tuple[str, Any]]:
    """``(FILE:examples[i], formatted example)`` of one task with an ``examples`` list."""
    if not isinstance(task, Mapping) or not isinstance(task.get("examples"), list):
        got = type_name(task.get("examples") if isinstance(task, Mapping) else task)
        problem = (
            f"expected a task with a list of examples, got {got} (nested subtasks are not read)"
        )
        raise BadRecord(str(file), "examples", problem, "bad_task")
    fmt = bigbench_format(task, file)
    for i, record in enumerate(task["examples"]):
        formatted = format_example(record, fmt)
        if category is not None and isinstance(formatted, Mapping):
            formatted = {**formatted, "category": category}
        yield f"{file}:examples[{i}]", formatted


def subtask_files(directory: Path) -> list[Path]:
    """``SUBDIR/task.json`` of every subdirectory of ``directory`` that has one, sorted."""
    return sorted(p / "task.json" for p in directory.iterdir() if (p / "task.json").is_file())


def task_file(path: Path) -> Path | None:
    """The ``task.json`` that ``path`` names (the file, or one in the directory), or None."""
    file = path / "task.json" if path.is_dir() else path
    return file if file.suffix.lower() == ".json" and file.is_file() else None


def bigbench_records(path: str | Path) -> Iterator[tuple[str, Any]] | None:
    """The formatted examples of the BIG-bench task at ``path``, or None when ``path`` is not
    one (then it is read as an ordinary record file). See the module docstring."""
    file = task_file(Path(path).expanduser())
    if file is None:
        return None
    try:
        task = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None  # the record reader reports what is wrong
    if not isinstance(task, dict):
        return None
    if isinstance(task.get("examples"), list):
        return _examples(file, task, None)
    subtasks = subtask_files(file.parent) if "examples" not in task else []
    if not subtasks:
        return None
    return _subtask_examples(subtasks)


def _subtask_examples(files: list[Path]) -> Iterator[tuple[str, Any]]:
    """The formatted examples of each subtask file, its name as their ``category``."""
    for file in files:
        task = _read_task(file)
        name = _subtask_name(task, file) if isinstance(task, Mapping) else file.parent.name
        yield from _examples(file, task, name)


def task_label(path: str | Path) -> str:
    """A short name for a question file: a BIG-bench task's directory name, else the stem."""
    file = Path(path).expanduser()
    if file.is_dir() or file.name == "task.json":
        return (file if file.is_dir() else file.parent).resolve().name
    return file.stem


# ---------------------------------------------------------------------------------- TruthfulQA


def close_answer(answer: str) -> str:
    """``answer`` stripped, with a final ``.`` added when missing (TruthfulQA's ``format_best``)."""
    answer = answer.strip()
    return answer if not answer or answer.endswith(".") else answer + "."


def split_answers(cell: str) -> list[str]:
    """A ``;``-separated cell as TruthfulQA's ``split_multi_answer`` reads it, repeats removed."""
    return list(dict.fromkeys(close_answer(a) for a in cell.split(";") if a.strip()))


def _cell(row: Mapping[str, Any], column: str, source: str) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        problem = "missing" if value in (None, "") else f"expected text, got {type_name(value)}"
        raise BadRecord(source, column, problem, "missing_field")
    return value


def truthfulqa_csv_record(row: Mapping[str, Any], source: str) -> dict[str, Any]:
    """One ``TruthfulQA.csv`` row as a TruthfulQA MC record (see the module docstring)."""
    question = _cell(row, "Question", source)
    best = close_answer(_cell(row, "Best Answer", source))
    true = list(dict.fromkeys([best, *split_answers(row.get("Correct Answers") or "")]))
    false = split_answers(_cell(row, "Incorrect Answers", source))
    both = [a for a in false if a in true]
    if both:
        problem = f"answer {both[0]!r} is also a correct answer"
        raise BadRecord(source, "Incorrect Answers", problem, "bad_labels")
    kind = [str(row[k]).strip() for k in ("Type", "Category") if str(row.get(k) or "").strip()]
    return {
        "question": question,
        "mc1_targets": {"choices": [best, *false], "labels": [1] + [0] * len(false)},
        "mc2_targets": {"choices": [*true, *false], "labels": [1] * len(true) + [0] * len(false)},
        "category": "/".join(kind) or None,
    }
