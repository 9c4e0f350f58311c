"""A fault-injecting OpenAI-compatible server in front of the testbed model (issue #19 tests).

The server answers chat requests with alignkit's local backend, one prompt at a time (so an
answer never depends on what else was asked; a request's ``seed`` and ``temperature`` are
honoured, so sampled answers are reproducible per request), and fails a seeded fraction of
requests with HTTP 500, HTTP 429 or a dropped connection.
"""

from __future__ import annotations

import json
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from alignkit.errors import AlignkitError
from alignkit.models.base import BackendOptions, GenerationConfig, ModelSpec
from alignkit.models.openai_compat import OpenAIBackend
from alignkit.models.retry import RetryPolicy

ONE_RETRY = RetryPolicy(max_retries=1, budget=1.0, base_delay=0.01, max_delay=0.02)


class FaultyTestbed:
    """The testbed on 127.0.0.1, failing a seeded fraction ``fail`` of chat requests.

    Whether a request fails depends on (seed, prompt, how often that prompt was asked), never
    on timing, so concurrent clients see the same faults. ``ok`` counts answered chat requests.
    A prompt the model cannot take (too long for its context) gets HTTP 400, as from a real
    server: an error that would repeat.
    """

    def __init__(self, backend, fail: float = 0.0, seed: int = 0) -> None:
        self.backend = backend
        self.lock, self.model_lock = threading.Lock(), threading.Lock()
        self.reset(fail, seed)

    def reset(self, fail: float = 0.0, seed: int = 0) -> None:
        self.fail, self.seed = fail, seed
        self.transform = None  # messages -> messages: a deployment change (the monitor tests)
        self.ok = self.failed = 0
        self.seen: dict[str, int] = {}

    def fault(self, body: dict) -> int | str | None:
        key = json.dumps(body["messages"])
        with self.lock:
            self.seen[key] = n = self.seen.get(key, 0) + 1
        rng = random.Random(f"{self.seed}|{key}|{n}")
        return rng.choice([500, 429, "drop"]) if rng.random() < self.fail else None

    def answer(self, body: dict) -> dict:
        config = GenerationConfig(
            max_new_tokens=body["max_tokens"],
            temperature=body.get("temperature", 0.0),
            top_p=body.get("top_p", 1.0),
            seed=body.get("seed", 0),
        )
        messages = body["messages"] if self.transform is None else self.transform(body["messages"])
        with self.model_lock:
            [c] = self.backend.generate([messages], config)
        message = {"role": "assistant", "content": c.text}
        choice = {"index": 0, "message": message, "finish_reason": c.finish_reason}
        usage = {"prompt_tokens": 1, "completion_tokens": c.num_tokens, "total_tokens": 1}
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [choice], "usage": usage}  # fmt: skip

    def __enter__(self) -> FaultyTestbed:
        handler = type("Handler", (_Handler,), {"state": self})
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.http.daemon_threads = True
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self.http.shutdown()
        self.http.server_close()


class _Handler(BaseHTTPRequestHandler):
    state: FaultyTestbed

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for key, value in {"content-type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        model = {"id": "testbed", "object": "model", "created": 0, "owned_by": "test"}
        self._send(200, {"object": "list", "data": [model]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path != "/v1/chat/completions":
            return self._send(404, {"detail": "Not Found"})
        fault, state = self.state.fault(body), self.state
        if fault is None:
            try:
                reply = state.answer(body)
            except AlignkitError as exc:
                return self._send(400, {"error": {"message": exc.message}})
            with state.lock:
                state.ok += 1
            return self._send(200, reply)
        with state.lock:
            state.failed += 1
        if fault == "drop":
            self.close_connection = True
            return self.connection.shutdown(socket.SHUT_RDWR)
        extra = {"retry-after": "0"} if fault == 429 else {}
        return self._send(fault, {"error": {"message": f"injected {fault}"}}, extra)


def client(url: str, model: str = "testbed") -> OpenAIBackend:
    """A client of the server: one retry per request, four requests in flight."""
    spec = ModelSpec(kind="openai", model=model, base_url=url)
    return OpenAIBackend(spec, BackendOptions(max_concurrency=4), probe=False, retry=ONE_RETRY)
