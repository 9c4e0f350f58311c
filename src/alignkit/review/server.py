"""Local review web app: a Bearer-token JSON API and server-rendered pages (issue 15).

Items are loaded once at start (``load_items``); labels go to each item's run ``LabelStore``.
Pages use an HttpOnly SameSite=Strict session cookie (random id kept in memory, ended after an
idle timeout or an absolute lifetime) and a per-session CSRF token; the API uses
``Authorization: Bearer TOKEN`` and no cookies. Failed token checks (login form and API) are
limited per client address (:mod:`alignkit.review.sessions`). Labels that another process adds
to a store (``review simulate``, a second server) are folded into the answer cache at the next
request (:meth:`_State.refresh`).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from alignkit.errors import DataError
from alignkit.review.items import ORDERS, QUESTIONS, Item, load_items, queue
from alignkit.review.sessions import FailureLimit, Sessions, client_address
from alignkit.review.store import LabelStore, pair_order

MAX_BODY = 64 * 1024
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
COOKIE = "alignkit_review"
_STATIC = Path(__file__).parent / "static"


class _State:
    """Items, queues and label stores of the served runs, and each reviewer's answers."""

    def __init__(self, run_dirs: Sequence[Path], seed: int) -> None:
        self.items = load_items([Path(r) for r in run_dirs])
        self.by_id = {i.id: i for i in self.items}
        self.stores = {}
        for item in self.items:
            if item.run not in self.stores:
                self.stores[item.run] = LabelStore(Path(item.run))
        self.queues = {}
        for kind in QUESTIONS:
            of_kind = [i for i in self.items if i.kind == kind]
            if of_kind:
                for order in ORDERS:
                    self.queues[(kind, order)] = queue(of_kind, order, seed=seed)
        self._done: dict[str, dict[str, dict[str, str]]] = {}
        # per store, the highest label row id already reflected in ``_done``
        self._seen = {run: store.max_id() for run, store in self.stores.items()}

    def reviewer(self, token: str) -> str | None:
        for store in self.stores.values():
            name = store.reviewer(token)
            if name:
                return name
        return None

    def labels(self, reviewer: str) -> list[dict]:
        out = []
        for store in self.stores.values():
            out += [r for r in store.labels(reviewer=reviewer) if r["item_id"] in self.by_id]
        return out

    def done(self, reviewer: str) -> dict[str, dict[str, str]]:
        """item id -> {question: current answer} for this reviewer: read from the stores once,
        then kept current by :meth:`record` (labels written through this server) and
        :meth:`refresh` (labels written by other processes), so a request costs what the
        reviewer's labels cost, not what the queue's 100,000 items cost."""
        if reviewer not in self._done:
            current: dict[str, dict[str, str]] = {}
            for r in self.labels(reviewer):
                current.setdefault(r["item_id"], {})[r["question"]] = r["value"]
            self._done[reviewer] = current
        return self._done[reviewer]

    def refresh(self) -> None:
        """Fold in the label rows other processes added since the last call (called once at
        the start of each request that reads answers). Costs one ``max(id)`` primary-key lookup
        per store, plus reading just the newer rows when there are any. Replaying rows in id
        order is idempotent, so rows already applied by :meth:`record`, or already in a cache
        loaded after the watermark was taken, come out the same."""
        for run, store in self.stores.items():
            seen = self._seen[run]
            top = store.max_id()
            if top <= seen:
                continue
            rows = store.labels_after(seen)
            for row in rows:
                if row["reviewer"] in self._done and row["item_id"] in self.by_id:
                    self.record(row)
            self._seen[run] = max([top] + [r["id"] for r in rows])

    def record(self, row: dict) -> None:
        """Apply a stored label row (an answer, or an undo with value None) to the cache."""
        answers = self.done(row["reviewer"]).setdefault(row["item_id"], {})
        if row["value"] is None:
            answers.pop(row["question"], None)
        else:
            answers[row["question"]] = row["value"]

    def finished(self, item: Item, reviewer: str) -> bool:
        """Every question of the item answered by this reviewer."""
        return set(QUESTIONS[item.kind]) <= set(self.done(reviewer).get(item.id, ()))

    def n_done(self, kind: str, reviewer: str) -> int:
        """Items of ``kind`` this reviewer has finished (the same in every order of a kind)."""
        return sum(
            1
            for item_id in self.done(reviewer)
            if self.by_id[item_id].kind == kind and self.finished(self.by_id[item_id], reviewer)
        )

    def progress(self, reviewer: str) -> list[dict]:
        """Per queue: kind, order, total items and how many this reviewer has finished."""
        done = {kind: self.n_done(kind, reviewer) for kind in {k for k, _ in self.queues}}
        return [
            {"kind": kind, "order": order, "total": len(items), "done": done[kind]}
            for (kind, order), items in self.queues.items()
        ]

    def pending(self, kind: str, order: str, reviewer: str, limit: int | None = None) -> list:
        """The queue's items this reviewer has not finished, in order (the first ``limit``)."""
        out = []
        for item in self.queues[(kind, order)]:
            if not self.finished(item, reviewer):
                out.append(item)
                if limit is not None and len(out) >= limit:
                    break
        return out


class _Headers:
    """ASGI middleware adding CSP, nosniff, no-referrer and (outside /static) no-store."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope["path"].startswith("/static")

        async def wrapped(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Frame-Options"] = "DENY"
                if not static:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, wrapped)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def public(item: Item, reviewer: str, answered: bool) -> dict:
    """The item as a reviewer sees it: pairs as A/B in their order, no AI label until answered."""
    out = {
        "id": item.id,
        "kind": item.kind,
        "run": item.run,
        "source": item.source,
        "stratum": item.stratum,
        "questions": {k: list(v) for k, v in QUESTIONS[item.kind].items()},
    }
    c = item.content
    if item.kind == "pair":
        order = pair_order(item.id, reviewer)
        a, b = (c["chosen"], c["rejected"]) if order == "ab" else (c["rejected"], c["chosen"])
        out.update(prompt=c["prompt"], a=a, b=b, order=order)
        if answered:
            out["judges"] = item.judges
    else:
        out.update({k: v for k, v in c.items()})
        out["judges"] = item.judges
    return out


async def _body(request: Request) -> bytes | None:
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
        return None
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            return None
    return data


def _bearer(request: Request) -> str | Response:
    """The reviewer named by the request's Bearer token, or the error response: 401 for a
    missing or unknown token, 429 (with Retry-After) while the client's address is over its
    limit of failed token checks. Only a presented, wrong credential counts as a failure. A
    blocked address gets 429 even with a right token, which would otherwise tell a guesser
    when it had guessed right."""
    auth = request.headers.get("authorization")
    if auth is None:
        return _error(401, "missing or unknown bearer token")
    failures, address = request.app.state.failures, client_address(request)
    wait = failures.retry_after(address)
    if wait:
        resp = _error(429, f"too many failed token checks; try again in {wait} s")
        resp.headers["Retry-After"] = str(wait)
        return resp
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    reviewer = request.app.state.review.reviewer(token)
    if reviewer is None:
        failures.fail(address)
        return _error(401, "missing or unknown bearer token")
    return reviewer


def store_label(st: _State, reviewer: str, data: dict) -> dict:
    """Validate one label dict and append it; raises LookupError (404) or DataError (422)."""
    if not isinstance(data, dict):
        raise DataError("label: body must be a JSON object")
    item = st.by_id.get(data.get("item_id")) if isinstance(data.get("item_id"), str) else None
    if item is None:
        raise LookupError(f"item {data.get('item_id')!r}: not in the served runs")
    for key in ("question", "idempotency_key"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise DataError(f"label {key}: must be a string")
    if "value" not in data:
        raise DataError("label value: missing (null to undo)")
    extra = {k: data[k] for k in ("severity", "category", "note") if data.get(k) not in (None, "")}
    queue_name = data.get("queue", "random")
    if queue_name not in ORDERS:
        raise DataError(f"label queue {queue_name!r}: one of {', '.join(ORDERS)}")
    key = data.get("idempotency_key")
    if key is not None and len(key) > 200:
        raise DataError("label idempotency_key: longer than 200 characters")
    row = st.stores[item.run].add_label(
        item,
        reviewer,
        data.get("question") or "",
        data["value"],
        queue=queue_name,
        extra=extra,
        idempotency_key=key,
    )
    st.record(row)
    return row


async def api_queues(request: Request) -> Response:
    reviewer = _bearer(request)
    if not isinstance(reviewer, str):
        return reviewer
    st = request.app.state.review
    st.refresh()
    queues = st.progress(reviewer)
    return JSONResponse({"reviewer": reviewer, "queues": queues})


async def api_next(request: Request) -> Response:
    reviewer = _bearer(request)
    if not isinstance(reviewer, str):
        return reviewer
    st = request.app.state.review
    kind, order = request.path_params["kind"], request.path_params["order"]
    if (kind, order) not in st.queues:
        return _error(404, f"no queue {kind}/{order}")
    try:
        n = max(1, min(100, int(request.query_params.get("n", "10"))))
    except ValueError:
        return _error(422, "n: not an integer")
    st.refresh()
    items = st.pending(kind, order, reviewer, limit=n)
    return JSONResponse({"items": [public(i, reviewer, False) for i in items]})


async def api_labels(request: Request) -> Response:
    reviewer = _bearer(request)
    if not isinstance(reviewer, str):
        return reviewer
    st = request.app.state.review
    if request.method == "GET":
        return JSONResponse({"labels": st.labels(reviewer)})
    body = await _body(request)
    if body is None:
        return _error(413, f"request body over {MAX_BODY} bytes")
    try:
        row = store_label(st, reviewer, json.loads(body or b"null"))
    except json.JSONDecodeError:
        return _error(400, "body: not JSON")
    except LookupError as exc:
        return _error(404, str(exc))
    except DataError as exc:
        return _error(422, exc.message)
    return JSONResponse({"label": row}, status_code=201)


def create_app(
    run_dirs: Sequence[Path],
    *,
    seed: int = 0,
    session_idle: float = 8 * 3600,
    session_lifetime: float = 24 * 3600,
    failure_limit: int = 10,
    failure_window: float = 300,
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The review app over ``run_dirs`` (DataError if a run has nothing to review).

    A page session ends ``session_idle`` seconds after its last request or ``session_lifetime``
    seconds after login; a client address gets 429 after ``failure_limit`` failed token checks
    (login form and API together) within ``failure_window`` seconds. ``clock`` (seconds,
    monotonic) times both; tests pass a fake one."""
    from alignkit.review import pages

    routes = [
        Route("/api/queues", api_queues),
        Route("/api/queues/{kind}/{order}/next", api_next),
        Route("/api/labels", api_labels, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=_STATIC), name="static"),
        *pages.routes(),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_Headers)])
    app.state.review = _State(run_dirs, seed)
    app.state.sessions = Sessions(session_idle, session_lifetime, clock)
    app.state.failures = FailureLimit(failure_limit, failure_window, clock)
    app.state.env = Environment(
        loader=PackageLoader("alignkit.review", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )

    return app


def serve(
    run_dirs: Sequence[Path], host: str = "127.0.0.1", port: int = 8765, seed: int = 0
) -> None:
    """Run the app with uvicorn; DataError if the port is taken."""
    import uvicorn

    app = create_app(run_dirs, seed=seed)
    with socket.socket() as sock:
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as uvicorn; a listener still fails
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DataError(f"{host}:{port}: cannot listen ({exc.strerror or exc})") from None
    print(f"alignkit review: http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
