"""The sampling rule every backend follows: one sample key per prompt, never per batch.

A sampled completion depends only on the model, the prompt, the generation settings, the seed and
the prompt's *occurrence*: how many earlier prompts of the same ``generate`` call are the same
prompt (0 for the first copy, 1 for the second, ...). It does not depend on batch size, on the
order of the prompts, on their batch neighbours, on how a batch is split across rounds or
devices, or on which prompts a cache already held. Two copies of a prompt in one call give two
different samples; two calls with the same seed give the same sample for the same prompt, so a
caller that wants fresh samples in a second call passes another seed.

The rule, in one line: prompt ``p`` at occurrence ``k`` under seed ``s`` is drawn with the
randomness of :func:`sample_key` ``(s, p, k)``, a hash of ``(occurrence_seed(s, k), p)``, where
``occurrence_seed(s, 0) == s``. So the k-th copy of a prompt under seed ``s`` is the same draw as
the first copy under seed ``occurrence_seed(s, k)``: a wrapper such as the call cache can ask a
backend for just the missing copies, one call per occurrence, and get what one call with every
copy would have given.

How each backend spends the key: the local Hugging Face backend seeds a counter-based generator
with it and draws each token by the Gumbel-max trick (:mod:`alignkit.models.hf_sampling`); the
OpenAI-compatible backend sends :func:`request_seed` of it as the request's ``seed`` (servers
such as vLLM seed each request on its own). Greedy decoding (``temperature == 0``) uses no
randomness and is untouched.

A seed of None draws a fresh base seed per call: the call's prompts still get distinct keys, but
the call is not reproducible.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from alignkit.models.base import Prompt

SAMPLING_RULE = 2
"""Version of this rule; part of the call cache's key for sampled completions (rule 1 seeded
torch's global RNG once per call, so its samples depended on batching)."""


def prompt_key(prompt: Prompt) -> str:
    """A stable text key of a prompt as given: a string, or its messages as canonical JSON."""
    value = prompt if isinstance(prompt, str) else [dict(m) for m in prompt]
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def occurrences(keys: Sequence[str]) -> list[int]:
    """For each key, how many earlier keys of the sequence are equal to it (0, 1, 2, ...)."""
    seen: dict[str, int] = {}
    out = []
    for key in keys:
        out.append(seen.get(key, 0))
        seen[key] = out[-1] + 1
    return out


def _digest(*parts: object) -> int:
    """A 64-bit integer from sha256 of the parts' JSON."""
    blob = json.dumps(parts, ensure_ascii=False).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def occurrence_seed(seed: int | None, occurrence: int) -> int | None:
    """The seed under which the first copy of a prompt is drawn as its ``occurrence``-th copy
    under ``seed`` is: ``seed`` itself for occurrence 0, a 63-bit hash otherwise."""
    if seed is None or occurrence == 0:
        return seed
    return _digest("alignkit-occurrence", seed, occurrence) >> 1


def sample_key(seed: int, key: str, occurrence: int = 0) -> int:
    """The 64-bit key of one prompt's randomness; ``key`` is the prompt's :func:`prompt_key`."""
    return _digest("alignkit-sample", SAMPLING_RULE, occurrence_seed(seed, occurrence), key)


def sample_keys(prompts: Sequence[Prompt], seed: int) -> list[int]:
    """:func:`sample_key` of each prompt of one call, occurrences counted within the call."""
    keys = [prompt_key(p) for p in prompts]
    return [sample_key(seed, k, n) for k, n in zip(keys, occurrences(keys), strict=True)]


def request_seed(key: int) -> int:
    """A request ``seed`` from a sample key: 31 bits, which every server accepts."""
    return key & 0x7FFFFFFF
