"""Raising an alert: a line in ``RUN_DIR/alerts.log`` and, if asked, a JSON POST to a webhook.

The POST runs in a background thread with a timeout per try and three tries, so a webhook that
hangs or fails never holds up the next round; its outcome is written to the log. The webhook
URL is never logged in full (it often carries a secret): only its scheme and host.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx  # imported here, not in the posting thread: imports racing a client's break

TRIES = 3


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class Alerter:
    def __init__(self, log: Path, webhook: str | None = None, timeout: float = 5.0) -> None:
        self.log, self.webhook, self.timeout = Path(log), webhook, timeout
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._lock, self.log.open("a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {line}\n")

    def alert(self, payload: dict[str, Any]) -> None:
        """Log the alert now; POST it in the background when a webhook is set."""
        self.write("ALERT " + json.dumps(payload, sort_keys=True))
        if self.webhook:
            thread = threading.Thread(target=self._post, args=(payload,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _post(self, payload: dict[str, Any]) -> None:
        last = ""
        for attempt in range(1, TRIES + 1):
            try:
                response = httpx.post(self.webhook, json=payload, timeout=self.timeout)
                if response.status_code < 300:
                    self.write(f"webhook {_host(self.webhook)}: delivered (try {attempt})")
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(min(2.0, 0.25 * 2**attempt))
        self.write(f"webhook {_host(self.webhook)}: not delivered after {TRIES} tries ({last})")

    def wait(self, seconds: float) -> None:
        """Give webhook posts in flight up to ``seconds`` to finish (before a process exits)."""
        deadline = time.monotonic() + seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
