"""Retries with exponential backoff for calls to OpenAI-compatible servers.

Transient failures (HTTP 429, HTTP 5xx, connection errors, timeouts) are retried; every
other HTTP error (400, 401, 404, 422, ...) is raised at once. Each request gets at most
``max_retries`` retries and at most ``budget`` seconds of sleeping in total; a
``Retry-After`` header, when the server sends one, replaces the computed delay (capped by
what is left of the budget). Errors come out as one :class:`BackendError` that names the
server, the model and what went wrong, and never the API key. A failure that may go away
(the retryable kinds above, after the retries ran out) comes out as its subclass
:class:`TransientBackendError`, so callers that keep work (red-team campaigns) can try it
again later instead of recording it as final. :func:`call_each` runs many such requests
concurrently and keeps each one's result or error, so one failure never discards answers that
did arrive (:class:`PartialBatchError` carries them where a call must raise).
"""

from __future__ import annotations

import email.utils
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai

from alignkit.errors import AlignkitError, BackendError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

RETRYABLE_STATUS = frozenset({408, 429})
"""HTTP statuses below 500 worth retrying: request timeout and rate limit (all 5xx are too)."""


class TransientBackendError(BackendError):
    """A failure that may go away (429, 408, 5xx, no connection, a timeout) and outlasted the
    retries: worth trying again later, unlike a 400 or 404, which would fail the same way."""

    transient = True


class PartialBatchError(BackendError):
    """Some requests of one call failed, others answered (after their retries).

    The message is the first failure's. ``completions`` has one entry per prompt: the answer,
    or None where the request failed or was never sent (a call may stop sending after a
    failure); ``errors`` has the error of each failed prompt, None elsewhere. Callers keep the
    answers and send again only the prompts without one.
    """

    def __init__(self, completions: list[Any], errors: list[AlignkitError | None]) -> None:
        first = next(e for e in errors if e is not None)
        super().__init__(first.message)
        self.completions, self.errors = completions, errors
        self.transient = bool(getattr(first, "transient", False))


@dataclass(frozen=True)
class RetryPolicy:
    """How to retry one request.

    Attempt ``n`` (0-based) sleeps ``min(max_delay, base_delay * 2**n)`` scaled by a random
    factor in ``[0.5, 1]`` (jitter), unless the server sent ``Retry-After``.
    """

    max_retries: int = 5
    budget: float = 60.0
    """Most seconds of sleeping between attempts, per request; 0 disables retries."""
    base_delay: float = 0.5
    max_delay: float = 20.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def backoff(self, retry_index: int) -> float:
        """The jittered delay before retry number ``retry_index`` (0-based)."""
        delay = min(self.max_delay, self.base_delay * (2**retry_index))
        return delay * self.rng.uniform(0.5, 1.0)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def describe_failure(exc: BaseException, timeout: float) -> str:
    """A short, key-free description of a failed request, e.g. 'connection refused'."""
    if isinstance(exc, openai.APITimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {_status_detail(exc)}"
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host name not found"
        if isinstance(cause, TimeoutError):
            return f"timed out after {timeout:g}s"
        nxt = cause.__cause__ or cause.__context__
        if nxt is None:
            break
        cause, seen = nxt, seen + 1
    text = str(cause) if cause is not None else ""
    return text or type(exc).__name__


def _status_detail(exc: openai.APIStatusError) -> str:
    """The server's own error text for an HTTP error, shortened to one line."""
    body = exc.body
    detail: object = body
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("message") or body.get("error") or body
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
    text = " ".join(str(detail if detail is not None else exc.message).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def is_retryable(exc: BaseException) -> bool:
    """True for failures that may go away: connection errors, timeouts, 429 and 5xx."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)


def _retry_after(exc: BaseException) -> float | None:
    if isinstance(exc, openai.APIStatusError):
        return parse_retry_after(exc.response.headers.get("retry-after"))
    return None


@dataclass
class RequestContext:
    """What error messages say about the request: where it went and what it asked for."""

    base_url: str
    model: str
    timeout: float
    redact: Callable[[str], str] = field(default=lambda text: text, repr=False)

    def error(
        self, what: str, exc: BaseException, retries: int = 0, note: str = ""
    ) -> BackendError:
        """One clear :class:`BackendError`, with the key (if any) scrubbed out; a
        :class:`TransientBackendError` when the failure is of a kind that may go away."""
        reason = describe_failure(exc, self.timeout)
        if isinstance(exc, openai.APIConnectionError) and not isinstance(
            exc, openai.APITimeoutError
        ):
            head = f"could not connect to {self.base_url} ({reason})"
        else:
            head = f"{what} to {self.base_url} (model {self.model!r}) failed: {reason}"
        if retries:
            head += f" after {retries} {'retry' if retries == 1 else 'retries'}"
        if note:
            head += f" ({note})"
        kind = TransientBackendError if is_retryable(exc) else BackendError
        return kind(self.redact(head))


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    context: RequestContext | Callable[[], RequestContext],
    what: str = "request",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``fn`` (one HTTP request) with the retry policy; raise :class:`BackendError`.
    ``context`` may be a function giving the context of the attempt just made (the replica it
    went to, with several endpoints)."""
    slept = 0.0
    retries = 0
    while True:
        try:
            return fn()
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            ctx = context() if callable(context) else context
            if not is_retryable(exc):
                raise ctx.error(what, exc) from None
            if retries >= policy.max_retries:
                raise ctx.error(what, exc, retries) from None
            remaining = policy.budget - slept
            if remaining <= 0:
                note = f"retry budget of {policy.budget:g}s spent"
                raise ctx.error(what, exc, retries, note) from None
            hinted = _retry_after(exc)
            delay = min(policy.backoff(retries) if hinted is None else hinted, remaining)
            logger.warning(
                "%s",
                ctx.redact(
                    f"{what} to {ctx.base_url} failed "
                    f"({describe_failure(exc, ctx.timeout)}); retry {retries + 1}/"
                    f"{policy.max_retries} in {delay:.2f}s"
                ),
            )
            sleep(delay)
            slept += delay
            retries += 1


def call_each(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    stop_on_error: bool = False,
    name: str = "alignkit-request",
) -> list[R | AlignkitError | None]:
    """``fn(x)`` or the :class:`AlignkitError` it raised, per item, ``workers`` calls at once.

    One failing call never discards the others' results. With ``stop_on_error`` no new call
    starts after an error (calls in flight finish; items never started get None). Other
    exceptions (bugs, interrupts) are raised once the calls in flight are done.
    """
    out: list[R | AlignkitError | None] = [None] * len(items)
    if workers <= 1:
        for i, x in enumerate(items):
            try:
                out[i] = fn(x)
            except AlignkitError as exc:
                out[i] = exc
                if stop_on_error:
                    break
        return out
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        futures = [pool.submit(fn, x) for x in items]
        try:
            wait(futures, return_when=FIRST_EXCEPTION if stop_on_error else ALL_COMPLETED)
        except BaseException:  # an interrupt: start nothing new, let those in flight end
            for f in futures:
                f.cancel()
            raise
        if stop_on_error:
            for f in futures:
                f.cancel()  # after an error: start nothing new
    for i, f in enumerate(futures):
        error = None if f.cancelled() else f.exception()
        if error is not None and not isinstance(error, AlignkitError):
            raise error
        out[i] = None if f.cancelled() else (error or f.result())
    return out
