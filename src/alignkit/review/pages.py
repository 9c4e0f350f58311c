"""Server-rendered review pages: login, queue index, one labelling page per item (issue 15).

Session: a random id in memory (HttpOnly, SameSite=Strict cookie) mapped to the reviewer and a
per-session CSRF token checked with ``hmac.compare_digest`` on every form POST. Sessions end
after an idle timeout or an absolute lifetime (the cookie's Max-Age), or at logout; an ended
session is treated as none. Failed logins count towards the client address's limit of failed
token checks, after which the form answers 429.
"""

from __future__ import annotations

import hmac
import secrets
import time
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from alignkit.errors import DataError
from alignkit.review.items import QUESTIONS
from alignkit.review.server import COOKIE, _body, public, store_label
from alignkit.review.sessions import client_address


def _render(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
    html = request.app.state.env.get_template(name).render(**ctx)
    return HTMLResponse(html, status_code=status)


def _session(request: Request) -> dict | None:
    """The request's live session (expired and unknown ids give None)."""
    return request.app.state.sessions.get(request.cookies.get(COOKIE))


def _cookie_args(request: Request) -> dict:
    secure = request.url.scheme == "https"
    return {"httponly": True, "samesite": "strict", "secure": secure, "path": "/"}


def _to_login(request: Request) -> Response:
    """Redirect to the login page, clearing a cookie whose session has ended."""
    resp = RedirectResponse("/login", status_code=303)
    if COOKIE in request.cookies:
        resp.delete_cookie(COOKIE, **_cookie_args(request))
    return resp


async def _form(request: Request) -> dict | None:
    body = await _body(request)
    if body is None:
        return None
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _csrf_ok(sess: dict, form: dict) -> bool:
    return hmac.compare_digest(sess["csrf"].encode(), form.get("csrf", "").encode())


async def login(request: Request) -> Response:
    """GET: the form. POST: check the token; on success a fresh session (any old one of this
    browser is ended) and a cookie living as long as the session may. While the client address
    is over its failure limit every POST gets 429, a right token too (else a guesser would
    learn which guess was right)."""
    if request.method == "GET":
        return _render(request, "login.html.j2", error=None)
    failures, address = request.app.state.failures, client_address(request)
    wait = failures.retry_after(address)
    if wait:
        error = f"Too many failed logins from this address; try again in {wait} seconds."
        resp = _render(request, "login.html.j2", status=429, error=error)
        resp.headers["Retry-After"] = str(wait)
        return resp
    form = await _form(request)
    if form is None:
        return PlainTextResponse("request body too large", status_code=413)
    reviewer = request.app.state.review.reviewer(form.get("token", "").strip())
    if reviewer is None:
        failures.fail(address)
        return _render(request, "login.html.j2", status=401, error="Unknown token.")
    sessions = request.app.state.sessions
    sessions.drop(request.cookies.get(COOKIE))
    sid = sessions.create(reviewer)
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(COOKIE, sid, max_age=sessions.max_age, **_cookie_args(request))
    return resp


async def logout(request: Request) -> Response:
    sess = _session(request)
    if sess is None:
        return PlainTextResponse("not logged in", status_code=401)
    form = await _form(request) or {}
    if not _csrf_ok(sess, form):
        return PlainTextResponse("missing or wrong CSRF token", status_code=403)
    request.app.state.sessions.drop(request.cookies.get(COOKIE))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE, **_cookie_args(request))
    return resp


def _rate(st, reviewer: str, start: float) -> float:
    """Labels per hour this session (labels created since login)."""
    n = sum(1 for r in st.labels(reviewer) if r["created"] >= start)
    hours = max(time.time() - start, 60.0) / 3600
    return round(n / hours, 1)


async def index(request: Request) -> Response:
    sess = _session(request)
    if sess is None:
        return _to_login(request)
    st = request.app.state.review
    st.refresh()
    return _render(
        request,
        "index.html.j2",
        rows=st.progress(sess["reviewer"]),
        sess=sess,
        rate=_rate(st, sess["reviewer"], sess["start"]),
    )


async def label_page(request: Request) -> Response:
    """GET: the item at position ``i`` of the queue (default: first not yet answered)."""
    sess = _session(request)
    if sess is None:
        return _to_login(request)
    st = request.app.state.review
    st.refresh()
    kind, order = request.path_params["kind"], request.path_params["order"]
    if (kind, order) not in st.queues:
        return PlainTextResponse("no such queue", status_code=404)
    items = st.queues[(kind, order)]
    reviewer = sess["reviewer"]
    pos_s = request.query_params.get("i")
    if pos_s is not None and pos_s.isdigit():
        pos = min(int(pos_s), len(items) - 1)
    else:
        pos = next((k for k, i in enumerate(items) if not st.finished(i, reviewer)), len(items))
    n_done = st.n_done(kind, reviewer)
    if pos >= len(items):
        return _render(
            request,
            "done.html.j2",
            kind=kind,
            order=order,
            total=len(items),
            n_done=n_done,
            sess=sess,
        )
    item = items[pos]
    current = dict(st.done(reviewer).get(item.id, {}))
    answered = set(QUESTIONS[kind]) <= set(current)
    view = public(item, reviewer, answered)
    return _render(
        request,
        "label.html.j2",
        item=view,
        kind=kind,
        order=order,
        pos=pos,
        total=len(items),
        n_done=n_done,
        current=current,
        sess=sess,
        questions=QUESTIONS[kind],
        rate=_rate(st, reviewer, sess["start"]),
        nonce=secrets.token_urlsafe(12),
    )


async def label_post(request: Request) -> Response:
    """Form POST of one answer (or ``value=`` empty = undo); redirects to the next item."""
    sess = _session(request)
    if sess is None:
        return PlainTextResponse("not logged in", status_code=401)
    form = await _form(request)
    if form is None:
        return PlainTextResponse("request body too large", status_code=413)
    if not form.get("csrf") or not _csrf_ok(sess, form):
        return PlainTextResponse("missing or wrong CSRF token", status_code=403)
    kind, order = request.path_params["kind"], request.path_params["order"]
    st = request.app.state.review
    if (kind, order) not in st.queues:
        return PlainTextResponse("no such queue", status_code=404)
    st.refresh()
    data = {
        "item_id": form.get("item_id"),
        "question": form.get("question"),
        "value": form.get("value") or None,
        "queue": order,
        "idempotency_key": f"{form['key']}:{form.get('value', '')}" if form.get("key") else None,
    }
    for k in ("category", "note"):
        if form.get(k):
            data[k] = form[k]
    if form.get("severity", "").isdigit():
        data["severity"] = int(form["severity"])
    item = st.by_id.get(data["item_id"] or "")
    if item is None or item.kind != kind:
        return PlainTextResponse("unknown item", status_code=404)
    try:
        store_label(st, sess["reviewer"], data)
    except DataError as exc:
        return PlainTextResponse(exc.message, status_code=422)
    pos = form.get("pos", "0")
    pos = int(pos) if pos.isdigit() else 0
    done = set(st.done(sess["reviewer"]).get(item.id, ()))
    # pairs stay on the item once answered so the AI label is revealed; n moves on
    stay = data["value"] is None or kind == "pair" or not set(QUESTIONS[kind]) <= done
    nxt = pos if stay else pos + 1
    return RedirectResponse(f"/review/{kind}/{order}?i={nxt}", status_code=303)


def routes() -> list[Route]:
    return [
        Route("/", index),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/review/{kind}/{order}", label_page),
        Route("/review/{kind}/{order}/label", label_post, methods=["POST"]),
    ]


__all__ = ["routes"]
