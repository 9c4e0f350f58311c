"""Review app in a real browser: Playwright + Debian chromium against uvicorn in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from review_fixtures import REFUSE, make_run, write_jsonl

from alignkit.review.store import LabelStore

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="/usr/bin/chromium absent")
HOSTILE = (
    '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'
    '<a href="javascript:window.__pwned=1">x</a></textarea><script>window.__pwned=1</script>'
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run: Path, port: int) -> subprocess.Popen:
    code = f"from alignkit.review.server import serve; serve([{str(run)!r}], port={port})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode()) from None
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def _api(port: int, token: str, path: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _press(page, key: str) -> None:
    with page.expect_navigation():
        page.keyboard.press(key)


def _shot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    if os.environ.get("ALIGNKIT_ARTIFACTS"):
        out = Path(os.environ["ALIGNKIT_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"{name}.png", out / f"review-{name}.png")


def _login(browser, port: int, token: str):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(f"http://127.0.0.1:{port}/login")
    page.fill("#token", token)
    with page.expect_navigation():
        page.click("#login")
    return ctx, page


def test_browser_review(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    run = make_run(tmp_path, n_per=10, bad_lines=0)
    pairs = [
        {
            "prompt": f"Pair prompt {i}",
            "chosen": REFUSE,
            "rejected": f"answer {i}",
            "soft_label": 0.6,
        }
        for i in range(10)
    ]
    pairs.append({"prompt": HOSTILE, "chosen": HOSTILE, "rejected": "javascript:alert(1)"})
    write_jsonl(run / "feedback" / "preferences.jsonl", pairs)
    store = LabelStore(run)
    ann, bob, cat = (store.add_reviewer(n) for n in ("ann", "bob", "cat"))
    store.close()
    port = _port()
    proc = _start(run, port)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            ctx, page = _login(browser, port, ann)
            _shot(page, tmp_path, "index")
            page.goto(f"http://127.0.0.1:{port}/review/finding/random")
            _shot(page, tmp_path, "finding")
            for _ in range(20):
                _press(page, "1")
            _shot(page, tmp_path, "done")
            page.goto(f"http://127.0.0.1:{port}/review/pair/random")
            for i in range(10):
                assert "AI label" not in page.content()
                _press(page, "1")
                assert "AI label" in page.content()
                if i == 0:
                    _shot(page, tmp_path, "pair")
                _press(page, "n")
            page.goto(f"http://127.0.0.1:{port}/review/finding/random?i=3")
            _press(page, "u")
            assert page.locator("strong.current").count() == 0
            _press(page, "2")
            page.reload()
            for i in range(11):  # every pair page incl. the hostile one: nothing runs
                page.goto(f"http://127.0.0.1:{port}/review/pair/random?i={i}")
                assert page.evaluate("typeof window.__pwned") == "undefined"
            ctx.close()
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/login")
            _shot(page, tmp_path, "login")
            page.close()

            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = _start(run, port)
            labels = _api(port, ann, "/api/labels")["labels"]
            assert Counter(r["kind"] for r in labels) == {"finding": 20, "pair": 10}
            assert len({(r["item_id"], r["question"]) for r in labels}) == 30
            assert sum(r["value"] == "not_harmful" for r in labels) == 1

            (_cb, pb), (_cc, pc) = _login(browser, port, bob), _login(browser, port, cat)
            for p in (pb, pc):
                p.goto(f"http://127.0.0.1:{port}/review/finding/disagreement")
            for _ in range(8):
                _press(pb, "1")
                _press(pc, "3")
            browser.close()
        for token, value in ((bob, "harmful"), (cat, "unsure")):
            got = _api(port, token, "/api/labels")["labels"]
            assert len(got) == 8 and {r["value"] for r in got} == {value}
            assert len({r["item_id"] for r in got}) == 8
        audit = LabelStore(run).labels(current=False)
        assert len(audit) == 32 + 16
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
