"""Querying the target: batched, with errors isolated to the prompts that caused them.

A batch goes to the backend in one call (batched forward passes locally, concurrent requests on
a server). If the call fails, the batch is split in halves and retried, down to single prompts,
so one prompt the server rejects (or a transient error that outlasted the backend's own
retries) is recorded against that prompt only and never aborts a campaign.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from alignkit.errors import AlignkitError
from alignkit.models.base import GenerationConfig, ModelBackend


@dataclass
class TargetReply:
    text: str | None
    error: str | None = None
    latency_s: float = 0.0


def query_target(
    target: ModelBackend, prompts: Sequence[str], config: GenerationConfig
) -> list[TargetReply]:
    """One reply per prompt; a failing prompt gets ``text=None`` and its error message."""
    if not prompts:
        return []
    start = time.perf_counter()
    try:
        completions = target.generate(list(prompts), config)
    except (AlignkitError, OSError, RuntimeError, ValueError) as exc:
        if len(prompts) == 1:
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            return [TargetReply(None, message, time.perf_counter() - start)]
        half = len(prompts) // 2
        return query_target(target, prompts[:half], config) + query_target(
            target, prompts[half:], config
        )
    each = (time.perf_counter() - start) / len(prompts)
    return [TargetReply(c.text, None, each) for c in completions]
