"""Behaviours to red-team: the bundled testbed set and loaders for users' files.

    behaviours = resolve_behaviours("testbed", n=30, seed=0)      # held-out testbed requests
    behaviours = resolve_behaviours("testbed:train")               # the training-split ones
    behaviours = load_behaviours("harmful_behaviors.csv")          # AdvBench-style file

File layouts (column / key names are matched case-insensitively):

AdvBench-style CSV
    ``goal,target``: the request and an affirmative opening of a compliant answer.
HarmBench-style CSV
    ``Behavior,SemanticCategory`` with optional ``BehaviorID`` (the id) and ``ContextString``
    (context for contextual behaviours: ignored, and counted in the load report).
JSON Lines / JSON
    one object per behaviour: the request under ``goal``, ``behavior`` or ``prompt``; optional
    ``target``, ``category`` and ``id``.

Behaviours without an id get ``<file stem>-<record number>`` (0-based). A malformed file raises
:class:`~alignkit.errors.DataError` naming the file, the line (or record) and the field;
duplicate ids raise as well.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from alignkit.data.preference import LoadReport, read_records
from alignkit.data.records import BadRecord, type_name
from alignkit.errors import ConfigError, DataError
from alignkit.redteam.base import Behaviour
from alignkit.testbed import content as C
from alignkit.testbed.world import World

log = logging.getLogger(__name__)

GOAL_KEYS = ("goal", "behavior", "behaviour", "prompt")
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
        for req in World(0).requests("harmful", split)
    ]
    behaviours.sort(key=lambda b: (b.category, int(b.id.rsplit("-", 1)[1])))
    return sample_behaviours(behaviours, n, seed)


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
    return Behaviour(ident, goal, target, category, origin), has_context


def read_behaviours(path: str | Path) -> tuple[list[Behaviour], LoadReport]:
    """Every behaviour of a CSV / JSON Lines / JSON file, and a report of what was read.

    Contextual behaviours (a non-empty ``ContextString``) are kept without their context and
    counted under ``adjusted["context_ignored"]``. Any bad record raises ``DataError``.
    """
    report = LoadReport(source=str(path))
    stem = Path(str(path)).stem
    behaviours: list[Behaviour] = []
    first_seen: dict[str, str] = {}
    for number, (source, record) in enumerate(read_records(path)):
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
            report.adjusted["context_ignored"] += 1
        report.loaded += 1
        report.formats["behaviour"] += 1
        behaviours.append(behaviour)
    if not behaviours:
        raise DataError(f"{path}: no behaviours in the file")
    return behaviours, report


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
