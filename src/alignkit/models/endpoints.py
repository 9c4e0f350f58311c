"""Several replicas of one model behind one model string: ``openai:MODEL@URL1,URL2,...``.

At scale, generation is served by several copies of the same weights (one vLLM server per GPU
or per node). :class:`EndpointPool` spreads one backend's requests over them: every request
(and every retry of it) goes to the endpoint with the fewest requests in flight, the least used
one on a tie. An endpoint whose request just failed in a way that may go away (no connection,
a 5xx, a 429) is passed over for ``cooldown`` seconds while another is up, so the retry goes to
a healthy replica instead of waiting on the sick one; when all are cooling down, the one that
recovers first is tried. Each request still carries its own seed (:mod:`alignkit.models.sampling`),
so which replica answers does not change what is sampled (given replicas of the same weights
and server).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from alignkit.models.retry import is_retryable

COOLDOWN = 5.0
"""Seconds an endpoint is passed over after a failure that may go away."""


@dataclass
class Endpoint:
    """One replica: its URL, its client and what it has been sent."""

    base_url: str
    client: Any  # an openai.OpenAI client for base_url
    in_flight: int = 0
    sent: int = 0
    failed: int = 0
    cooling_until: float = 0.0


class EndpointPool:
    """Thread-safe choice of the replica for each request.

    Args:
        urls: the replicas' base URLs (one or more; duplicates refused by the caller).
        make_client: builds the HTTP client of one URL.
        cooldown: seconds a replica is passed over after a transient failure.
        clock: monotonic time (tests pass their own).
    """

    def __init__(
        self,
        urls: list[str],
        make_client: Callable[[str], Any],
        cooldown: float = COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("an endpoint pool needs at least one URL")
        self.endpoints: list[Endpoint] = []
        try:
            for url in urls:
                self.endpoints.append(Endpoint(url, make_client(url)))
        except BaseException:
            self.close()
            raise
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.endpoints)

    def acquire(self) -> Endpoint:
        """The replica for the next request (counted in flight until :meth:`release`)."""
        with self._lock:
            now = self._clock()

            def rank(e: Endpoint) -> tuple:
                cooling = e.cooling_until > now
                return (cooling, e.cooling_until if cooling else 0.0, e.in_flight, e.sent)

            endpoint = min(self.endpoints, key=rank)
            endpoint.in_flight += 1
            endpoint.sent += 1
            return endpoint

    def release(self, endpoint: Endpoint, error: BaseException | None = None) -> None:
        """The request to ``endpoint`` is over; a transient ``error`` cools the replica."""
        with self._lock:
            endpoint.in_flight -= 1
            if error is not None and is_retryable(error):
                endpoint.failed += 1
                endpoint.cooling_until = self._clock() + self.cooldown

    @contextmanager
    def use(self) -> Iterator[Endpoint]:
        """``with pool.use() as endpoint:`` one request to the chosen replica."""
        endpoint = self.acquire()
        try:
            yield endpoint
        except BaseException as exc:
            self.release(endpoint, exc)
            raise
        self.release(endpoint)

    def idle_replica(self) -> bool:
        """Whether a retry would go at once to a replica that is not cooling down (then the
        backend retries without waiting for its backoff)."""
        with self._lock:
            now = self._clock()
            return len(self.endpoints) > 1 and any(e.cooling_until <= now for e in self.endpoints)

    def stats(self) -> list[dict[str, Any]]:
        """Requests sent to and failed on each replica, in the order of the model string."""
        with self._lock:
            return [{"url": e.base_url, "sent": e.sent, "failed": e.failed} for e in self.endpoints]

    def close(self) -> None:
        """Close every replica's client."""
        for endpoint in self.endpoints:
            endpoint.client.close()
