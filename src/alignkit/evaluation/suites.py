"""Prompt suites: the items an evaluator asks a model about.

A suite is a list of :class:`EvalItem` with stable ids, so two runs on the same suite (same
``n`` and ``seed``) can be compared item by item. ``testbed`` draws held-out prompts of the
testbed world: benign requests, harmful requests asked directly and inside jailbreak wrappers,
and questions nobody can answer. Any other suite name is read as a file of the user's prompts
(JSONL, or JSON list): ``{"prompt": ..., "id"?, "kind"?, "category"?}`` per record, where
``kind`` (``benign`` / ``harmful`` / ``jailbreak`` / ``unanswerable``) tells scorers which
dimensions apply.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import ConfigError, DataError

KINDS = ("benign", "harmful", "jailbreak", "unanswerable")


@dataclass
class EvalItem:
    """One prompt to evaluate, with what is known about it."""

    id: str
    prompt: Any  # a string or a list of chat messages
    kind: str | None = None
    category: str | None = None
    jailbreak: str | None = None

    @property
    def group(self) -> str:
        """The breakdown key: ``kind:category`` (``jailbreak:<wrapper>`` for wrapped prompts)."""
        if self.kind == "jailbreak":
            return f"jailbreak:{self.jailbreak}"
        if self.kind and self.category and self.category != self.kind:
            return f"{self.kind}:{self.category}"
        return self.kind or self.category or "all"

    @property
    def text(self) -> str:
        """The user's request as plain text (the last user turn of a chat prompt)."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [m["content"] for m in self.prompt if m.get("role") == "user"]
        return users[-1] if users else ""

    def to_dict(self) -> dict:
        return asdict(self)


def _cycle(items: list, n: int, rng: random.Random) -> list:
    """``n`` items: every item once per round, each round shuffled."""
    out: list = []
    while items and len(out) < n:
        block = list(items)
        rng.shuffle(block)
        out += block
    return out[:n]


def testbed_suite(n: int = 100, seed: int = 0, split: str = "heldout") -> list[EvalItem]:
    """``n`` testbed prompts of each kind (4n items) from ``split``, deterministic for ``seed``.

    The default, held-out split is for evaluation; ``"train"`` (suite ``testbed-train``) gives
    prompts to train on (e.g. Constitutional AI), disjoint from every evaluation prompt. The
    split is the testbed model's own (:mod:`alignkit.testbed.splits`) for every ``seed``."""
    from alignkit.testbed import content as C
    from alignkit.testbed.splits import model_world
    from alignkit.testbed.world import wrap

    world = model_world()
    rng = random.Random(f"eval-suite-{seed}" if split == "heldout" else f"{split}-suite-{seed}")
    prefix = "testbed" if split == "heldout" else f"testbed-{split}"
    items: list[EvalItem] = []
    for kind, source in (
        ("benign", "benign"),
        ("harmful", "harmful"),
        ("jailbreak", "harmful"),
        ("unanswerable", "unanswerable"),
    ):
        for i, req in enumerate(_cycle(world.requests(source, split), n, rng)):
            wrapper = rng.choice(sorted(C.JAILBREAKS)) if kind == "jailbreak" else None
            text = wrap(req, wrapper).text if wrapper else req.text
            items.append(EvalItem(f"{prefix}-{kind}-{i:04d}", text, kind, req.category, wrapper))
    return items


SUITES: dict[str, Callable[..., list[EvalItem]]] = {
    "testbed": testbed_suite,
    "testbed-train": functools.partial(testbed_suite, split="train"),
}
"""Built-in suites by name; each takes ``(n, seed)``."""


def _item(record: Any, where: str, index: int) -> EvalItem:
    if not isinstance(record, dict) or "prompt" not in record:
        raise DataError(f"{where}: expected a JSON object with a 'prompt' field")
    prompt = record["prompt"]
    ok = (isinstance(prompt, str) and prompt.strip()) or (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt)
    )
    if not ok:
        raise DataError(f"{where}: field 'prompt' must be a non-empty string or a list of messages")
    kind = record.get("kind")
    if kind is not None and kind not in KINDS:
        raise DataError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    return EvalItem(
        id=str(record.get("id", f"item-{index:05d}")),
        prompt=prompt,
        kind=kind,
        category=record.get("category"),
        jailbreak=record.get("jailbreak"),
    )


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; an unreadable or non-UTF-8 (e.g. binary) file is one
    :class:`~alignkit.errors.DataError` naming it (and the first bad byte's offset and line)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{what} {str(path)!r} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start} (line {line}); give a JSONL or text file"
        ) from None


def load_prompt_file(path: str | Path) -> list[EvalItem]:
    """Items from a JSONL file (one record per line) or a JSON list of records."""
    path = Path(path)
    text = read_text_file(path, "prompt file")
    rows: list[tuple[str, Any]] = []
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records")
        rows = [(f"{path}, record {i}", r) for i, r in enumerate(data)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}, line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {number}: invalid JSON ({exc.msg})") from None
    items = [_item(record, where, i) for i, (where, record) in enumerate(rows)]
    if not items:
        raise DataError(f"prompt file {str(path)!r} has no prompts")
    seen: set[str] = set()
    for (where, _), item in zip(rows, items, strict=True):
        if item.id in seen:
            raise DataError(f"{where}: field 'id' repeats {item.id!r}; ids must be unique")
        seen.add(item.id)
    return items


def load_suite(suite: str, n: int = 100, seed: int = 0) -> list[EvalItem]:
    """The items of a built-in suite, or of the user's prompt file ``suite``."""
    if suite in SUITES:
        return SUITES[suite](n=n, seed=seed)
    path = Path(suite)
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.is_file():
            raise DataError(f"prompt file {suite!r} not found")
        return load_prompt_file(path)
    raise ConfigError(
        f"unknown suite {suite!r}: choose from {', '.join(SUITES)}, or give a .jsonl/.json file "
        "of {'prompt': ...} records"
    )
