"""Load on the review server: a queue of 100,000 items, next-page and label-POST latency, and
20 concurrent API clients posting 500 labels each (nothing lost or doubled).

    python benchmarks/review_load.py [--items 100000] [--clients 20] [--labels 500]

A run directory with ``--items`` preference pairs is written to a temporary directory, served
by ``alignkit review serve`` (uvicorn) in a subprocess, and driven over loopback with httpx.
Latencies are client round trips (an upper bound on the server's time), medians of
``--repeat`` requests after a warm-up. The concurrent phase posts every label with an
idempotency key and retries a request that failed in transport, then checks through the
label store that exactly clients x labels rows exist, one per key. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from alignkit.review.store import LabelStore


def write_run(root: Path, n: int) -> Path:
    """A run directory whose feedback/preferences.jsonl holds ``n`` distinct pairs."""
    run = root / "run"
    (run / "feedback").mkdir(parents=True)
    with open(run / "feedback" / "preferences.jsonl", "w", encoding="utf-8") as out:
        for i in range(n):
            row = {"prompt": f"Question {i}: how do I bake bread number {i}?",
                   "chosen": f"Here is how to bake bread {i}.", "rejected": "I can't help.",
                   "soft_label": (i % 97) / 96}  # fmt: skip
            out.write(json.dumps(row) + "\n")
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "alignkit", "review", "serve", str(run), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not come up within 300 s")


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp), args.items)
        store = LabelStore(run)
        tokens = [store.add_reviewer(f"r{i}") for i in range(args.clients + 1)]
        store.close()
        port = free_port()
        t0 = time.perf_counter()
        proc = start(run, port)
        print(f"server up with {args.items:,} items in {time.perf_counter() - t0:.1f} s")
        base = f"http://127.0.0.1:{port}"
        try:
            client = httpx.Client(headers={"Authorization": f"Bearer {tokens[0]}"}, timeout=30)
            ids = [i["id"] for i in client.get(f"{base}/api/queues/pair/random/next?n=100")
                   .json()["items"]]  # fmt: skip
            nxt = median_ms(lambda: client.get(f"{base}/api/queues/pair/random/next?n=10"),
                            args.repeat)  # fmt: skip
            count = iter(range(10**9))

            def post():
                k = next(count)
                body = {"item_id": ids[k % len(ids)], "question": "preference", "value": "a",
                        "idempotency_key": f"solo-{k}"}  # fmt: skip
                assert client.post(f"{base}/api/labels", json=body).status_code == 201

            label = median_ms(post, args.repeat)
            print(f"median next page (10 items): {nxt:.1f} ms; median label POST: {label:.1f} ms")
            concurrent(base, tokens[1:], ids, args.labels)
        finally:
            proc.kill()
            proc.wait()
        store = LabelStore(run)
        rows = [r for r in store.labels(current=False) if r["reviewer"] != "r0"]
        keys = {r["idempotency_key"] for r in rows}
        expected = args.clients * args.labels
        verdict = "OK" if len(rows) == len(keys) == expected else "FAIL"
        print(f"concurrent: {len(rows)} rows stored, {len(keys)} distinct keys, "
              f"expected {expected}: {verdict}")  # fmt: skip


def concurrent(base: str, tokens: list[str], ids: list[str], per_client: int) -> None:
    def worker(w: int) -> int:
        retries = 0
        with httpx.Client(headers={"Authorization": f"Bearer {tokens[w]}"}, timeout=30) as c:
            for k in range(per_client):
                body = {"item_id": ids[k % len(ids)], "question": "preference",
                        "value": "ab"[k % 2], "idempotency_key": f"w{w}-{k}"}  # fmt: skip
                while True:
                    try:
                        if c.post(f"{base}/api/labels", json=body).status_code == 201:
                            break
                    except httpx.TransportError:
                        pass
                    retries += 1
        return retries

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(tokens)) as pool:
        retries = sum(pool.map(worker, range(len(tokens))))
    took = time.perf_counter() - t0
    total = len(tokens) * per_client
    print(f"concurrent: {len(tokens)} clients x {per_client} labels in {took:.1f} s "
          f"({total / took:,.0f} labels/s), {retries} retries")  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
