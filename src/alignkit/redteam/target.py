"""Querying the target: batched, with errors isolated to the prompts that caused them.

A batch goes to the backend in one call (batched forward passes locally, concurrent requests on
a server). Answers that arrive are kept whatever happens to the rest of the batch, and only the
prompts without an answer are sent again:

* A backend with ``generate_each`` (the OpenAI-compatible one) answers each prompt with its
  completion or its error; the prompts that failed with a transient error (429, 5xx, no
  connection: it may go away) are sent again, ``resend`` more times at most.
* Otherwise the batch goes to ``generate``. If the call fails but its error carries the
  completions that did arrive (``completions``, None for the prompts without one, as
  :class:`~alignkit.models.openai_compat.PartialBatchError` does), those are kept and the rest
  is sent again; if it carries none, the batch is split in halves and retried, down to single
  prompts, so one prompt the backend rejects is recorded against that prompt only.

A prompt too long for a local target's context (its tokens plus ``max_new_tokens``, measured
before generating, so memory stays bounded by the batch) is not sent: it gets ``text=None`` and
an error starting :data:`TOO_LONG`, a final error that reports count as errored.

A prompt that still fails gets ``text=None``, its error message, and ``transient`` saying
whether the failure may go away (a campaign tries such attempts again on its next round or
run) or would repeat (a 400 for this prompt, a local model error).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from alignkit.errors import AlignkitError
from alignkit.models.base import GenerationConfig, ModelBackend
from alignkit.models.resilient import is_transient, send_each

TOO_LONG = "too long for the target's context"
"""How a skipped over-long prompt's error starts (a final error: it is not sent again)."""

FAILURES = (AlignkitError, OSError, RuntimeError, ValueError)
"""What a failing backend call raises (anything else is a bug and propagates)."""


@dataclass
class TargetReply:
    text: str | None
    error: str | None = None
    latency_s: float = 0.0
    transient: bool = False  # the failure may go away: try again later


def _failed(exc: BaseException, latency: float) -> TargetReply:
    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    return TargetReply(None, message, latency, is_transient(exc))


def query_target(
    target: ModelBackend, prompts: Sequence[str], config: GenerationConfig, resend: int = 1
) -> list[TargetReply]:
    """One reply per prompt; a failing prompt gets ``text=None`` and its error message.

    ``resend``: how many more times a prompt that failed with a transient error is sent (on a
    backend that answers prompt by prompt; the backend's own retries come on top).
    """
    if not prompts:
        return []
    fits = getattr(target, "fits", None)
    if callable(fits):  # measured before generating: an over-long prompt is never sent
        ok = fits(list(prompts), config)
        if not all(ok):
            sent = [p for p, f in zip(prompts, ok, strict=True) if f]
            answers = iter(query_target(target, sent, config, resend) if sent else [])
            context = getattr(target, "context", None)
            skipped = TargetReply(
                None,
                f"{TOO_LONG}: the prompt and max_new_tokens={config.max_new_tokens} exceed the "
                f"model's context of {context} tokens; not sent",
            )
            return [next(answers) if f else skipped for f in ok]
    if callable(getattr(target, "generate_each", None)):
        return _each(target, list(prompts), config, resend)
    return _split(target, list(prompts), config)


def _each(
    target: ModelBackend, prompts: list[str], config: GenerationConfig, resend: int
) -> list[TargetReply]:
    """Prompt by prompt: keep every answer, send the transient failures again."""
    start = time.perf_counter()
    try:
        outcomes = send_each(target, prompts, config, tries=1 + resend)
    except FAILURES:  # the call as a whole failed: isolate prompts the classic way
        return _split(target, prompts, config)
    each = (time.perf_counter() - start) / len(prompts)
    return [
        _failed(o, each) if isinstance(o, BaseException) else TargetReply(o.text, None, each)
        for o in outcomes
    ]


def _split(target: ModelBackend, prompts: list[str], config: GenerationConfig) -> list[TargetReply]:
    """One ``generate`` call; on failure keep what arrived, or split the batch and retry."""
    start = time.perf_counter()
    try:
        completions = target.generate(prompts, config)
    except FAILURES as exc:
        latency = time.perf_counter() - start
        if len(prompts) == 1:
            return [_failed(exc, latency)]
        partial = getattr(exc, "completions", None)
        if isinstance(partial, list) and len(partial) == len(prompts) and any(partial):
            kept = [i for i, c in enumerate(partial) if c is not None]
            rest = [i for i, c in enumerate(partial) if c is None]
            replies: list[TargetReply | None] = [None] * len(prompts)
            for i in kept:
                replies[i] = TargetReply(partial[i].text, None, latency / len(prompts))
            for i, reply in zip(
                rest, _split(target, [prompts[i] for i in rest], config), strict=True
            ):
                replies[i] = reply
            return replies  # type: ignore[return-value]
        half = len(prompts) // 2
        return _split(target, prompts[:half], config) + _split(target, prompts[half:], config)
    each = (time.perf_counter() - start) / len(prompts)
    return [TargetReply(c.text, None, each) for c in completions]
