"""Prompts longer than the model's context are refused before any work, or skipped on request.

The testbed model has 768 positions. A 3,000-token prompt is an error naming the prompt (index
and a quote) and the lengths, raised before anything is generated; ``fits`` says which prompts
fit, for callers that skip; ``alignkit generate --on-long-prompt skip`` leaves such prompts out
and counts them; a 5 MB prompt is refused on its length in characters, untokenized, at once.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.errors import DataError
from alignkit.evaluation.alignment import AlignmentEvaluator
from alignkit.evaluation.suites import EvalItem
from alignkit.models import GenerationConfig
from alignkit.models.base import PromptTooLongError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LONG = "word " * 3000  # 3,002 testbed tokens, 15,000 characters (under 20 per position)
HUGE = "x" * 5_000_000
SHORT = ["Name the capital city of France.", "Tell me the capital of Japan."]
GEN = GenerationConfig(max_new_tokens=8, temperature=0)


def _no_generation(backend, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("generation started")

    monkeypatch.setattr(backend, "_generate_batch", fail)


def test_testbed_context_is_its_position_count(testbed_backend):
    assert testbed_backend.context == 768


def test_long_prompt_is_named_before_any_generation(testbed_backend, monkeypatch):
    _no_generation(testbed_backend, monkeypatch)
    with pytest.raises(PromptTooLongError) as info:
        testbed_backend.generate([SHORT[0], LONG, SHORT[1]], GEN)
    message = info.value.message
    assert message.startswith("prompt 1 ('word word word")
    assert "3,0" in message and "with 8 max_new_tokens" in message and "768-token" in message
    assert (info.value.index, info.value.context) == (1, 768) and info.value.tokens > 3000
    assert isinstance(info.value, DataError)  # a user error: one line, exit 2 on the CLI


def test_max_new_tokens_counts_against_the_context(testbed_backend):
    prompt = "word " * 700
    assert testbed_backend.fits([prompt], GenerationConfig(max_new_tokens=8)) == [True]
    assert testbed_backend.fits([prompt], GenerationConfig(max_new_tokens=100)) == [False]


def test_fits_says_which_prompts_fit(testbed_backend):
    assert testbed_backend.fits([SHORT[0], LONG, SHORT[1], HUGE], GEN) == [True, False, True, False]


def test_megabytes_are_refused_untokenized_at_once(testbed_backend, monkeypatch):
    encoded: list[int] = []
    real = testbed_backend._encode_rendered
    monkeypatch.setattr(
        testbed_backend, "_encode_rendered", lambda text: encoded.append(len(text)) or real(text)
    )
    start = time.perf_counter()
    with pytest.raises(PromptTooLongError) as info:
        testbed_backend.generate([SHORT[0], HUGE], GEN)
    assert time.perf_counter() - start < 2.0
    assert max(encoded) < 1000  # only the short prompt was tokenized
    assert "prompt 1 ('xxxx" in info.value.message and "5,0" in info.value.message
    assert "characters" in info.value.message and info.value.tokens is None


def test_logprobs_refuse_pairs_longer_than_the_context(testbed_backend):
    with pytest.raises(PromptTooLongError, match=r"prompt 1 .* completion tokens"):
        testbed_backend.logprobs([SHORT[0], SHORT[1]], ["Paris.", LONG])


def test_white_box_gradients_refuse_inputs_longer_than_the_context(testbed_backend):
    ids = torch.zeros(800, dtype=torch.long)
    with pytest.raises(PromptTooLongError, match="800 tokens"):
        testbed_backend.input_embedding_gradients(ids, ids)


def test_eval_names_the_long_item_before_generating(testbed_backend, monkeypatch):
    _no_generation(testbed_backend, monkeypatch)
    items = [EvalItem("short-1", SHORT[0], "benign"), EvalItem("novel", LONG, "benign")]
    evaluator = AlignmentEvaluator(testbed_backend, suite=items, scorers=("testbed",), cache=False)
    with pytest.raises(PromptTooLongError, match="item 'novel'"):
        evaluator.run()


# --- alignkit generate -------------------------------------------------------------------------


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [SHORT[0], LONG, SHORT[1]]))
    return path


def _generate(prompts_file, out, *extra):
    args = ["generate", "--model", "testbed", "--prompts-file", prompts_file, "--output", out,
            "--max-new-tokens", "8", "--temperature", "0", *extra]  # fmt: skip
    return CliRunner().invoke(app, [str(a) for a in args])


def test_generate_stops_on_a_long_prompt_and_writes_nothing(prompts_file, tmp_path):
    out = tmp_path / "out.jsonl"
    result = _generate(prompts_file, out)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "prompt 1 ('word word" in lines[0] and "768" in lines[0]
    assert "--on-long-prompt skip" in lines[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]  # no output, no part


def test_generate_skips_and_counts_long_prompts(prompts_file, tmp_path):
    out = tmp_path / "out.jsonl"
    result = _generate(prompts_file, out, "--on-long-prompt", "skip")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == SHORT
    assert "skipped 1 prompts too long for the model's context" in result.stderr
