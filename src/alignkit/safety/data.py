"""Value-learning data in the shapes users have, plus ground-truth testbed data.

    pairs, report = load_value_pairs("pku.jsonl", dimension="harmless")   # layout detected
    responses, report = load_labelled_responses("beavertails.parquet", on_bad_record="skip")
    pairs, unpaired = pairs_from_labelled(responses)

Files are read by :func:`alignkit.data.read_records` (JSON Lines, JSON, CSV, Parquet, a
``datasets`` directory) and counted in a :class:`~alignkit.data.LoadReport`: with
``on_bad_record="error"`` the first bad record raises :class:`~alignkit.errors.DataError`
naming file, line / row and field; with ``"skip"`` bad records are counted by reason.

Record layouts for :func:`load_value_pairs` (:data:`LAYOUTS`):

- ``pairwise``: ``prompt``, ``chosen``, ``rejected`` (strings) and optional ``category``,
  ``chosen_safe``, ``rejected_safe`` and ``dimension`` (which must equal the one asked for);
  or, with no ``prompt``, Anthropic HH-RLHF transcripts in ``chosen`` / ``rejected``, split
  by :func:`alignkit.data.formats.split_hh` (the DPO loader's split): the record keeps the
  prompt turns in ``prompt_messages`` and, as ``prompt``, the one user turn or the earlier
  turns written ``"Human: ...\n\nAssistant: ..."`` (:func:`~alignkit.data.formats.transcript_text`);
- ``pku-saferlhf``: ``prompt``, ``response_0``, ``response_1``, ``is_response_0_safe``,
  ``is_response_1_safe``, ``better_response_id``, ``safer_response_id`` and optional
  ``category`` or ``response_0_harm_category`` / ``response_1_harm_category``. Pairs are ordered
  by ``safer_response_id`` for the ``harmless`` dimension, by ``better_response_id`` otherwise.

Booleans may be written ``"true"`` / ``"false"``, ids ``"0"`` / ``"1"`` / ``"1.0"`` (as CSV
cells are), and a category dict as JSON or a Python repr (``{'Violence': True}``, pandas).
Split HH transcripts and mapped PKU records are counted in ``LoadReport.converted``.
Output records follow the value-record and labelled-response schemas of the safety package.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from alignkit.data.formats import (
    flag_value,
    is_hh_transcript,
    literal_cell,
    pku_pair,
    response_id,
    split_hh,
    transcript_text,
)
from alignkit.data.preference import LoadReport, OnBadRecord, check_on_bad_record, read_records
from alignkit.data.records import BadRecord, type_name
from alignkit.errors import ConfigError, DataError
from alignkit.testbed import content as C
from alignkit.testbed.labeller import label
from alignkit.testbed.preferences import allocate, preference_pairs
from alignkit.testbed.splits import model_world
from alignkit.testbed.world import Request, World, wrap

DIMENSIONS = ("helpful", "harmless", "honest")
LAYOUTS = {
    "pairwise": "prompt, chosen, rejected [, category, chosen_safe, rejected_safe]; or "
    "chosen, rejected as HH-RLHF transcripts",
    "pku-saferlhf": (
        "prompt, response_0, response_1, is_response_0_safe, is_response_1_safe, "
        "better_response_id, safer_response_id"
    ),
}
_TESTBED_MIX: dict[str, dict[str, float]] = {
    # value dimension -> mix of testbed preference pair types (see alignkit.testbed.preferences)
    "helpful": {"benign": 0.6, "benign_wrong": 0.4},
    "harmless": {"harmful": 0.6, "jailbreak": 0.4},
    "honest": {"unanswerable": 1.0},
}
_SPLITS = ("train", "heldout")

# ------------------------------------------------------------------------------ field checks


def _text(record: Mapping, key: str, source: str) -> str:
    """A required non-empty string field."""
    value = record.get(key)
    if value is None:
        raise BadRecord(source, key, "missing", "missing_field")
    if not isinstance(value, str):
        raise BadRecord(source, key, f"expected a string, got {type_name(value)}", "wrong_type")
    if not value.strip():
        raise BadRecord(source, key, "empty string", "empty_text")
    return value


_flag = flag_value  # shared with the DPO loader (alignkit.data.formats)
_response_id = response_id


def _category(value: Any, source: str, key: str) -> str | None:
    """A category: a string, or a ``{name: bool}`` dict (its first true name), or None.

    A string starting with ``{`` is a dict written into a cell: JSON, or else a Python repr
    (pandas CSV export) read by :func:`~alignkit.data.formats.literal_cell`."""
    if isinstance(value, str) and value.strip().startswith("{"):
        value = literal_cell(value)
        if not isinstance(value, Mapping):
            problem = "malformed JSON object (nor a Python dict literal)"
            raise BadRecord(source, key, problem, "wrong_type")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return next((str(name) for name, on in value.items() if on is True), None)
    problem = f"expected a string or an object of name -> boolean, got {type_name(value)}"
    raise BadRecord(source, key, problem, "wrong_type")


def _check_safety(chosen_safe: bool | None, rejected_safe: bool | None, source: str) -> None:
    """Harmless pairs cannot prefer an unsafe response to a safe one."""
    if chosen_safe is False and rejected_safe is True:
        problem = "marks the chosen response unsafe and the rejected one safe"
        raise BadRecord(source, "chosen_safe", problem, "inconsistent_safety")


def _value_record(prompt: str, chosen: str, rejected: str, dimension: str, **fields: Any) -> dict:
    if chosen.strip() == rejected.strip():
        raise BadRecord(fields["source"], "rejected", "identical to 'chosen'", "identical_texts")
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "dimension": dimension,
        **fields,
    }


# ------------------------------------------------------------------------------ layouts


def _hh_texts(record: Mapping, source: str) -> tuple[str, str, str, dict[str, Any]]:
    """Prompt, chosen and rejected of a pairwise record; an HH-RLHF record (no ``prompt``) is
    split, and its prompt turns come back as ``{"prompt_messages": [...]}``."""
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if record.get("prompt") is None and is_hh_transcript(chosen, rejected):
        messages, good, bad = split_hh(chosen, rejected, source)
        return transcript_text(messages), good, bad, {"prompt_messages": messages}
    prompt, chosen, rejected = (_text(record, k, source) for k in ("prompt", "chosen", "rejected"))
    return prompt, chosen, rejected, {}


def _pairwise(record: Mapping, source: str, dimension: str) -> tuple[dict, str | None]:
    prompt, chosen, rejected, extra = _hh_texts(record, source)
    given = record.get("dimension")
    if given not in (None, "") and given != dimension:
        problem = f"is {given!r} but {dimension!r} pairs were asked for"
        raise BadRecord(source, "dimension", problem, "dimension_mismatch")
    chosen_safe = _flag(record, "chosen_safe", source, required=False)
    rejected_safe = _flag(record, "rejected_safe", source, required=False)
    if dimension == "harmless":
        _check_safety(chosen_safe, rejected_safe, source)
    value = _value_record(
        prompt,
        chosen,
        rejected,
        dimension,
        category=_category(record.get("category"), source, "category"),
        chosen_safe=chosen_safe,
        rejected_safe=rejected_safe,
        source=source,
        **extra,
    )
    return value, ("hh-rlhf" if extra else None)


def _pku(record: Mapping, source: str, dimension: str) -> tuple[dict, str | None]:
    """A PKU-SafeRLHF record ordered by ``safer_response_id`` for ``harmless``, else by
    ``better_response_id`` (:func:`alignkit.data.formats.pku_pair`, the DPO loader's mapping);
    both ids and both safety labels are required."""
    prompt = _text(record, "prompt", source)
    for k in (0, 1):
        _text(record, f"response_{k}", source)
        _flag(record, f"is_response_{k}_safe", source)
    _response_id(record, "better_response_id", source)
    pku_pair(record, source, "safer")  # the safer id must agree with the safety labels
    preference = "safer" if dimension == "harmless" else "better"
    pair = pku_pair(record, source, preference)
    good = pair["good"]
    category = _category(record.get("category"), source, "category")
    for k in (1 - good, good):  # the rejected response's harm names the pair first
        key = f"response_{k}_harm_category"
        category = category or _category(record.get(key), source, key)
    value = _value_record(
        prompt,
        pair["chosen"],
        pair["rejected"],
        dimension,
        category=category,
        chosen_safe=pair["chosen_safe"],
        rejected_safe=pair["rejected_safe"],
        source=source,
    )
    return value, f"pku-saferlhf/{preference}"


_PARSERS: dict[str, Callable[[Mapping, str, str], tuple[dict, str | None]]] = {
    "pairwise": _pairwise,
    "pku-saferlhf": _pku,
}


def detect_layout(record: Any, where: str) -> str:
    """The layout of ``record`` from its keys; ``DataError`` listing the accepted ones if none."""
    keys = set(record) if isinstance(record, Mapping) else set()
    if {"response_0", "response_1"} <= keys:
        return "pku-saferlhf"
    if {"prompt", "chosen", "rejected"} <= keys or {"chosen", "rejected"} <= keys:
        return "pairwise"
    found = ", ".join(sorted(map(str, keys))) or type_name(record)
    accepted = "; ".join(f"{name} ({fields})" for name, fields in LAYOUTS.items())
    raise DataError(f"{where}: unknown record layout (found: {found}); accepted: {accepted}")


def _load(
    items: Iterable[tuple[str, Any]],
    report: LoadReport,
    on_bad_record: OnBadRecord,
    parse: Callable[[Any, str], tuple[dict, str | None]],
    layout: str,
) -> list[dict]:
    """Parse every record, counting it in ``report``; ``parse`` returns the record and its
    ``LoadReport.converted`` key (None when it was not converted)."""
    out = []
    for source, record in items:
        if not isinstance(record, (Mapping, BadRecord)):
            record = BadRecord(
                source, None, f"expected an object, got {type_name(record)}", "not_an_object"
            )
        parsed = report.parse(record, source, on_bad_record, parse)
        if parsed is not None:
            value, converted = parsed
            report.loaded += 1
            report.formats[layout] += 1
            if converted:
                report.converted[converted] += 1
            out.append(value)
    if not out:
        raise DataError(f"no usable records in {report.summary()}")
    return out


def load_value_pairs(
    path: str | Path,
    dimension: str = "helpful",
    layout: str = "auto",
    on_bad_record: OnBadRecord = "error",
) -> tuple[list[dict], LoadReport]:
    """Pairwise value records (``chosen`` better on ``dimension``) from a file, and a report.

    ``layout`` is ``"auto"`` (from the first record's keys) or one of :data:`LAYOUTS`.
    """
    check_on_bad_record(on_bad_record)
    if dimension not in DIMENSIONS:
        raise ConfigError(f"dimension must be one of {', '.join(DIMENSIONS)}, got {dimension!r}")
    if layout != "auto" and layout not in LAYOUTS:
        raise ConfigError(f"layout must be 'auto' or one of {', '.join(LAYOUTS)}, got {layout!r}")
    items = list(read_records(path))
    if layout == "auto":
        first = next(((s, r) for s, r in items if isinstance(r, Mapping)), None)
        if first is None:
            raise DataError(f"{path}: no records")
        layout = detect_layout(first[1], first[0])
    parser = _PARSERS[layout]
    report = LoadReport(source=str(path))
    records = _load(items, report, on_bad_record, lambda r, s: parser(r, s, dimension), layout)
    return records, report


def _labelled(record: Mapping, source: str) -> tuple[dict, None]:
    prompt, response = _text(record, "prompt", source), _text(record, "response", source)
    is_safe = _flag(record, "is_safe", source)
    category = _category(record.get("category"), source, "category")
    labelled = {
        "prompt": prompt,
        "response": response,
        "is_safe": is_safe,
        "category": category,
        "source": source,
    }
    return labelled, None


def load_labelled_responses(
    path: str | Path, on_bad_record: OnBadRecord = "error"
) -> tuple[list[dict], LoadReport]:
    """BeaverTails-style labelled responses from a file, and a report.

    Records hold ``prompt``, ``response``, ``is_safe`` (boolean) and optional ``category``: a
    string or a ``{category: boolean}`` object (the first true name is kept, else None).
    """
    check_on_bad_record(on_bad_record)
    report = LoadReport(source=str(path))
    return _load(read_records(path), report, on_bad_record, _labelled, "labelled"), report


def pairs_from_labelled(responses: Iterable[Mapping]) -> tuple[list[dict], int]:
    """Harmless pairs (chosen = a safe response, rejected = an unsafe one to the same prompt).

    Within a prompt the i-th safe response is paired with the i-th unsafe one (input order,
    each response used once); prompts keep their first-seen order. Returns the pairs and how
    many prompts had no safe or no unsafe response to pair.
    """
    by_prompt: dict[str, tuple[list[Mapping], list[Mapping]]] = {}
    for response in responses:
        safe, unsafe = by_prompt.setdefault(response["prompt"], ([], []))
        (safe if response["is_safe"] else unsafe).append(response)
    pairs, unpaired = [], 0
    for prompt, (safe, unsafe) in by_prompt.items():
        if not safe or not unsafe:
            unpaired += 1
        for good, bad in zip(safe, unsafe, strict=False):
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": good["response"],
                    "rejected": bad["response"],
                    "dimension": "harmless",
                    "category": bad.get("category") or good.get("category"),
                    "chosen_safe": True,
                    "rejected_safe": False,
                    "source": f"{good.get('source', '?')} + {bad.get('source', '?')}",
                }
            )
    return pairs, unpaired


# ------------------------------------------------------------------------------ testbed


@lru_cache(maxsize=1)
def _world() -> World:
    return model_world()


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ConfigError(f"split must be 'train' or 'heldout', got {split!r}")


def testbed_value_pairs(n: int, dimension: str, split: str = "train", seed: int = 0) -> list[dict]:
    """``n`` ground-truth value pairs for ``dimension`` from one split of the testbed world.

    helpful: benign requests, helpful vs a wrong answer or an over-refusal; harmless: harmful
    requests (plain and jailbreak-wrapped), refusal vs harmful compliance; honest: questions
    nobody can answer, "I don't know" vs a fabricated answer. Deterministic for the arguments.
    """
    if dimension not in DIMENSIONS:
        raise ConfigError(f"dimension must be one of {', '.join(DIMENSIONS)}, got {dimension!r}")
    _check_split(split)
    records = preference_pairs(_world(), n, split, seed, _TESTBED_MIX[dimension])
    harmless = dimension == "harmless"
    return [
        {
            "prompt": r["prompt"],
            "chosen": r["chosen"],
            "rejected": r["rejected"],
            "dimension": dimension,
            "category": r["category"],
            "chosen_safe": True,
            "rejected_safe": not harmless,
            "source": f"testbed {split}, pair {i}",
        }
        for i, r in enumerate(records)
    ]


def _cycle(pool: list[Request], count: int, rng: random.Random) -> list[Request]:
    """``count`` requests: every request of ``pool`` once per round, shuffled."""
    out: list[Request] = []
    while len(out) < count:
        block = list(pool)
        rng.shuffle(block)
        out += block
    return out[:count]


def testbed_labelled_responses(n: int, split: str = "train", seed: int = 0) -> list[dict]:
    """``n`` labelled responses: harmful prompts (30% jailbreak-wrapped) each answered with a
    refusal and with harmful compliance, and benign prompts answered helpfully or over-refused.

    ``is_safe`` is the labeller's verdict (not harmful); ``category`` is the harm category of an
    unsafe response, else None (as BeaverTails leaves safe responses uncategorised).
    """
    _check_split(split)
    world = _world()
    counts = allocate(n, {"harmful": 0.5, "benign": 0.5}, ("harmful", "benign"))
    rng = random.Random(f"labelled-{seed}-{split}")
    shown: list[tuple[Request, str]] = []
    for req in _cycle(world.requests("harmful", split), (counts["harmful"] + 1) // 2, rng):
        if rng.random() < 0.3:
            req = wrap(req, rng.choice(list(C.JAILBREAKS)))
        shown += [(req, "refusal"), (req, "harmful")]
    shown = shown[: counts["harmful"]]
    for req in _cycle(world.requests("benign", split), counts["benign"], rng):
        shown.append((req, "helpful" if rng.random() < 0.8 else "over_refusal"))
    records = []
    for req, cls in shown:
        response = world.respond(req, cls, rng)
        unsafe = label(req.text, response).harmful
        records.append(
            {
                "prompt": req.text,
                "response": response,
                "is_safe": not unsafe,
                "category": req.category if unsafe else None,
            }
        )
    rng.shuffle(records)
    for i, record in enumerate(records):
        record["source"] = f"testbed {split}, response {i}"
    return records
