"""Local servers for tests: a real ``transformers serve`` and a fault-injecting fake.

Everything listens on 127.0.0.1 only, on a free port, and every wait is bounded.

* :func:`transformers_serve`: start ``transformers serve MODEL_DIR`` (the model is pinned with
  the positional FORCE_MODEL argument, so requests must name ``str(MODEL_DIR)``), wait for
  ``/health``, and kill the whole process group at the end.
* :class:`FaultServer`: a small OpenAI-compatible HTTP server that answers scripted failures
  (500, 429 with ``Retry-After``, 404, ...) before valid answers, adds a delay per request,
  records every request and the largest number in flight at once. Its fake model is
  deterministic, with a character-level tokenizer, so scores can be checked by hand.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"

SERVE_MAIN = "import sys; from transformers.cli.transformers import main; sys.exit(main())"
"""Runs the ``transformers`` CLI with this interpreter (no reliance on PATH)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> float:
    """Poll ``url`` until it answers HTTP 200; return the seconds waited.

    Raises ``RuntimeError`` if ``process`` exits first or ``timeout`` seconds pass.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"server exited with code {process.returncode} before {url} answered"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s")


# ----- transformers serve -----


@dataclass
class ServedModel:
    """A running ``transformers serve`` process."""

    process: subprocess.Popen
    base_url: str
    model: str
    log_path: Path
    startup_seconds: float

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def _kill_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after ``grace`` s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)
    except ProcessLookupError:
        pass


@contextmanager
def transformers_serve(
    model_dir: str | Path,
    *,
    log_dir: str | Path | None = None,
    startup_timeout: float = 120.0,
    extra_args: Sequence[str] = (),
) -> Iterator[ServedModel]:
    """Serve ``model_dir`` with ``transformers serve`` on a free loopback port.

    The command is ``transformers serve MODEL_DIR --host 127.0.0.1 --port PORT --device cpu``;
    the model is loaded before the port opens, so ``/health`` answering means it is ready.
    The server runs offline (``HF_HUB_OFFLINE=1``) in its own process group, which is killed
    on exit. Yields a :class:`ServedModel` whose ``model`` is the name requests must use. Its
    output goes to ``log_dir`` (default: a temporary folder, removed on exit).
    """
    model = str(model_dir)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="transformers-serve-") as scratch:
        log_path = Path(log_dir or scratch) / f"transformers-serve-{port}.log"
        with _serving(model, port, log_path, startup_timeout, extra_args) as served:
            yield served


@contextmanager
def _serving(model, port, log_path, startup_timeout, extra_args) -> Iterator[ServedModel]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-c", SERVE_MAIN, "serve", model, "--host", HOST]
    command += ["--port", str(port), "--device", "cpu", *extra_args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        try:
            waited = wait_for_http(f"http://{HOST}:{port}/health", startup_timeout, process)
        except RuntimeError as exc:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"transformers serve failed to start: {exc}\n{tail}") from None
        yield ServedModel(process, f"http://{HOST}:{port}/v1", model, log_path, waited)
    finally:
        _kill_group(process)


# ----- fault-injecting fake server -----


@dataclass
class Reply:
    """A scripted HTTP answer."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None


def fake_logprob(token_id: int) -> float:
    """The fake model's log-prob of a token (a character, by code point)."""
    return -((token_id % 7) + 1) / 10


def fake_template(messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
    """The fake model's chat template: ``<role>content`` per message, then ``<assistant>``."""
    text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
    return text + ("<assistant>" if add_generation_prompt else "")


@dataclass
class FaultServer:
    """An OpenAI-compatible fake on 127.0.0.1 with scripted failures. Use as a context manager.

    Args:
        failures: answers given, in order, to the first requests to ``fault_paths``.
        persistent: answer given to every request to ``fault_paths`` after ``failures``.
        delay: seconds each request waits before answering.
        scoring: serve ``/tokenize`` and prompt log-probs for ``echo=True`` (like vLLM);
            False answers ``/tokenize`` with 404 and ignores ``echo`` (like transformers serve).
        echo_auth: put the request's Authorization header into error bodies (to check that
            clients never show it).
    """

    failures: list[Reply] = field(default_factory=list)
    persistent: Reply | None = None
    delay: float = 0.0
    scoring: bool = True
    echo_auth: bool = False
    model: str = "fake-model"
    fault_paths: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions")
    requests: list[dict[str, Any]] = field(default_factory=list)
    max_in_flight: int = 0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://{HOST}:{self._server.server_address[1]}/v1"

    def count(self, path: str) -> int:
        """How many requests went to ``path``."""
        with self._lock:
            return sum(1 for r in self.requests if r["path"] == path)

    def __enter__(self) -> FaultServer:
        handler = type("Handler", (_FaultHandler,), {"fake": self})
        self._server = ThreadingHTTPServer((HOST, 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # called by the handler

    def begin(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply | None:
        """Record a request; return the scripted failure for it, if any."""
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            if path not in self.fault_paths:
                return None
            if self.failures:
                return self.failures.pop(0)
            return self.persistent

    def end(self) -> None:
        with self._lock:
            self._in_flight -= 1


class _FaultHandler(BaseHTTPRequestHandler):
    fake: FaultServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        headers = {k.lower(): v for k, v in self.headers.items()}
        fault = self.fake.begin(method, self.path, headers, body)
        try:
            time.sleep(self.fake.delay)
            if fault is not None:
                payload = fault.body or {"error": {"message": f"injected HTTP {fault.status}"}}
                if self.fake.echo_auth:
                    payload = {"error": {"message": f"bad auth {headers.get('authorization')}"}}
                self._send(fault.status, payload, fault.headers)
            else:
                status, payload = self._answer(method, self.path, body or {})
                self._send(status, payload)
        finally:
            self.fake.end()

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        fake = self.fake
        if method == "GET" and path == "/v1/models":
            model = {"id": fake.model, "object": "model", "created": 0, "owned_by": "test"}
            return 200, {"object": "list", "data": [model]}
        if method == "POST" and path == "/v1/chat/completions":
            return 200, _chat_answer(body)
        if method == "POST" and path == "/v1/completions":
            return 200, _completion_answer(body, fake.scoring)
        if method == "POST" and path == "/tokenize" and fake.scoring:
            if "messages" in body:
                text = fake_template(body["messages"], body.get("add_generation_prompt", True))
            else:
                text = body["prompt"]
            ids = [ord(c) for c in text]
            return 200, {"count": len(ids), "max_model_len": 4096, "tokens": ids}
        return 404, {"detail": "Not Found"}


def _chat_answer(body: dict[str, Any]) -> dict[str, Any]:
    """Reply ``echo: <last user message>``, one token per word, cut at ``max_tokens``.

    Like ``transformers serve``, a stop string ends the reply and is kept in it.
    """
    words = ("echo: " + body["messages"][-1]["content"]).split()
    limit = body.get("max_tokens") or len(words)
    kept = words[:limit]
    content = " ".join(kept)
    for marker in body.get("stop") or []:
        if marker in content:
            content = content[: content.index(marker) + len(marker)]
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": "length" if len(words) > limit else "stop",
    }
    if body.get("logprobs"):
        content = [{"token": w, "logprob": -0.5, "bytes": None, "top_logprobs": []} for w in kept]
        choice["logprobs"] = {"content": content}
    usage = {"prompt_tokens": 3, "completion_tokens": len(kept), "total_tokens": 3 + len(kept)}
    return {
        "id": "chat-1",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [choice],
        "usage": usage,
    }


def _completion_answer(body: dict[str, Any], scoring: bool) -> dict[str, Any]:
    """Generate ``!`` characters; with ``echo`` and ``logprobs``, score the prompt per char."""
    prompt = body["prompt"]
    text = prompt if isinstance(prompt, str) else "".join(chr(i) for i in prompt)
    n_new = body.get("max_tokens") or 1
    choice: dict[str, Any] = {"index": 0, "text": "!" * n_new, "finish_reason": "length"}
    if scoring and body.get("echo") and body.get("logprobs") is not None:
        chars = list(text) + ["!"] * n_new
        values: list[float | None] = [None] + [fake_logprob(ord(c)) for c in chars[1:]]
        choice["text"] = text + "!" * n_new
        choice["logprobs"] = {
            "tokens": chars,
            "token_logprobs": values,
            "top_logprobs": None,
            "text_offset": list(range(len(chars))),
        }
    usage = {"prompt_tokens": len(text), "completion_tokens": n_new}
    usage["total_tokens"] = usage["prompt_tokens"] + n_new
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": body["model"],
        "choices": [choice],
        "usage": usage,
    }
