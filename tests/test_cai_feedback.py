"""AI feedback (RLAIF) on the testbed: soft labels agree with ground truth, both orders judged."""

from __future__ import annotations

import random

import pytest

from alignkit.constitutional.feedback import (
    COT_FOLLOW_UP,
    COT_INSTRUCTION,
    AIFeedback,
    FeedbackLabel,
    clamp,
    parse_choice,
    position_bias,
    to_preference_records,
    write_preferences,
)
from alignkit.data import load_preferences
from alignkit.errors import ConfigError, UnsupportedError
from alignkit.models.base import Completion, TokenLogprobs
from alignkit.testbed import World
from alignkit.testbed import formats as F

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUESTIONS = list(F.JUDGEMENT_QUESTIONS.values())


def truth_pairs(n_harmful: int = 24, n_benign: int = 24, seed: int = 0):
    """Held-out pairs in random order, with the better response of each (ground truth)."""
    world, rng = World(0), random.Random(seed)
    pairs, better = [], []
    harmful = world.requests("harmful")
    benign = [r for r in world.requests("benign") if r.category != "creative"]
    cases = [(rng.choice(harmful), "refusal", "harmful") for _ in range(n_harmful)]
    cases += [
        (rng.choice(benign), "helpful", rng.choice(["over_refusal", "wrong"]))
        for _ in range(n_benign)
    ]
    for req, good_cls, bad_cls in cases:
        good, bad = world.respond(req, good_cls, rng), world.respond(req, bad_cls, rng)
        first, second = (good, bad) if rng.random() < 0.5 else (bad, good)
        pairs.append((req.text, first, second))
        better.append(good)
    return pairs, better


class ScriptedBackend:
    """Answers each judgement prompt by a rule on the prompt text; records every call."""

    name = "scripted"
    supports_logprobs = False

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def generate(self, prompts, config=None):
        self.calls.append(list(prompts))
        return [Completion(self.answer(p)) for p in prompts]

    def logprobs(self, prompts, completions):
        raise AssertionError("a parse-mode backend is never asked for log-probs")

    def close(self):
        pass


def slot_of(prompt: str, text: str) -> str:
    """Which slot (A / B) of a judgement prompt holds ``text``."""
    return "A" if f"Response A: {text}\n" in prompt else "B"


def test_logprob_feedback_agrees_with_ground_truth(testbed_backend, tmp_path):
    pairs, better = truth_pairs()
    feedback = AIFeedback(testbed_backend, F.JUDGEMENT_QUESTIONS, n_principles=2, seed=0)
    labels = feedback.label(pairs)
    agree = sum(lab.chosen == good for lab, good in zip(labels, better, strict=True))
    bias = position_bias(labels)
    print(
        f"\nAI feedback agreement {agree}/{len(pairs)} = {agree / len(pairs):.2f}; "
        f"orders inconsistent {bias['inconsistent']:.2f}, first slot {bias['first_slot']:.2f}"
    )
    assert agree / len(pairs) >= 0.75
    assert bias["judgements"] == 2 * len(pairs)
    for lab, (prompt, a, b) in zip(labels, pairs, strict=True):
        assert 0.5 <= lab.soft_label <= 1.0
        assert {lab.chosen, lab.rejected} == {a, b} and lab.prompt == prompt
        assert len(lab.principles) == 2 and len(set(lab.principles)) == 2
        assert set(lab.principles) <= set(F.JUDGEMENT_QUESTIONS)
        assert all(0.0 <= p <= 1.0 for p in lab.p_ab + lab.p_ba)
        expect = sum((x + 1 - y) / 2 for x, y in zip(lab.p_ab, lab.p_ba, strict=True)) / 2
        assert lab.soft_label == pytest.approx(expect if lab.a_chosen else 1 - expect)
    # confident, consistent labels on the clear-cut harmful pairs
    assert min(lab.soft_label for lab in labels[:24]) > 0.9
    # seeded: the same principles again; another seed samples others
    again = AIFeedback(testbed_backend, F.JUDGEMENT_QUESTIONS, n_principles=2, seed=0)
    other = AIFeedback(testbed_backend, F.JUDGEMENT_QUESTIONS, n_principles=2, seed=1)
    assert [lab.principles for lab in again.label(pairs[:6])] == [
        lab.principles for lab in labels[:6]
    ]
    assert [lab.principles for lab in other.label(pairs)] != [lab.principles for lab in labels]

    # the written file is a preference dataset the DPO loader takes as is
    path = tmp_path / "ai_prefs.jsonl"
    assert write_preferences(path, labels) == len(pairs)
    examples, report = load_preferences(path)
    assert report.loaded == len(pairs) and not report.skipped
    for ex, lab in zip(examples, labels, strict=True):
        assert ex.completions == [lab.chosen, lab.rejected]
        assert ex.prompt == [{"role": "user", "content": lab.prompt}]
        assert ex.metadata["soft_label"] == pytest.approx(lab.soft_label)
        assert ex.metadata["principles"] == lab.principles


@pytest.mark.parametrize("mode", ["cot", "parse"])
def test_cot_and_parse_modes_on_testbed(testbed_backend, mode):
    pairs, better = truth_pairs(12, 12, seed=3)
    feedback = AIFeedback(testbed_backend, QUESTIONS, mode=mode, cot_max_new_tokens=16)
    labels = feedback.label(pairs)
    agree = sum(lab.chosen == good for lab, good in zip(labels, better, strict=True))
    print(f"\n{mode}: agreement {agree}/{len(pairs)}, {position_bias(labels)}")
    assert agree / len(pairs) >= 0.75
    probs = [p for lab in labels for p in lab.p_ab + lab.p_ba]
    if mode == "cot":
        assert all(0.4 <= p <= 0.6 for p in probs)
        assert all(0.5 <= lab.soft_label <= 0.6 for lab in labels)
    else:
        assert set(probs) <= {0.0, 1.0}


def test_cot_mode_parses_reasoning_and_clamps():
    def reason(prompt):
        # prefers the refusal in whichever slot it is, after some reasoning naming both slots
        slot = "A" if "Response A: I can't" in prompt else "B"
        return f"Response A and Response B differ. One refuses.\nAnswer: {slot}"

    backend = ScriptedBackend(reason)
    pair = ("How do I pick a lock?", "I can't help with that.", "Step 1: take a pin.")
    [label] = AIFeedback(backend, ["Which response is more harmless?"], mode="cot").label([pair])
    assert label.p_ab == [0.6] and label.p_ba == [0.4]
    assert label.chosen == pair[1] and label.soft_label == pytest.approx(0.6)
    [asked] = backend.calls  # one generate call, both orders
    assert len(asked) == 2 and all(p.startswith(COT_INSTRUCTION) for p in asked)
    assert clamp(0.97) == 0.6 and clamp(0.01) == 0.4 and clamp(0.55) == 0.55 and clamp(None) is None


class ReasonerWithLogprobs(ScriptedBackend):
    """States no answer in its reasoning; after the follow-up question it favours slot B."""

    supports_logprobs = True

    def logprobs(self, prompts, completions):
        self.calls.append(list(prompts))
        for p in prompts:
            assert p[-1] == {"role": "user", "content": COT_FOLLOW_UP}
            assert p[1] == {"role": "assistant", "content": "Both have merits."}
        return [TokenLogprobs([c], [-2.0 if c == "A" else -0.1]) for c in completions]


def test_cot_mode_reads_answer_by_logprobs_after_reasoning():
    backend = ReasonerWithLogprobs(lambda p: "Both have merits.")
    feedback = AIFeedback(backend, QUESTIONS[:1], mode="cot")
    [label] = feedback.label([("q", "first", "second")])
    # P(A) = 1 / (1 + e^1.9) = 0.13 in both orders, clamped to 0.4: position bias cancels
    assert label.p_ab == [0.4] and label.p_ba == [0.4]
    assert label.soft_label == pytest.approx(0.5)
    assert len(backend.calls) == 2  # the reasoning, then one log-prob call for both options


def test_parse_mode_with_scripted_backend(tmp_path):
    good = {"Paris is the capital.", "I won't help with that."}

    def answer(prompt):
        if "unparseable" in prompt:
            return "Hmm, hard to say."
        if "always-first" in prompt:
            return "A"
        slot = "A" if any(f"Response A: {g}\n" in prompt for g in good) else "B"
        return f"{slot}."

    pairs = [
        ("capital of France?", "Lyon is the capital.", "Paris is the capital."),
        ("how to hack a bank?", "I won't help with that.", "Step 1: phish."),
        ("unparseable", "x", "y"),
        ("always-first", "left", "right"),
    ]
    backend = ScriptedBackend(answer)
    feedback = AIFeedback(backend, {"helpful": "Which is better?"}, mode="parse")
    labels = feedback.label(pairs)
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 2 * len(pairs)  # one call
    assert labels[0].chosen == "Paris is the capital." and labels[0].soft_label == 1.0
    assert labels[1].chosen == "I won't help with that." and labels[1].soft_label == 1.0
    assert labels[0].p_ab == [0.0] and labels[0].p_ba == [1.0]
    assert labels[2].soft_label is None and labels[2].p_ab == [None]
    assert labels[3].soft_label == 0.5  # position-biased judge: the two orders cancel
    assert feedback.stats == {"judgements": 8, "unparsed": 2, "unlabelled_pairs": 1}
    bias = position_bias(labels)
    assert bias == {
        "inconsistent": pytest.approx(1 / 3),
        "first_slot": pytest.approx(2 / 3),
        "judgements": 3.0,
    }
    assert [r["prompt"] for r in to_preference_records(labels)] == [p[0] for p in pairs[:2]] + [
        "always-first"
    ]
    path = tmp_path / "prefs.jsonl"
    assert write_preferences(path, labels) == 3
    examples, _ = load_preferences(path)
    assert examples[0].metadata == {"soft_label": 1.0, "principles": ["helpful"]}


def test_principles_from_objects_and_bad_settings():
    class Principle:
        def __init__(self, pid, question):
            self.id, self.comparison_question = pid, question

    backend = ScriptedBackend(lambda p: "B")
    feedback = AIFeedback(
        backend,
        [Principle("harm", "Which is safer?"), Principle("honesty", "Which is truer?")],
        n_principles=2,
        mode="parse",
    )
    [label] = feedback.label([("q", "a", "b")])
    assert sorted(label.principles) == ["harm", "honesty"]
    assert isinstance(label, FeedbackLabel) and label.soft_label == 0.5
    with pytest.raises(UnsupportedError, match="mode='parse'"):
        AIFeedback(backend, QUESTIONS)  # no log-probs
    with pytest.raises(ConfigError, match="n_principles"):
        AIFeedback(backend, QUESTIONS, n_principles=4, mode="parse")
    with pytest.raises(ConfigError, match="mode"):
        AIFeedback(backend, QUESTIONS, mode="vote")
    with pytest.raises(ConfigError, match="comparison question"):
        AIFeedback(backend, [Principle("empty", "")], mode="parse")
    with pytest.raises(ConfigError, match="at least one"):
        AIFeedback(backend, [], mode="parse")


def test_parse_choice():
    assert parse_choice("A") == "A" and parse_choice(" (B).") == "B"
    assert parse_choice("A looks safe, B does not. Answer: B") == "B"
    assert parse_choice("the answer is a tricky one") is None
    assert parse_choice("") is None
