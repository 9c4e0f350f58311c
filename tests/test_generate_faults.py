"""Nothing lost, nothing wrong under faults: ``alignkit generate`` and ``alignkit eval``.

- generate keeps every finished chunk when the model fails, says where on one line, and a rerun
  generates only the rest and writes exactly what one uninterrupted call gives;
- bad paths (a binary prompts file, an output under ``/proc``, a damaged call cache) are one
  line and exit 2 before any model is loaded (the loader is patched to raise), and leave nothing
  behind;
- an eval killed (SIGKILL) in the middle of generation resumes from its call cache to exactly
  the items and figures of an uninterrupted run, at other batch sizes;
- output that is not a terminal gets a plain progress line every few seconds.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.commands.generate import _row
from alignkit.errors import BackendError
from alignkit.models import Completion, GenerationConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    "Name the capital city of France.",
    "Tell me the capital of Japan.",
    "Name the capital city of Italy.",
    "What is 7 times 6?",
    "Which city is the capital of Italy?",
    "Tell me the capital of Egypt.",
    "What is 12 plus 30?",
    "Name the capital city of Spain.",
    "What is 9 minus 4?",
    "Tell me the capital of Peru.",
]
PROMPTS += PROMPTS[:3]  # copies: each copy is its own sample


def invoke(*args, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def one_error_line(result, *fragments: str) -> str:
    """Exit 2 and a single 'error:' line on stderr naming every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def no_model_loading(monkeypatch):
    """Make loading any model an error: a test passing with this ran no model."""

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("alignkit.commands.generate.load_backend", fail)
    monkeypatch.setattr("alignkit.models.load_backend", fail)


class Flaky:
    """A backend (the testbed's, or a fake) that fails once ``fail_after`` prompts were sent;
    records what it was asked for."""

    def __init__(self, backend, fail_after: int | None = None, delay: float = 0.0) -> None:
        self.backend, self.fail_after, self.delay = backend, fail_after, delay
        self.sent: list = []

    def generate(self, prompts, config=None):
        if self.fail_after is not None and len(self.sent) + len(prompts) > self.fail_after:
            raise BackendError("server went away")
        self.sent += list(prompts)
        time.sleep(self.delay * len(prompts))
        return self.backend.generate(prompts, config)

    def close(self) -> None:
        pass

    def __getattr__(self, name):  # name, spec, options, check_prompts, ...
        return getattr(self.backend, name)


class Echo:
    """A model-free backend: the completion names the prompt and the seed it was drawn with."""

    name = "echo"
    supports_logprobs = False

    def generate(self, prompts, config=None):
        return [Completion(f"{p} | seed {config.seed}", "stop", 3) for p in prompts]


def use(monkeypatch, backend) -> None:
    monkeypatch.setattr("alignkit.commands.generate.load_backend", lambda *a, **k: backend)


# --- generate: failure, resume -----------------------------------------------------------------


def test_failed_generate_keeps_finished_chunks_and_a_rerun_is_exact(
    testbed_backend, monkeypatch, tmp_path
):
    settings = GenerationConfig(max_new_tokens=16, temperature=1.0, seed=0)
    completions = testbed_backend.generate(PROMPTS, settings)  # one uninterrupted call
    expected = [_row(p, c) for p, c in zip(PROMPTS, completions, strict=True)]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out.jsonl"
    part = tmp_path / "out.jsonl.part"
    # chunks of 8 prompts (4 batches of 2)
    args = ["generate", "--model", "testbed", "--prompts-file", prompts, "--output", out,
            "--max-new-tokens", "16", "--temperature", "1.0", "--seed", "0",
            "--batch-size", "2", "--max-concurrency", "1"]  # fmt: skip

    use(monkeypatch, Flaky(testbed_backend, fail_after=9))
    kept_note = f"8 of 13 completions are kept in {part}"
    line = one_error_line(invoke(*args), "server went away", kept_note)
    assert "run the same command again to resume" in line
    assert not out.exists()
    kept = [json.loads(row) for row in part.read_text().splitlines()[1:]]
    assert [row.pop("index") for row in kept] == list(range(8))
    assert kept == expected[:8]
    with part.open("a") as handle:  # a kill in the middle of a write leaves a torn line
        handle.write('{"index": 8, "prompt": "What is 9 mi')

    rerun = Flaky(testbed_backend)
    use(monkeypatch, rerun)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert rerun.sent == PROMPTS[8:]  # only what was missing
    assert [json.loads(row) for row in out.read_text().splitlines()] == expected
    assert not part.exists()


def test_resume_ignores_a_part_file_of_other_settings_and_keeps_a_drawn_seed(monkeypatch, tmp_path):
    out, part = tmp_path / "out.jsonl", tmp_path / "out.jsonl.part"
    # chunks of 4 prompts
    args = ["generate", "--model", "testbed", "--output", out, "--batch-size", "1",
            "--max-concurrency", "1"]  # fmt: skip
    for prompt in "abcde":
        args += ["--prompt", prompt]
    fresh = tmp_path / "fresh-seed.yaml"
    fresh.write_text("seed: null\n")  # a fresh seed per run
    use(monkeypatch, Flaky(Echo(), fail_after=4))
    one_error_line(invoke(*args, "--config", fresh), f"4 of 5 completions are kept in {part}")
    seed = json.loads(part.read_text().splitlines()[0])["generation"]["seed"]
    use(monkeypatch, Flaky(Echo()))
    assert invoke(*args, "--config", fresh).exit_code == 0  # resumed under the drawn seed
    texts = [json.loads(row)["completion"] for row in out.read_text().splitlines()]
    assert texts == [f"{p} | seed {seed}" for p in "abcde"]

    use(monkeypatch, Flaky(Echo(), fail_after=4))
    invoke(*args, "--seed", "5")
    use(monkeypatch, Flaky(Echo()))
    result = invoke(*args, "--seed", "6")
    assert result.exit_code == 0 and "ignoring" in result.stderr
    texts = [json.loads(row)["completion"] for row in out.read_text().splitlines()]
    assert texts == [f"{p} | seed 6" for p in "abcde"]


# --- bad paths: one line, exit 2, before any model ---------------------------------------------


def test_generate_binary_prompts_file(monkeypatch, tmp_path):
    no_model_loading(monkeypatch)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b'{"prompt": "a"}\n\x89PNG\r\n\x00\xff')
    result = invoke("generate", "--model", "testbed", "--prompts-file", prompts)
    one_error_line(result, str(prompts), "not UTF-8", "offset 16 (line 2)")


@pytest.mark.parametrize("output", ["/proc/alignkit-out.jsonl", "/proc/alignkit-dir/out.jsonl"])
def test_generate_output_under_proc(monkeypatch, output):
    no_model_loading(monkeypatch)
    result = invoke("generate", "--model", "testbed", "--prompt", "hi", "--output", output)
    one_error_line(result, f"cannot write --output {output!r}")


def test_eval_binary_suite_file(monkeypatch, tmp_path):
    no_model_loading(monkeypatch)
    suite = tmp_path / "suite.jsonl"
    suite.write_bytes(b"\xff\xfe\x00{")
    result = invoke("eval", "--suite", suite, "--output-dir", tmp_path / "run")
    one_error_line(result, str(suite), "not UTF-8", "offset 0 (line 1)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("output_dir", ["/proc/alignkit-run", "/proc/alignkit-a/b"])
def test_eval_output_dir_under_proc(monkeypatch, tmp_path, output_dir):
    no_model_loading(monkeypatch)
    cache = tmp_path / "calls.sqlite"
    result = invoke("eval", "--n", "1", "--output-dir", output_dir, "--cache-path", cache)
    one_error_line(result, f"output_dir {output_dir!r}")
    assert not cache.exists()


def test_eval_damaged_cache(monkeypatch, tmp_path):
    no_model_loading(monkeypatch)
    cache = tmp_path / "calls.sqlite"
    damaged = os.urandom(4096)
    cache.write_bytes(damaged)
    result = invoke("eval", "--n", "1", "--output-dir", tmp_path / "run", "--cache-path", cache)
    one_error_line(result, f"call cache {str(cache)!r}", "not a database")
    assert cache.read_bytes() == damaged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls.sqlite"]  # no run dir


# --- progress when stderr is not a terminal -----------------------------------------------------


def test_plain_progress_lines_when_output_is_not_a_terminal(monkeypatch, tmp_path):
    use(monkeypatch, Flaky(Echo(), delay=0.05))
    args = ["generate", "--model", "testbed", "--output", tmp_path / "out.jsonl",
            "--batch-size", "1", "--max-concurrency", "1"]  # fmt: skip
    for i in range(24):
        args += ["--prompt", f"prompt {i}"]
    result = invoke(*args, env={"ALIGNKIT_PROGRESS_EVERY": "0.2"})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("generate: ")]
    assert len(lines) >= 3, result.stderr
    pattern = r"generate: \d+/24 \(\d+%\) \| [\d.]+/s \| elapsed 0:00:0\d \| eta 0:00:0\d$"
    assert any(re.match(pattern, line) and not line.startswith("generate: 0/") for line in lines)
    assert lines[-1].startswith("generate: 24/24 (100%)")  # the closing line
    quiet = invoke(*args, env={"ALIGNKIT_PROGRESS_EVERY": "0"})
    assert "generate: " not in quiet.stderr


# --- eval: killed mid-generation, then resumed ------------------------------------------------


def _cache_rows(path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.2) as db:
            return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.Error:
        return 0


def _eval_args(out, cache, batch_size: int) -> list[str]:
    return ["eval", "--n", "24", "--temperature", "1.0", "--max-new-tokens", "24",
            "--seed", "0", "--output-dir", str(out), "--cache-path", str(cache), "--no-report",
            "--batch-size", str(batch_size)]  # fmt: skip


def _figures(run_dir) -> dict:
    data = json.loads((run_dir / "eval.json").read_text())
    return {k: data[k] for k in ("metrics", "breakdown", "agreement", "skipped", "n_items")}


def test_eval_killed_mid_generation_resumes_to_the_uninterrupted_result(testbed_path, tmp_path):
    """96 items, stored in chunks of 64: the kill lands after the first chunk, during the second
    (a run at batch size 16); the rerun at batch size 5 must give what a run at 7 gives."""
    whole = invoke(*_eval_args(tmp_path / "whole", tmp_path / "whole.sqlite", 7))
    assert whole.exit_code == 0, whole.output

    cache, out = tmp_path / "calls.sqlite", tmp_path / "resumed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "alignkit", *_eval_args(out, cache, 16)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        while proc.poll() is None and _cache_rows(cache) < 64:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()  # still generating
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -9
    assert 64 <= _cache_rows(cache) < 96 and not (out / "eval.json").exists()

    resumed = invoke(*_eval_args(out, cache, 5))
    assert resumed.exit_code == 0, resumed.output
    whole_items = (tmp_path / "whole" / "eval_items.jsonl").read_text()
    assert (out / "eval_items.jsonl").read_text() == whole_items
    assert _figures(out) == _figures(tmp_path / "whole")
    assert len(set(json.loads(row)["response"] for row in whole_items.splitlines())) > 48
