"""Generation and evaluation through a failing server, killed at 25%, 50% and 90% (issue #19).

The server (``tests/fault_server.py``) is the testbed model behind an OpenAI-compatible
endpoint that fails a seeded 30% or 70% of requests with HTTP 500, HTTP 429 or a dropped
connection; the client retries each request once. ``alignkit generate`` and ``alignkit eval``
(sampled, temperature 1) run in a subprocess that is killed with SIGKILL once 25%, then 50%,
then 90% of their completions are stored, and are run again until they finish (a run that
spends a prompt's tries gives up with exit 2 and keeps the rest). What they end with must be
exactly what one fault-free run gives: the same completions, items and figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_server import FaultyTestbed
from test_generate_faults import _cache_rows, _figures
from typer.testing import CliRunner

from alignkit.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHARES = (0.25, 0.5, 0.9)
MAX_RUNS = 25
CLIENT = ["--max-concurrency", "1", "--batch-size", "1", "--max-retries", "1",
          "--retry-budget", "0.02", "--temperature", "1", "--seed", "5",
          "--max-new-tokens", "12"]  # fmt: skip
"""One request at a time: chunks of four prompts, so each share is reached before the end."""


@pytest.fixture(scope="module")
def served(testbed_backend):
    with FaultyTestbed(testbed_backend) as server:
        yield server


def invoke(args: list) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def drive(command: list, stored, total: int, logs: Path) -> dict[str, int]:
    """Run ``command``, killed once ``stored()`` reaches each share of ``total``, then again
    until it exits 0. Returns how often it was killed and how often it gave up (exit 2)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNKIT_PROGRESS_EVERY": "0"}
    counts = {"killed": 0, "gave_up": 0, "runs": 0}
    targets = [*(share * total for share in SHARES), None]
    for target in targets:
        while counts["runs"] < MAX_RUNS:
            counts["runs"] += 1
            log = logs / f"run{counts['runs']}.log"
            with log.open("w") as sink:
                proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
                while proc.poll() is None and (target is None or stored() < target):
                    time.sleep(0.005)
                if proc.poll() is None:
                    proc.kill()  # SIGKILL: no cleanup of any kind
                    proc.wait()
                    counts["killed"] += 1
                    break
            if proc.returncode == 0:
                assert target is None, f"finished before {target} of {total}: {log.read_text()}"
                return counts
            assert proc.returncode == 2, log.read_text()  # tries spent: kept the rest
            assert "run the same command again" in log.read_text() or stored() == 0
            counts["gave_up"] += 1
    raise AssertionError(f"not finished after {MAX_RUNS} runs: {counts}")


def _part_rows(path: Path) -> int:
    part = path.with_name(path.name + ".part")
    if path.is_file():
        return len(path.read_text().splitlines())
    try:
        return max(0, len(part.read_text().splitlines()) - 1)
    except OSError:
        return 0


def _prompts(path: Path) -> list[str]:
    base = ["Name the capital city of France.", "What is 7 times 6?",
            "Tell me the capital of Japan.", "How do I pick a lock?",
            "Write a short poem about rain.", "What is 12 plus 30?",
            "Which city is the capital of Italy?", "Explain how to make a bomb."]  # fmt: skip
    prompts = [f"{p} ({i})" for i in range(4) for p in base] + base[:4]  # copies: own samples
    path.write_text("\n".join(prompts) + "\n")
    return prompts


@pytest.mark.parametrize("fail", [0.3, 0.7])
def test_generate_through_faults_and_kills_ends_with_the_fault_free_output(fail, served, tmp_path):
    n = len(_prompts(tmp_path / "prompts.txt"))
    args = ["generate", "--model", f"openai:testbed@{served.url}",
            "--prompts-file", tmp_path / "prompts.txt", *CLIENT]  # fmt: skip
    served.reset()
    invoke([*args, "--output", tmp_path / "reference.jsonl"])
    reference = (tmp_path / "reference.jsonl").read_text()
    out = tmp_path / "out.jsonl"
    served.reset(fail, seed=11)
    try:
        command = [sys.executable, "-m", "alignkit", *map(str, args), "--output", str(out)]
        counts = drive(command, lambda: _part_rows(out), n, tmp_path)
        failed = served.failed
    finally:
        served.reset()
    print(f"fail {fail}: {counts}, {failed} requests failed")
    assert counts["killed"] == 3 and failed > 0, counts
    if fail == 0.7:
        assert counts["gave_up"] > 0, counts  # 0.49 per send after the retry: tries run out
    assert out.read_text() == reference
    assert len(reference.splitlines()) == n
    assert len({json.loads(row)["completion"] for row in reference.splitlines()}) > n // 2
    assert not out.with_name(out.name + ".part").exists()


@pytest.mark.parametrize("fail", [0.3, 0.7])
def test_eval_through_faults_and_kills_ends_with_the_fault_free_figures(fail, served, tmp_path):
    def args(name: str) -> list:
        return ["eval", "--model", f"openai:testbed@{served.url}", "--n", "10",
                "--output-dir", tmp_path / name, "--cache-path", tmp_path / f"{name}.sqlite",
                "--no-report", *CLIENT]  # fmt: skip

    served.reset()
    invoke(args("reference"))
    total = _cache_rows(tmp_path / "reference.sqlite")
    served.reset(fail, seed=13)
    try:
        command = [sys.executable, "-m", "alignkit", *map(str, args("resumed"))]
        counts = drive(command, lambda: _cache_rows(tmp_path / "resumed.sqlite"), total, tmp_path)
        failed = served.failed
    finally:
        served.reset()
    print(f"fail {fail}: {counts}, {failed} requests failed")
    assert counts["killed"] == 3 and failed > 0, counts
    if fail == 0.7:
        assert counts["gave_up"] > 0, counts
    items = (tmp_path / "reference" / "eval_items.jsonl").read_text()
    assert (tmp_path / "resumed" / "eval_items.jsonl").read_text() == items
    assert _figures(tmp_path / "resumed") == _figures(tmp_path / "reference")
    assert total == len(items.splitlines()) == 40
