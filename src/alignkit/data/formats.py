"""Upstream preference layouts mapped onto alignkit's records; cells as CSV exports write them.

- **Anthropic HH-RLHF** transcripts (``{"chosen": str, "rejected": str}``, turns marked
  ``"\\n\\nHuman: "`` / ``"\\n\\nAssistant: "``): :func:`is_hh_transcript` detects them and
  :func:`split_hh` splits them as TRL's ``examples/datasets/hh-rlhf-helpful-base.py`` does.
- **PKU-SafeRLHF** (``prompt``, ``response_0``, ``response_1``, ``is_response_{0,1}_safe``,
  ``better_response_id``, ``safer_response_id``, ...): :func:`pku_pair` orders the two responses
  by the id that :data:`PKU_PREFERENCES` names.
- Cells written by pandas / ``datasets`` CSV export: :func:`literal_cell` reads a Python-repr
  dict or list (``{'Violence': False}``), :func:`flag_value` a ``"True"`` / ``"false"`` cell and
  :func:`response_id` a ``"1"`` / ``"1.0"`` id.

Every problem raises :class:`~alignkit.data.records.BadRecord` naming the record's source and
the field, with the ``reason`` a load report counts it under.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from alignkit.data.records import BadRecord
from alignkit.errors import ConfigError

PkuPreference = Literal["better", "safer"]
PKU_PREFERENCES: dict[str, str] = {"better": "better_response_id", "safer": "safer_response_id"}
HUMAN, ASSISTANT = "\n\nHuman: ", "\n\nAssistant: "
_TURN = re.compile(r"(\n\nAssistant: |\n\nHuman: )")

# ------------------------------------------------------------------------------ HH-RLHF


def _hh_text(text: str) -> str:
    """``text`` with the leading blank line HH-RLHF transcripts have (added when missing)."""
    return "\n\n" + text if text.startswith("Human:") else text


def is_hh_transcript(chosen: Any, rejected: Any) -> bool:
    """Whether both values are HH-RLHF transcripts: strings that start with a ``Human:`` turn
    (``"\\n\\nHuman:"`` or ``"Human:"``) and hold a ``"\\n\\nAssistant:"`` turn."""
    return all(
        isinstance(t, str)
        and t.startswith(("\n\nHuman:", "Human:"))
        and "\n\nAssistant:" in _hh_text(t)
        for t in (chosen, rejected)
    )


def _common_prefix(a: str, b: str) -> str:
    """The character-by-character common prefix of ``a`` and ``b``."""
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return a[:k]


def _turns(text: str) -> list[dict]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` as ``[{user: a}, {assistant: b}]`` (TRL's split;
    text before the first marker is dropped, contents are not stripped)."""
    parts = _TURN.split(text)[1:]
    return [
        {"role": "user" if parts[i] == HUMAN else "assistant", "content": parts[i + 1]}
        for i in range(0, len(parts), 2)
    ]


def split_hh(chosen: str, rejected: str, source: str) -> tuple[list[dict], str, str]:
    """Split two HH-RLHF transcripts into prompt messages and the two final assistant replies.

    As TRL's recipe: the common prefix, cut back to its last ``"\\n\\nAssistant: "`` when it does
    not end there, is the prompt; it is split on the ``"\\n\\nHuman: "`` / ``"\\n\\nAssistant: "``
    markers into user / assistant messages; what follows it in each transcript is the reply.
    Unlike TRL, a record is refused (``BadRecord``) instead of split wrongly when the prefix
    holds no ``"\\n\\nAssistant: "`` (``hh_no_assistant_turn``), when the transcripts part before
    their last assistant turn so a reply would hold several turns (``hh_diverges_early``), or
    when a reply is empty or both are the same (``empty_completion``, ``identical_completions``).
    """
    chosen, rejected = _hh_text(chosen), _hh_text(rejected)
    if chosen.strip() == rejected.strip():
        raise BadRecord(source, "rejected", "identical to 'chosen'", "identical_completions")
    prompt = _common_prefix(chosen, rejected)
    if not prompt.endswith(ASSISTANT):
        cut = prompt.rfind(ASSISTANT)
        if cut < 0:
            problem = f"an HH-RLHF transcript with no shared {ASSISTANT.strip()!r} turn to split at"
            raise BadRecord(source, "chosen", problem, "hh_no_assistant_turn")
        prompt = prompt[:cut] + ASSISTANT
    replies = [chosen[len(prompt) :], rejected[len(prompt) :]]
    for reply, name in zip(replies, ("chosen", "rejected"), strict=True):
        if HUMAN in reply or ASSISTANT in reply:
            problem = "the transcripts differ before their last assistant turn, not in its reply"
            raise BadRecord(source, name, problem, "hh_diverges_early")
        if not reply.strip():
            raise BadRecord(source, name, "empty final assistant reply", "empty_completion")
    if replies[0].strip() == replies[1].strip():
        raise BadRecord(source, "rejected", "identical to 'chosen'", "identical_completions")
    messages = _turns(prompt[: -len(ASSISTANT)])
    if not messages or messages[-1]["role"] != "user":
        problem = "the turn before the compared replies is not a Human turn"
        raise BadRecord(source, "chosen", problem, "bad_message")
    return messages, replies[0], replies[1]


def transcript_text(messages: list[dict]) -> str:
    """A prompt as one string: a single user turn's content, or several turns written
    ``"Human: ...\\n\\nAssistant: ...\\n\\nHuman: ..."`` (HH-RLHF's markers, no leading
    blank line)."""
    if len(messages) == 1:
        return messages[0]["content"]
    marker = {"user": HUMAN, "assistant": ASSISTANT}
    return "".join(marker[m["role"]] + m["content"] for m in messages).lstrip("\n")


# ------------------------------------------------------------------------------ cells


def _looks_literal(text: str) -> bool:
    return (text[:1], text[-1:]) in (("{", "}"), ("[", "]"))


def literal_cell(value: Any) -> Any:
    """A string holding a JSON or Python-repr dict / list, decoded; anything else unchanged.

    JSON is tried first; ``ast.literal_eval`` (literals only, never code) only after it fails
    and only for text that starts and ends like a dict or list literal."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not _looks_literal(text):
        return value
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        decoded = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value
    return decoded if isinstance(decoded, (dict, list)) else value


def flag_value(record: Mapping, key: str, source: str, required: bool = True) -> bool | None:
    """A boolean field; ``"true"`` / ``"false"`` strings in any case (CSV cells) are accepted,
    an empty cell is a missing value (``None``, or ``missing_field`` when ``required``)."""
    value = record.get(key)
    if value is None or value == "":
        if required:
            raise BadRecord(source, key, "missing", "missing_field")
        return None
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise BadRecord(source, key, f"expected a boolean, got {value!r}", "bad_label")
    return value


def response_id(record: Mapping, key: str, source: str) -> int:
    """A PKU-SafeRLHF response id, 0 or 1; ``"0"`` / ``"1.0"`` strings and ``1.0`` accepted
    (a nullable int column is exported as floats)."""
    value = record.get(key)
    if value is None or value == "":
        raise BadRecord(source, key, "missing", "missing_field")
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if isinstance(number, (int, float)) and not isinstance(number, bool) and number in (0, 1):
        return int(number)
    raise BadRecord(source, key, f"must be 0 or 1, got {value!r}", "bad_response_id")


# ------------------------------------------------------------------------------ PKU-SafeRLHF


def is_pku_record(record: Mapping) -> bool:
    """Whether ``record`` has PKU-SafeRLHF's two responses (``response_0``, ``response_1``)."""
    return record.get("response_0") is not None and record.get("response_1") is not None


def check_pku_preference(value: str) -> None:
    """``ConfigError`` unless ``value`` is one of :data:`PKU_PREFERENCES`."""
    if value not in PKU_PREFERENCES:
        raise ConfigError(f"pku_preference must be 'better' or 'safer', got {value!r}")


def pku_pair(record: Mapping, source: str, preference: PkuPreference) -> dict[str, Any]:
    """The chosen / rejected responses of a PKU-SafeRLHF record by ``better_response_id``
    (``preference="better"``) or ``safer_response_id`` (``"safer"``).

    Returns ``prompt``, ``chosen``, ``rejected``, ``good`` (the chosen response's index) and
    ``chosen_safe`` / ``rejected_safe`` (None where ``is_response_K_safe`` is absent). A safer id
    that points at a response marked unsafe while the other is marked safe is refused
    (``inconsistent_safety``). Texts are returned as given (type checks are the caller's)."""
    check_pku_preference(preference)
    key = PKU_PREFERENCES[preference]
    good = response_id(record, key, source)
    safe = [flag_value(record, f"is_response_{k}_safe", source, required=False) for k in (0, 1)]
    if preference == "safer" and safe[good] is False and safe[1 - good] is True:
        problem = (
            f"points at response_{good}, but is_response_{good}_safe is false and "
            f"is_response_{1 - good}_safe is true"
        )
        raise BadRecord(source, key, problem, "inconsistent_safety")
    return {
        "prompt": record.get("prompt"),
        "chosen": record.get(f"response_{good}"),
        "rejected": record.get(f"response_{1 - good}"),
        "good": good,
        "chosen_safe": safe[good],
        "rejected_safe": safe[1 - good],
    }
