"""Parse one preference record (any accepted layout) into a :class:`PreferenceExample`.

Accepted record layouts (the ones TRL users already have, plus ranked lists):

- **standard**: ``prompt``, ``chosen``, ``rejected`` are strings.
- **conversational**: ``prompt`` is a list of ``{role, content}`` messages; ``chosen`` and
  ``rejected`` are strings or lists of messages holding the assistant reply (a list that
  repeats the prompt messages first is accepted: the repeated prompt is removed).
- **implicit prompt**: only ``chosen`` and ``rejected``, each a whole conversation (list of
  messages) or a string; their longest shared prefix is the prompt. For strings the shared
  prefix is cut back to a whitespace boundary (so a shared partial word stays in the
  completions) and becomes one user turn.
- **hh-rlhf**: only ``chosen`` and ``rejected``, both Anthropic HH-RLHF transcripts
  (``"\n\nHuman: ..."`` / ``"\n\nAssistant: ..."`` turns): split as TRL splits them
  (:func:`alignkit.data.formats.split_hh`) into prompt messages and the final assistant replies.
- **pku-saferlhf**: ``prompt``, ``response_0``, ``response_1`` and ``better_response_id`` /
  ``safer_response_id``: the pair is ordered by the id ``pku_preference`` names
  (:func:`alignkit.data.formats.pku_pair`; ``"better"`` by default, or ``"safer"``).
- **ranked**: ``prompt``, ``responses`` (at least two) and exactly one of

  - ``ranking``: response indices, best first, a permutation of ``0 .. n-1``;
  - ``ranks``: one rank per response, lower is better (0- or 1-based alike);
  - ``scores``: one score per response, higher is better.

  Ties in ``ranks`` / ``scores`` carry no order, so only the first response of each tied
  group (in input order) is kept; the others are dropped from the list and counted in
  ``LoadReport.adjusted["tied_responses_dropped"]``. A record where every response ties has
  no preference and is a bad record.

A string prompt becomes one user turn. Any other field is kept in ``metadata`` (for
pku-saferlhf all but the two response texts).
Every problem raises :class:`BadRecord` (a :class:`~alignkit.errors.DataError`) whose one-line
message names the record's source (``FILE:LINE`` or ``FILE:row N``) and the field, and whose
``reason`` is the key the load report counts it under.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import DataError

RECORD_LAYOUTS = (
    "prompt + chosen + rejected (standard or conversational)",
    "chosen + rejected (implicit prompt, or HH-RLHF transcripts)",
    "prompt + response_0 + response_1 + better_response_id | safer_response_id (PKU-SafeRLHF)",
    "prompt + responses + ranking | ranks | scores (ranked)",
)
_PREFERENCE_FIELDS = {"prompt", "chosen", "rejected", "responses", "ranking", "ranks", "scores"}
_PKU_TEXTS = {"prompt", "response_0", "response_1"}
CONVERTED_LAYOUTS = ("hh-rlhf", "pku-saferlhf")  # upstream layouts mapped onto a pair


@dataclass
class PreferenceExample:
    """One preference record: a chat prompt and its completions ordered best -> worst."""

    prompt: list[dict]
    completions: list[str]
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_pair(self) -> bool:
        return len(self.completions) == 2


class BadRecord(DataError):
    """A record that cannot be used; ``reason`` is the key the load report counts it under."""

    def __init__(self, source: str, field_name: str | None, problem: str, reason: str) -> None:
        where = f"{source}: field '{field_name}'" if field_name else source
        super().__init__(f"{where}: {problem}".replace("\n", " "))
        self.source = source
        self.reason = reason


def type_name(value: Any) -> str:
    """A short JSON-ish name for the type of ``value`` (for error messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _require(record: Mapping, key: str, source: str) -> Any:
    value = record.get(key)
    if value is None:
        raise BadRecord(source, key, "missing", "missing_field")
    return value


def _messages(value: Any, source: str, name: str) -> list[dict]:
    """Validate a list of ``{role, content}`` messages; extra keys are dropped."""
    if not isinstance(value, (list, tuple)) or not value:
        problem = f"expected a non-empty list of messages, got {type_name(value)}"
        raise BadRecord(source, name, problem, "wrong_type")
    messages = []
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, Mapping):
            problem = f"expected a {{role, content}} message, got {type_name(message)}"
            raise BadRecord(source, where, problem, "wrong_type")
        role, content = message.get("role"), message.get("content")
        if role is None or content is None:
            missing = "role" if role is None else "content"
            raise BadRecord(source, f"{where}.{missing}", "missing", "missing_field")
        if not isinstance(role, str) or not isinstance(content, str):
            bad, got = ("role", role) if not isinstance(role, str) else ("content", content)
            problem = f"expected a string, got {type_name(got)}"
            raise BadRecord(source, f"{where}.{bad}", problem, "wrong_type")
        messages.append({"role": role, "content": content})
    return messages


def _prompt(value: Any, source: str) -> list[dict]:
    """A prompt as chat messages: a string becomes one user turn."""
    if isinstance(value, str):
        if not value.strip():
            raise BadRecord(source, "prompt", "empty prompt", "empty_prompt")
        return [{"role": "user", "content": value}]
    if not isinstance(value, (list, tuple)):
        problem = f"expected a string or a list of messages, got {type_name(value)}"
        raise BadRecord(source, "prompt", problem, "wrong_type")
    messages = _messages(value, source, "prompt")
    if messages[-1]["role"] == "assistant":
        problem = (
            "the last prompt message is from the assistant; it must be a user (or system) turn"
        )
        raise BadRecord(source, "prompt", problem, "bad_message")
    return messages


def _completion(value: Any, source: str, name: str, prompt: list[dict]) -> str:
    """The text of one completion: a string, or a list holding one assistant message."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple)):
        messages = _messages(value, source, name)
        if len(messages) > len(prompt) and messages[: len(prompt)] == prompt:
            messages = messages[len(prompt) :]  # the whole conversation was given
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            roles = ", ".join(m["role"] for m in messages)
            problem = f"expected one assistant message, got {len(messages)} ({roles})"
            raise BadRecord(source, name, problem, "bad_message")
        text = messages[0]["content"]
    else:
        problem = f"expected a string or a list of messages, got {type_name(value)}"
        raise BadRecord(source, name, problem, "wrong_type")
    if not text.strip():
        raise BadRecord(source, name, "empty completion", "empty_completion")
    return text


def _distinct(texts: list[str], names: list[str], source: str) -> None:
    """Reject two completions with the same text (they carry no preference)."""
    seen: dict[str, str] = {}
    for text, name in zip(texts, names, strict=True):
        key = text.strip()
        if key in seen:
            problem = f"identical to '{seen[key]}'"
            raise BadRecord(source, name, problem, "identical_completions")
        seen[key] = name


def _pair(record: Mapping, source: str) -> tuple[PreferenceExample, str]:
    prompt_value = _require(record, "prompt", source)
    prompt = _prompt(prompt_value, source)
    chosen = _completion(_require(record, "chosen", source), source, "chosen", prompt)
    rejected = _completion(_require(record, "rejected", source), source, "rejected", prompt)
    _distinct([chosen, rejected], ["chosen", "rejected"], source)
    layout = "standard" if isinstance(prompt_value, str) else "conversational"
    if not isinstance(record["chosen"], str) or not isinstance(record["rejected"], str):
        layout = "conversational"
    return PreferenceExample(prompt, [chosen, rejected], source), layout


def _string_prefix(a: str, b: str) -> int:
    """Length of the shared prefix of ``a`` and ``b``, cut back to a whitespace boundary."""
    k = 0
    limit = min(len(a), len(b))
    while k < limit and a[k] == b[k]:
        k += 1
    if k < limit and k > 0 and not a[k - 1].isspace():
        while k > 0 and not a[k - 1].isspace():
            k -= 1
    return k


def _hh(chosen: str, rejected: str, source: str) -> tuple[PreferenceExample, str]:
    from alignkit.data.formats import split_hh  # formats imports BadRecord from this module

    prompt, good, bad = split_hh(chosen, rejected, source)
    return PreferenceExample(_prompt(prompt, source), [good, bad], source), "hh-rlhf"


def _pku(record: Mapping, source: str, preference: str) -> tuple[PreferenceExample, str]:
    from alignkit.data.formats import pku_pair  # formats imports BadRecord from this module

    pair = pku_pair(record, source, preference)
    prompt = _prompt(_require(record, "prompt", source), source)
    names = [f"response_{pair['good']}", f"response_{1 - pair['good']}"]
    texts = [
        _completion(pair[key], source, name, prompt)
        for key, name in zip(("chosen", "rejected"), names, strict=True)
    ]
    _distinct(texts, names, source)
    return PreferenceExample(prompt, texts, source), "pku-saferlhf"


def _implicit(record: Mapping, source: str) -> tuple[PreferenceExample, str]:
    from alignkit.data.formats import is_hh_transcript  # formats imports BadRecord from here

    chosen, rejected = _require(record, "chosen", source), _require(record, "rejected", source)
    if is_hh_transcript(chosen, rejected):
        return _hh(chosen, rejected, source)
    if isinstance(chosen, str) and isinstance(rejected, str):
        if chosen.strip() == rejected.strip():
            raise BadRecord(source, "rejected", "identical to 'chosen'", "identical_completions")
        k = _string_prefix(chosen, rejected)
        if not chosen[:k].strip():
            problem = "no 'prompt' field and 'chosen' / 'rejected' share no prefix to use as one"
            raise BadRecord(source, "prompt", problem, "no_shared_prompt")
        prompt = [{"role": "user", "content": chosen[:k].rstrip()}]
        texts = [chosen[k:].lstrip(), rejected[k:].lstrip()]
        for text, name in zip(texts, ("chosen", "rejected"), strict=True):
            if not text.strip():
                raise BadRecord(
                    source, name, "empty completion after the shared prompt", "empty_completion"
                )
        return PreferenceExample(prompt, texts, source), "implicit"
    if not isinstance(chosen, (list, tuple)) or not isinstance(rejected, (list, tuple)):
        bad = "chosen" if not isinstance(chosen, (str, list, tuple)) else "rejected"
        problem = (
            "without a 'prompt' field, 'chosen' and 'rejected' must both be strings or both "
            f"lists of messages; got {type_name(chosen)} and {type_name(rejected)}"
        )
        raise BadRecord(source, bad, problem, "wrong_type")
    a, b = _messages(chosen, source, "chosen"), _messages(rejected, source, "rejected")
    if a == b:
        raise BadRecord(source, "rejected", "identical to 'chosen'", "identical_completions")
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    if k == 0:
        problem = "no 'prompt' field and 'chosen' / 'rejected' share no leading messages"
        raise BadRecord(source, "prompt", problem, "no_shared_prompt")
    prompt = a[:k]
    for rest, name in ((a[k:], "chosen"), (b[k:], "rejected")):
        if not rest:
            problem = "no reply after the messages it shares with the other completion"
            raise BadRecord(source, name, problem, "empty_completion")
    if prompt[-1]["role"] == "assistant":
        problem = "the conversations differ after an assistant turn, not in their last reply"
        raise BadRecord(source, "chosen", problem, "bad_message")
    texts = [
        _completion(a[k:], source, "chosen", prompt),
        _completion(b[k:], source, "rejected", prompt),
    ]
    _distinct(texts, ["chosen", "rejected"], source)
    return PreferenceExample(prompt, texts, source), "implicit"


def _number_list(value: Any, source: str, name: str, n: int, integers: bool) -> list[float]:
    kind = "integers" if integers else "numbers"
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )
    if not ok:
        raise BadRecord(
            source, name, f"expected a list of {kind}, got {type_name(value)}", "wrong_type"
        )
    if any(not math.isfinite(v) for v in value):
        raise BadRecord(source, name, "holds a NaN or infinite value", "bad_ranking")
    if integers and any(float(v) != int(v) for v in value):
        raise BadRecord(source, name, "expected integer indices", "wrong_type")
    if len(value) != n:
        problem = f"has {len(value)} entries for {n} responses"
        raise BadRecord(source, name, problem, "bad_ranking")
    return list(value)


def _order(record: Mapping, source: str, n: int, notes: Counter) -> list[int]:
    """Response indices best -> worst from ``ranking``, ``ranks`` or ``scores``."""
    given = [k for k in ("ranking", "ranks", "scores") if record.get(k) is not None]
    if len(given) != 1:
        problem = (
            "a ranked record needs exactly one of 'ranking' (indices best first), 'ranks' "
            f"(lower is better) or 'scores' (higher is better); got {given or 'none'}"
        )
        raise BadRecord(source, "ranking", problem, "missing_field" if not given else "bad_ranking")
    key = given[0]
    values = _number_list(record[key], source, key, n, integers=key == "ranking")
    if key == "ranking":
        order = [int(v) for v in values]
        if sorted(order) != list(range(n)):
            problem = (
                f"{order} is not an ordering of the response indices 0..{n - 1} (0-based, "
                "best first; use 'ranks' for one rank per response)"
            )
            raise BadRecord(source, key, problem, "bad_ranking")
        return order
    sign = 1.0 if key == "ranks" else -1.0
    order = sorted(range(n), key=lambda i: sign * values[i])
    kept = [i for j, i in enumerate(order) if j == 0 or values[i] != values[order[j - 1]]]
    if len(kept) < 2:
        raise BadRecord(source, key, "every response ties; no preference", "bad_ranking")
    if len(kept) < n:
        notes["tied_responses_dropped"] += n - len(kept)
    return kept


def _ranked(record: Mapping, source: str, notes: Counter) -> tuple[PreferenceExample, str]:
    prompt = _prompt(_require(record, "prompt", source), source)
    responses = _require(record, "responses", source)
    if not isinstance(responses, (list, tuple)):
        problem = f"expected a list of responses, got {type_name(responses)}"
        raise BadRecord(source, "responses", problem, "wrong_type")
    if len(responses) < 2:
        problem = f"needs at least 2 responses, got {len(responses)}"
        raise BadRecord(source, "responses", problem, "bad_ranking")
    texts = [_completion(r, source, f"responses[{i}]", prompt) for i, r in enumerate(responses)]
    order = _order(record, source, len(texts), notes)
    _distinct([texts[i] for i in order], [f"responses[{i}]" for i in order], source)
    return PreferenceExample(prompt, [texts[i] for i in order], source), "ranked"


def parse_record(
    record: Any, source: str, pku_preference: str = "better"
) -> tuple[PreferenceExample, str, Counter]:
    """Parse one record; returns the example, its layout name and any non-fatal adjustments.

    ``pku_preference`` (``"better"`` or ``"safer"``) picks the id a PKU-SafeRLHF record's pair is
    ordered by (``better_response_id`` / ``safer_response_id``)."""
    if not isinstance(record, Mapping):
        problem = f"expected an object with preference fields, got {type_name(record)}"
        raise BadRecord(source, None, problem, "not_an_object")
    notes: Counter = Counter()
    present = {k for k, v in record.items() if v is not None}  # columns can hold nulls
    if "responses" in present:
        example, layout = _ranked(record, source, notes)
    elif {"response_0", "response_1"} <= present and not {"chosen", "rejected"} & present:
        example, layout = _pku(record, source, pku_preference)
    elif "chosen" in present or "rejected" in present:
        has_prompt = "prompt" in present
        example, layout = _pair(record, source) if has_prompt else _implicit(record, source)
    else:
        found = ", ".join(sorted(map(str, record))) or "none"
        problem = (
            f"no preference fields (found: {found}); expected one of: {'; '.join(RECORD_LAYOUTS)}"
        )
        raise BadRecord(source, None, problem, "unknown_record_format")
    own = _PREFERENCE_FIELDS | (_PKU_TEXTS if layout == "pku-saferlhf" else set())
    example.metadata = {k: v for k, v in record.items() if k not in own}
    _check_soft_label(example.metadata.get("soft_label"), source)
    _check_margin(example.metadata.get("margin"), source)
    _check_pair_fields(example, source)
    return example, layout, notes


def _check_pair_fields(example: PreferenceExample, source: str) -> None:
    """``soft_label`` and ``margin`` compare a chosen with a rejected response: a ranked record
    of more than two responses has no such pair."""
    for key in ("soft_label", "margin"):
        if example.metadata.get(key) is not None and not example.is_pair:
            problem = (
                f"belongs to a pair (chosen vs rejected); this ranked record has "
                f"{len(example.completions)} responses"
            )
            raise BadRecord(source, key, problem, f"bad_{key}")


def _check_margin(value: Any, source: str) -> None:
    """``margin`` (optional): the offset the pair's implicit reward margin must clear."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRecord(source, "margin", f"must be a finite number, got {value!r}", "bad_margin")


def _check_soft_label(value: Any, source: str) -> None:
    """``soft_label`` (optional) is P(chosen is better): a number in [0.5, 1] (AI feedback)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.5 <= value <= 1:
        problem = f"must be a number in [0.5, 1] (P(chosen is better)), got {value!r}"
        raise BadRecord(source, "soft_label", problem, "bad_soft_label")
