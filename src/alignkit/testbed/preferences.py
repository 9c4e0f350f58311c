"""Preference data built from the testbed world, with ground-truth classes.

:func:`preference_pairs` writes records in the standard layout (``prompt``, ``chosen``,
``rejected``) plus metadata; each record comes from one *pair type*:

====================  ================================  =========  ==============
pair type             prompt                            chosen     rejected
====================  ================================  =========  ==============
``harmful``           a harmful request                 refusal    harmful
``jailbreak``         a harmful request in a wrapper    refusal    harmful
``benign``            a benign request                  helpful    over_refusal
``benign_wrong``      a benign request                  helpful    wrong
``unanswerable``      a question nobody can answer      idk        fabricated
====================  ================================  =========  ==============

The default mix (:data:`DEFAULT_PAIR_MIX`) gives benign pairs 40%: DPO on refusals alone
teaches the model to refuse everything, and the benign pairs are what keep it helpful.

:func:`ranked_records` writes ranked multi-response records (``prompt``, ``responses``,
``ranking`` = response indices best first, responses in shuffled order) for listwise losses:

- harmful and jailbreak: refusal > "I don't know" > harmful compliance;
- benign: helpful > "I don't know" > over-refusal > wrong answer (a confident false answer is
  ranked below declining);
- unanswerable: "I don't know" > over-refusal > fabricated answer.

Requests are drawn from one split of the world (``train`` or ``heldout``; their prompts are
disjoint), cycling through every request of a kind before repeating one. Output is
deterministic for ``(world.seed, n, split, seed, mix)``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path

from alignkit.atomic import write_text
from alignkit.errors import ConfigError
from alignkit.testbed import content as C
from alignkit.testbed.world import Request, World, wrap

PAIR_TYPES: dict[str, tuple[str, bool, str, str]] = {
    # pair type: (request kind, jailbreak-wrapped, chosen class, rejected class)
    "harmful": ("harmful", False, "refusal", "harmful"),
    "jailbreak": ("harmful", True, "refusal", "harmful"),
    "benign": ("benign", False, "helpful", "over_refusal"),
    "benign_wrong": ("benign", False, "helpful", "wrong"),
    "unanswerable": ("unanswerable", False, "idk", "fabricated"),
}
DEFAULT_PAIR_MIX: dict[str, float] = {
    "harmful": 0.25,
    "jailbreak": 0.20,
    "benign": 0.30,
    "benign_wrong": 0.10,
    "unanswerable": 0.15,
}
RANKED_TYPES: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    # record type: (request kind, jailbreak-wrapped, classes best -> worst)
    "harmful": ("harmful", False, ("refusal", "idk", "harmful")),
    "jailbreak": ("harmful", True, ("refusal", "idk", "harmful")),
    "benign": ("benign", False, ("helpful", "idk", "over_refusal", "wrong")),
    "unanswerable": ("unanswerable", False, ("idk", "over_refusal", "fabricated")),
}
DEFAULT_RANKED_MIX: dict[str, float] = {
    "harmful": 0.25,
    "jailbreak": 0.20,
    "benign": 0.40,
    "unanswerable": 0.15,
}


def allocate(n: int, mix: Mapping[str, float], known: Iterable[str]) -> dict[str, int]:
    """Split ``n`` records between the types of ``mix`` (largest remainder, sums to ``n``)."""
    known = list(known)
    unknown = [k for k in mix if k not in known]
    if unknown:
        raise ConfigError(f"unknown preference type(s) {unknown}; choose from {', '.join(known)}")
    if any(share < 0 for share in mix.values()) or sum(mix.values()) <= 0:
        raise ConfigError(f"mix shares must be >= 0 and not all zero, got {dict(mix)}")
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    total = sum(mix.values())
    exact = {k: n * share / total for k, share in mix.items()}
    counts = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)
    for k in by_remainder[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _requests(world: World, kind: str, jailbreak: bool, count: int, split: str, rng) -> list:
    """``count`` requests of ``kind``: every request once per round, shuffled, maybe wrapped."""
    pool = world.requests(kind, split)
    out: list[Request] = []
    while len(out) < count:
        block = list(pool)
        rng.shuffle(block)
        out += block
    out = out[:count]
    if jailbreak:
        out = [wrap(r, rng.choice(list(C.JAILBREAKS))) for r in out]
    return out


def _base(req: Request, record_type: str) -> dict:
    return {
        "kind": "jailbreak" if req.jailbreak else req.kind,
        "type": record_type,
        "category": req.category,
        "jailbreak": req.jailbreak,
        "request": req.plain,
    }


def preference_pairs(
    world: World,
    n: int,
    split: str = "train",
    seed: int = 0,
    mix: Mapping[str, float] | None = None,
) -> list[dict]:
    """``n`` preference pairs (standard layout plus metadata) from one split of ``world``."""
    counts = allocate(n, mix or DEFAULT_PAIR_MIX, PAIR_TYPES)
    records = []
    for pair_type, count in counts.items():
        kind, wrapped, good, bad = PAIR_TYPES[pair_type]
        rng = random.Random(f"preferences-{world.seed}-{seed}-{split}-{pair_type}")
        for req in _requests(world, kind, wrapped, count, split, rng):
            record = {
                "prompt": req.text,
                "chosen": world.respond(req, good, rng),
                "rejected": world.respond(req, bad, rng),
                **_base(req, pair_type),
                "chosen_class": good,
                "rejected_class": bad,
            }
            records.append(record)
    random.Random(f"preferences-{world.seed}-{seed}-{split}").shuffle(records)
    return records


def ranked_records(
    world: World,
    n: int,
    split: str = "train",
    seed: int = 0,
    mix: Mapping[str, float] | None = None,
) -> list[dict]:
    """``n`` ranked multi-response records (``ranking`` = indices best first)."""
    counts = allocate(n, mix or DEFAULT_RANKED_MIX, RANKED_TYPES)
    records = []
    for record_type, count in counts.items():
        kind, wrapped, classes = RANKED_TYPES[record_type]
        rng = random.Random(f"ranked-{world.seed}-{seed}-{split}-{record_type}")
        for req in _requests(world, kind, wrapped, count, split, rng):
            order = list(range(len(classes)))  # position in the record -> rank
            rng.shuffle(order)
            shown = [classes[rank] for rank in order]
            records.append(
                {
                    "prompt": req.text,
                    "responses": [world.respond(req, cls, rng) for cls in shown],
                    "ranking": sorted(range(len(order)), key=order.__getitem__),
                    **_base(req, record_type),
                    "classes": shown,
                }
            )
    random.Random(f"ranked-{world.seed}-{seed}-{split}").shuffle(records)
    return records


def write_jsonl(records: Iterable[Mapping], path: str | Path) -> Path:
    """Write records as JSON Lines (UTF-8), atomically, creating parent directories; returns
    the path."""
    path = Path(path)
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path
