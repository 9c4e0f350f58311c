"""Review web app via TestClient: auth, CSRF, 404s, body limit, idempotency, escaping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from review_fixtures import make_run, write_jsonl
from starlette.testclient import TestClient

from alignkit.review.server import create_app
from alignkit.review.store import LabelStore

HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1"></textarea>'


@pytest.fixture()
def setup(tmp_path: Path):
    run = make_run(tmp_path / "a", n_per=4, bad_lines=0)
    write_jsonl(
        run / "train" / "pairs.jsonl",
        [{"prompt": HOSTILE, "chosen": "javascript:alert(1)", "rejected": HOSTILE}],
    )
    other = make_run(tmp_path / "b", n_per=4, bad_lines=0)
    write_jsonl(
        other / "feedback" / "preferences.jsonl",
        [{"prompt": "other run only", "chosen": "x", "rejected": "y"}],
    )
    token = LabelStore(run).add_reviewer("ann")
    token2 = LabelStore(run).add_reviewer("bob")
    app = create_app([run], seed=0)
    from alignkit.review.items import load_items

    foreign = [i for i in load_items([other]) if i.content["prompt"] == "other run only"][0]
    return TestClient(app), token, token2, foreign, run


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_api_auth(setup):
    client, token, *_ = setup
    assert client.get("/api/queues").status_code == 401
    assert client.get("/api/queues", headers=_auth("wrong")).status_code == 401
    r = client.get("/api/queues", headers=_auth(token))
    assert r.status_code == 200 and r.json()["reviewer"] == "ann"
    kinds = {(q["kind"], q["order"]) for q in r.json()["queues"]}
    assert ("finding", "random") in kinds and ("pair", "critical") in kinds
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert r.headers["x-content-type-options"] == "nosniff"


def test_label_idempotent_undo_and_hidden_ai_label(setup):
    client, token, token2, *_ = setup
    items = client.get("/api/queues/pair/random/next?n=100", headers=_auth(token)).json()["items"]
    assert items and all("judges" not in i and "chosen" not in i for i in items)
    first = items[0]
    body = {"item_id": first["id"], "question": "preference", "value": "a", "idempotency_key": "k1"}
    for _ in range(3):
        assert client.post("/api/labels", json=body, headers=_auth(token)).status_code == 201
    labels = client.get("/api/labels", headers=_auth(token)).json()["labels"]
    assert len(labels) == 1 and labels[0]["extra"]["order"] == first["order"]
    assert client.get("/api/labels", headers=_auth(token2)).json()["labels"] == []
    rest = client.get("/api/queues/pair/random/next?n=100", headers=_auth(token)).json()["items"]
    assert first["id"] not in {i["id"] for i in rest}
    undo = dict(body, value=None, idempotency_key="k2")
    assert client.post("/api/labels", json=undo, headers=_auth(token)).status_code == 201
    assert client.get("/api/labels", headers=_auth(token)).json()["labels"] == []


def test_api_errors(setup):
    client, token, _, foreign, _ = setup
    h = _auth(token)
    item = client.get("/api/queues/finding/random/next", headers=h).json()["items"][0]
    bad = {"item_id": item["id"], "question": "harmful", "value": "maybe"}
    r = client.post("/api/labels", json=bad, headers=h)
    assert r.status_code == 422 and "maybe" in r.json()["error"]
    r = client.post("/api/labels", json=dict(bad, item_id=foreign.id, value="a"), headers=h)
    assert r.status_code == 404
    r = client.post("/api/labels", json=dict(bad, item_id="../../etc/passwd"), headers=h)
    assert r.status_code == 404
    r = client.post("/api/labels", content=b"{" * 70_000, headers=h)
    assert r.status_code == 413
    assert client.post("/api/labels", content=b"{nope", headers=h).status_code == 400
    assert client.get("/api/queues/nope/random/next", headers=h).status_code == 404


def _login(client: TestClient, token: str) -> str:
    r = client.post("/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = client.get("/review/pair/random")
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def test_pages_login_csrf_and_escaping(setup):
    client, token, *_ = setup
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    csrf = _login(client, token)
    index = client.get("/")
    assert index.status_code == 200 and index.headers["cache-control"] == "no-store"
    seen_hostile = False
    for i in range(8):
        page = client.get(f"/review/pair/random?i={i}")
        assert "<script>window" not in page.text and "<img src=x" not in page.text
        assert "</textarea>" not in page.text.replace('rows="1"></textarea>', "")
        seen_hostile |= "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page.text
        assert "AI label" not in page.text  # not revealed before answering
    assert seen_hostile
    page = client.get("/review/pair/random?i=0")
    item_id = re.search(r'name="item_id" value="([^"]+)"', page.text).group(1)
    form = {"item_id": item_id, "question": "preference", "value": "b", "pos": "0", "key": "x"}
    assert client.post("/review/pair/random/label", data=form).status_code == 403
    r = client.post("/review/pair/random/label", data=dict(form, csrf="bad"))
    assert r.status_code == 403
    r = client.post("/review/pair/random/label", data=dict(form, csrf=csrf), follow_redirects=False)
    assert r.status_code == 303
    revealed = client.get("/review/pair/random?i=0")
    assert "AI label" in revealed.text
    r = client.post(
        "/review/pair/random/label", data=dict(form, item_id="pair-0000"), follow_redirects=False
    )
    assert r.status_code == 403 or r.status_code == 404
    r = client.post("/review/pair/random/label", data=dict(form, csrf=csrf, item_id="pair-0000"))
    assert r.status_code == 404
    client.cookies.clear()
    r = client.post("/review/pair/random/label", data=dict(form, csrf=csrf))
    assert r.status_code == 401


def test_serve_refuses_port_in_use(setup):
    import socket

    from alignkit.errors import DataError
    from alignkit.review.server import serve

    *_, run = setup
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(DataError, match=f"127.0.0.1:{port}: cannot listen"):
            serve([run], port=port)


def test_static_js_served_without_inline_script(setup):
    client, token, *_ = setup
    js = client.get("/static/review.js")
    assert js.status_code == 200 and "keydown" in js.text
    _login(client, token)
    page = client.get("/review/finding/random")
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/static/review.js" defer>']
    assert not re.search(r"\son\w+=", page.text)  # no inline event handlers


def test_sample_page_asks_three_questions(setup):
    client, token, *_ = setup
    csrf = _login(client, token)
    page = client.get("/review/sample/critical?i=0")
    assert page.status_code == 200
    assert all(f'data-question="{q}"' in page.text for q in ("helpful", "harmless", "honest"))
    item_id = re.search(r'name="item_id" value="([^"]+)"', page.text).group(1)
    form = {"csrf": csrf, "item_id": item_id, "question": "helpful", "value": "yes", "pos": "0"}
    r = client.post("/review/sample/critical/label", data=form, follow_redirects=False)
    assert r.headers["location"].endswith("?i=0")  # two questions left: stay on the item
    r = client.post("/review/sample/critical/label", data=dict(form, question="kind"))
    assert r.status_code == 422


class _Clock:
    """A fake monotonic clock the tests step forward by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _label_form(client: TestClient, csrf: str) -> dict:
    page = client.get("/review/finding/random?i=0")
    item_id = re.search(r'name="item_id" value="([^"]+)"', page.text).group(1)
    return {"csrf": csrf, "item_id": item_id, "question": "harmful", "value": "unsure", "pos": "0"}


def test_session_idle_timeout_and_absolute_lifetime(setup):
    *_, run = setup
    token = setup[1]
    clock = _Clock()
    client = TestClient(create_app([run], session_idle=100, session_lifetime=250, clock=clock))
    r = client.post("/login", data={"token": token}, follow_redirects=False)
    assert "max-age=250" in r.headers["set-cookie"].lower()  # the cookie lives as the session
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text).group(1)
    form = _label_form(client, csrf)
    clock.now += 99
    assert client.get("/", follow_redirects=False).status_code == 200  # restarts the idle timer
    clock.now += 99
    assert client.get("/", follow_redirects=False).status_code == 200
    clock.now += 100  # idle for the whole timeout: gone
    r = client.post("/review/finding/random/label", data=form, follow_redirects=False)
    assert r.status_code == 401
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert "max-age=0" in r.headers["set-cookie"].lower()  # the dead cookie is cleared

    csrf = _login(client, token)  # active every 90 s (within idle), but 250 s after login: gone
    for _ in range(2):
        clock.now += 90
        assert client.get("/", follow_redirects=False).status_code == 200
    clock.now += 90
    assert client.get("/review/finding/random", follow_redirects=False).status_code == 303
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    assert len(client.app.state.sessions) == 0


def test_logout_needs_csrf_and_ends_the_session(setup):
    client, token, *_ = setup
    r = client.post("/login", data={"token": token}, follow_redirects=False)
    sid = r.cookies["alignkit_review"]
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text).group(1)
    form = _label_form(client, csrf)
    assert client.post("/logout", data={"csrf": "bad"}).status_code == 403
    assert client.get("/", follow_redirects=False).status_code == 200  # still logged in
    r = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert "max-age=0" in r.headers["set-cookie"].lower()
    client.cookies.set("alignkit_review", sid)  # replaying the old cookie gets nothing
    assert client.get("/", follow_redirects=False).status_code == 303
    client.cookies.set("alignkit_review", sid)
    r = client.post("/review/finding/random/label", data=form, follow_redirects=False)
    assert r.status_code == 401
    client.cookies.set("alignkit_review", sid)
    assert client.post("/logout", data={"csrf": csrf}).status_code == 401


def test_failed_logins_limited_per_address(setup):
    *_, run = setup
    token = setup[1]
    clock = _Clock()
    app = create_app([run], failure_limit=3, failure_window=60, clock=clock)
    client = TestClient(app)
    for _ in range(5):  # successes are not counted
        r = client.post("/login", data={"token": token}, follow_redirects=False)
        assert r.status_code == 303
    for _ in range(3):
        clock.now += 20
        assert client.post("/login", data={"token": "guess"}).status_code == 401
    # failures at +20, +40, +60: blocked until +80, a right token too
    r = client.post("/login", data={"token": "guess"})
    assert r.status_code == 429 and r.headers["retry-after"] == "20"
    assert "Too many failed logins" in r.text
    r = client.post("/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 429
    other = TestClient(app, client=("10.0.0.2", 50000))  # another address is not affected
    assert other.post("/login", data={"token": token}, follow_redirects=False).status_code == 303
    assert client.get("/login").status_code == 200  # the form itself is still shown
    clock.now += 19
    assert client.post("/login", data={"token": token}).headers["retry-after"] == "1"
    clock.now += 1  # the +20 failure leaves the 60 s window: one more try
    assert client.post("/login", data={"token": "guess"}).status_code == 401
    assert client.post("/login", data={"token": token}).status_code == 429
    clock.now += 20
    r = client.post("/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303


def test_failed_bearer_tokens_limited_per_address(setup):
    *_, run = setup
    token = setup[1]
    clock = _Clock()
    client = TestClient(create_app([run], failure_limit=3, failure_window=60, clock=clock))
    for _ in range(5):
        assert client.get("/api/queues", headers=_auth(token)).status_code == 200
    assert client.get("/api/queues").status_code == 401  # no credential: not a guess
    assert client.post("/login", data={"token": "guess"}).status_code == 401  # shared budget
    for _ in range(2):
        assert client.get("/api/queues", headers=_auth("guess")).status_code == 401
    for headers in (_auth("guess"), _auth(token)):
        r = client.get("/api/queues", headers=headers)
        assert r.status_code == 429 and r.headers["retry-after"] == "60"
        assert "too many failed token checks" in r.json()["error"]
    r = client.post("/api/labels", json={}, headers={"Authorization": "Basic eDp5"})
    assert r.status_code == 429
    clock.now += 60
    assert client.get("/api/queues", headers=_auth(token)).status_code == 200


def test_labels_written_by_another_process_are_seen(setup):
    client, token, *_, run = setup
    h = _auth(token)
    st = client.app.state.review

    def pending() -> list[str]:
        got = client.get("/api/queues/finding/random/next?n=100", headers=h).json()["items"]
        return [i["id"] for i in got]

    def n_done() -> int:
        queues = client.get("/api/queues", headers=h).json()["queues"]
        return next(q["done"] for q in queues if q == dict(q, kind="finding", order="random"))

    ids = pending()  # ann's answers are now cached by the server
    assert n_done() == 0
    other = LabelStore(run)  # e.g. `alignkit review simulate` or a second server
    item = st.by_id[ids[0]]
    other.add_label(item, "ann", "harmful", "harmful")
    other.add_label(st.by_id[ids[1]], "bob", "harmful", "harmful")  # someone else's: no effect
    assert pending() == ids[1:] and n_done() == 1
    csrf = _login(client, token)
    page = client.get("/review/finding/random")  # the first unanswered item is the second one
    assert re.search(r'name="item_id" value="([^"]+)"', page.text).group(1) == ids[1]
    # interleaved: another process answers, then this server, then the other one retracts
    other.add_label(st.by_id[ids[1]], "ann", "harmful", "unsure")
    form = {"csrf": csrf, "item_id": ids[1], "question": "harmful", "value": "not_harmful"}
    client.post("/review/finding/random/label", data=dict(form, pos="0"))
    assert st.done("ann")[ids[1]] == {"harmful": "not_harmful"}
    other.add_label(item, "ann", "harmful", None)
    assert pending()[:2] == [ids[0], ids[2]] and n_done() == 1
    assert st.done("ann")[ids[1]] == {"harmful": "not_harmful"}
    other.close()


def test_failure_table_stays_small():
    from alignkit.review.sessions import FailureLimit

    clock = _Clock()
    limit = FailureLimit(limit=2, window=10, clock=clock, sweep_at=100)
    for i in range(100):
        limit.fail(f"10.0.{i // 256}.{i % 256}")
    clock.now += 10  # every failure has aged out: the next new address sweeps them
    limit.fail("192.0.2.1")
    assert len(limit._failures) == 1 and limit.retry_after("10.0.0.1") == 0
    limit.fail("192.0.2.1")
    assert limit.retry_after("192.0.2.1") == 10
