"""Page sessions with an idle timeout and an absolute lifetime, and a per-address limit on
failed token checks, both kept in memory for the review server.

Times come from an injectable ``clock`` (``time.monotonic`` by default, so a change of the wall
clock neither ends nor extends a session); tests pass a fake clock to step past a limit.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from collections.abc import Callable


class Sessions:
    """Session id -> session dict (reviewer, CSRF token, login times).

    A session ends ``idle`` seconds after its last request or ``lifetime`` seconds after login,
    whichever comes first; an ended session is dropped when next looked up, so it behaves
    exactly like an unknown cookie. Expired sessions are also swept at each login, which keeps
    the dict as small as the number of live sessions.
    """

    def __init__(
        self,
        idle: float = 8 * 3600,
        lifetime: float = 24 * 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if idle <= 0 or lifetime <= 0:
            raise ValueError("session idle timeout and lifetime must be positive")
        self.idle = idle
        self.lifetime = lifetime
        self.clock = clock
        self._by_id: dict[str, dict] = {}

    @property
    def max_age(self) -> int:
        """The cookie's Max-Age: the absolute lifetime in whole seconds (at least 1)."""
        return max(1, math.ceil(self.lifetime))

    def _expired(self, sess: dict, now: float) -> bool:
        return now - sess["born"] >= self.lifetime or now - sess["seen"] >= self.idle

    def create(self, reviewer: str) -> str:
        """Start a session for ``reviewer``; returns its new random id."""
        now = self.clock()
        for sid in [s for s, sess in self._by_id.items() if self._expired(sess, now)]:
            del self._by_id[sid]
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = {
            "reviewer": reviewer,
            "csrf": secrets.token_urlsafe(32),
            "start": time.time(),  # wall time, compared with the labels' ``created``
            "born": now,
            "seen": now,
        }
        return sid

    def get(self, sid: str | None) -> dict | None:
        """The live session of this id (its idle timer restarted), else None."""
        sess = self._by_id.get(sid) if sid else None
        if sess is None:
            return None
        now = self.clock()
        if self._expired(sess, now):
            del self._by_id[sid]
            return None
        sess["seen"] = now
        return sess

    def drop(self, sid: str | None) -> None:
        """End a session (logout); an unknown id is ignored."""
        self._by_id.pop(sid or "", None)

    def __len__(self) -> int:
        return len(self._by_id)


class FailureLimit:
    """At most ``limit`` failed token checks per ``window`` seconds from one client address.

    A sliding window: the times of an address's last ``limit`` failures are kept (a bounded
    deque), and the address is blocked while the oldest of them is younger than ``window``.
    Successes are not recorded. Addresses whose failures have all aged out are swept once the
    table passes ``sweep_at`` entries, so a flood of addresses cannot grow it without bound.
    """

    def __init__(
        self,
        limit: int = 10,
        window: float = 300,
        clock: Callable[[], float] = time.monotonic,
        sweep_at: int = 1024,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("failure limit must be at least 1 and its window positive")
        self.limit = limit
        self.window = window
        self.clock = clock
        self.sweep_at = sweep_at
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str) -> int:
        """Seconds (rounded up, at least 1) until ``address`` may try again; 0 if not blocked."""
        times = self._failures.get(address)
        if times is None or len(times) < self.limit:
            return 0
        left = times[0] + self.window - self.clock()
        return max(1, math.ceil(left)) if left > 0 else 0

    def fail(self, address: str) -> None:
        """Record one failed token check from ``address``."""
        now = self.clock()
        if address not in self._failures and len(self._failures) >= self.sweep_at:
            stale = [a for a, t in self._failures.items() if t[-1] + self.window <= now]
            for a in stale:
                del self._failures[a]
        self._failures.setdefault(address, deque(maxlen=self.limit)).append(now)


def client_address(request) -> str:
    """The peer address of the connection (the server is meant to be reached directly, so no
    forwarding header is trusted: a client could set one to dodge the limit)."""
    return request.client.host if request.client else "unknown"
