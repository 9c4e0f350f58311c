"""AI feedback (RLAIF): a feedback model labels pairs of responses against constitutional questions.

For each pair ``(prompt, response_a, response_b)`` :class:`AIFeedback` samples principles
(comparison questions such as "Which response is more harmless?"), asks the feedback model
the multiple-choice question of :func:`alignkit.testbed.formats.judgement_prompt` in both
orders, and turns the answers into a soft label, as in Bai et al. 2022 ("Constitutional AI:
Harmlessness from AI Feedback"):

``logprobs``
    P(A) is the probability of the option token ``A`` normalised over ``A`` and ``B``.
``cot``
    The model first writes its reasoning ending in an answer; the answer is parsed from it
    (where none is stated and the backend gives log-probs, it is asked for after the reasoning
    and read by option log-probs), and the probability is clamped to ``[0.4, 0.6]``, because
    chain-of-thought answers are overconfident.
``parse``
    For backends without log-probs: a short greedy answer is parsed to 1 (A) or 0 (B);
    unparseable answers are counted in :attr:`AIFeedback.stats` and left out.

Position bias is cancelled by averaging the two orders, ``P(a better) = (p_ab + 1 - p_ba) / 2``,
and principles are ensembled by the mean. Every step is one backend call for all pairs.

    feedback = AIFeedback(backend, formats.JUDGEMENT_QUESTIONS, n_principles=2)
    labels = feedback.label([(prompt, response_1, response_2), ...])
    write_preferences("ai_prefs.jsonl", labels)   # loads with alignkit.data.load_preferences
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import ConfigError, UnsupportedError
from alignkit.evaluation.judges import _two_way
from alignkit.evaluation.rundir import write_jsonl
from alignkit.models.base import GenerationConfig, ModelBackend
from alignkit.testbed import formats as F

MODES = ("logprobs", "cot", "parse")
OPTIONS = ("A", "B")
COT_CLAMP = (0.4, 0.6)
COT_INSTRUCTION = "Think it through step by step, then end with 'Answer: A' or 'Answer: B'."
COT_FOLLOW_UP = "So which response is better? Answer A or B."
_ANSWER_RE = re.compile(r"\b(?i:answer\s*(?:is\s*)?[:\-]?\s*\(?(?:response\s+)?)([AB])\b")
_LEAD_RE = re.compile(r"^\W*([AB])\b")

Pair = tuple[str, str, str]


@dataclass
class FeedbackLabel:
    """The AI label of one pair: ``chosen`` is the response the feedback model prefers.

    ``soft_label`` is the probability that ``chosen`` is better (``>= 0.5``), or ``None`` where
    no answer could be read. ``p_ab`` / ``p_ba`` hold, per principle, P(slot A preferred) with
    the input order (``response_a`` in slot A) and with the swapped order; ``None`` marks an
    unparsed answer. ``a_chosen`` says whether ``chosen`` is the pair's first response.
    """

    prompt: str
    chosen: str
    rejected: str
    soft_label: float | None
    principles: list[str]
    p_ab: list[float | None] = field(default_factory=list)
    p_ba: list[float | None] = field(default_factory=list)
    a_chosen: bool = True

    def to_record(self) -> dict[str, Any]:
        """The preference record (standard layout plus ``soft_label`` and ``principles``)."""
        return {
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "soft_label": self.soft_label,
            "principles": list(self.principles),
        }


def _principles(questions: Any) -> list[tuple[str, str]]:
    """``(id, question)`` for a mapping, plain strings, or objects with ``comparison_question``."""
    if isinstance(questions, Mapping):
        items = [(str(k), v) for k, v in questions.items()]
    elif isinstance(questions, str):
        items = [(questions, questions)]
    else:
        items = []
        for q in questions:
            if isinstance(q, str):
                items.append((q, q))
            else:
                text = getattr(q, "comparison_question", None)
                items.append((str(getattr(q, "id", text)), text))
    for pid, text in items:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"principle {pid!r} has no comparison question (a non-empty string)")
    if not items:
        raise ConfigError("AI feedback needs at least one comparison question")
    return items


def parse_choice(text: str) -> str | None:
    """``"A"`` / ``"B"`` from an answer: the last "Answer: X" phrase, else a leading letter."""
    found = _ANSWER_RE.findall(text)
    if found:
        return found[-1].upper()
    lead = _LEAD_RE.match(text)
    return lead.group(1) if lead else None


def clamp(p: float | None, bounds: tuple[float, float] = COT_CLAMP) -> float | None:
    """``p`` clipped to ``bounds`` (``None`` stays ``None``)."""
    return None if p is None else min(max(p, bounds[0]), bounds[1])


class AIFeedback:
    """Label response pairs with a feedback model (see the module docstring)."""

    def __init__(
        self,
        model: ModelBackend | str,
        questions: Any,
        n_principles: int = 1,
        mode: str = "logprobs",
        seed: int = 0,
        cot_max_new_tokens: int = 128,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown AI feedback mode {mode!r}; choose from {', '.join(MODES)}")
        if isinstance(model, str):
            from alignkit.models import load_backend

            model = load_backend(model)
        if mode == "logprobs" and not model.supports_logprobs:
            raise UnsupportedError(
                f"backend {model.name!r} gives no log-probabilities; use mode='parse' or 'cot'"
            )
        self.principles = _principles(questions)
        if not 1 <= n_principles <= len(self.principles):
            raise ConfigError(
                f"n_principles must be between 1 and {len(self.principles)} "
                f"(the number of questions), got {n_principles}"
            )
        self.model, self.mode, self.n_principles = model, mode, n_principles
        self.seed, self.cot_max_new_tokens = seed, cot_max_new_tokens
        self.stats = {"judgements": 0, "unparsed": 0, "unlabelled_pairs": 0}

    def label(self, pairs: Sequence[Pair]) -> list[FeedbackLabel]:
        """One :class:`FeedbackLabel` per pair, in input order."""
        rng = random.Random(self.seed)
        sampled = [rng.sample(self.principles, self.n_principles) for _ in pairs]
        asks: list[tuple[int, str]] = []  # (pair index, principle id), one per question asked
        prompts_ab, prompts_ba = [], []
        for i, ((prompt, a, b), chosen) in enumerate(zip(pairs, sampled, strict=True)):
            for pid, question in chosen:
                asks.append((i, pid))
                prompts_ab.append(F.judgement_prompt(prompt, a, b, question))
                prompts_ba.append(F.judgement_prompt(prompt, b, a, question))
        p_a = self._p_first(prompts_ab + prompts_ba)
        n = len(asks)
        self.stats["judgements"] += 2 * n
        self.stats["unparsed"] += sum(p is None for p in p_a)
        per_pair: list[list[tuple[str, float | None, float | None]]] = [[] for _ in pairs]
        for (i, pid), p_ab, p_ba in zip(asks, p_a[:n], p_a[n:], strict=True):
            per_pair[i].append((pid, p_ab, p_ba))
        return [self._combine(pair, votes) for pair, votes in zip(pairs, per_pair, strict=True)]

    def _p_first(self, prompts: list[str]) -> list[float | None]:
        """P(slot A preferred) per prompt, by the configured mode (one backend call per step)."""
        if self.mode == "logprobs":
            return _two_way(self.model, prompts, OPTIONS)
        if self.mode == "parse":
            config = GenerationConfig(max_new_tokens=8, temperature=0.0)
            answers = self.model.generate(prompts, config)
            return [_as_p(parse_choice(c.text)) for c in answers]
        return self._cot(prompts)

    def _cot(self, prompts: list[str]) -> list[float | None]:
        """Reasoning first, then the answer; probabilities clamped to :data:`COT_CLAMP`."""
        # the instruction goes first, so the question stays the prompt's last line
        asked = [f"{COT_INSTRUCTION}\n{p}" for p in prompts]
        config = GenerationConfig(max_new_tokens=self.cot_max_new_tokens, temperature=0.0)
        reasons = [c.text for c in self.model.generate(asked, config)]
        p_a = [_as_p(parse_choice(r)) for r in reasons]
        missing = [i for i, p in enumerate(p_a) if p is None]
        if missing and self.model.supports_logprobs:
            # no stated answer: ask for it after the reasoning, read by option log-probs
            follow_ups = [
                [
                    {"role": "user", "content": asked[i]},
                    {"role": "assistant", "content": reasons[i]},
                    {"role": "user", "content": COT_FOLLOW_UP},
                ]
                for i in missing
            ]
            for i, p in zip(missing, _two_way(self.model, follow_ups, OPTIONS), strict=True):
                p_a[i] = p
        return [clamp(p) for p in p_a]

    def _combine(self, pair: Pair, votes: list[tuple[str, float | None, float | None]]):
        """Average the two orders per principle, then the principles, into one label."""
        prompt, a, b = pair
        scores = []
        for _, p_ab, p_ba in votes:
            known = [p for p in (p_ab, None if p_ba is None else 1.0 - p_ba) if p is not None]
            if known:
                scores.append(sum(known) / len(known))
        p_a_better = sum(scores) / len(scores) if scores else None
        if p_a_better is None:
            self.stats["unlabelled_pairs"] += 1
        a_chosen = p_a_better is None or p_a_better >= 0.5
        return FeedbackLabel(
            prompt=prompt,
            chosen=a if a_chosen else b,
            rejected=b if a_chosen else a,
            soft_label=None
            if p_a_better is None
            else (p_a_better if a_chosen else 1.0 - p_a_better),
            principles=[pid for pid, _, _ in votes],
            p_ab=[v[1] for v in votes],
            p_ba=[v[2] for v in votes],
            a_chosen=a_chosen,
        )


def _as_p(choice: str | None) -> float | None:
    return None if choice is None else 1.0 if choice == "A" else 0.0


def position_bias(labels: Iterable[FeedbackLabel]) -> dict[str, float]:
    """How much the order of the two responses sways the feedback model.

    ``inconsistent``: share of (pair, principle) judgements where the two orders prefer
    different responses (both pick the same slot). ``first_slot``: share of single-order
    answers that pick slot A (0.5 is unbiased). ``judgements``: the (pair, principle) count
    with both orders answered.
    """
    both, inconsistent, answers, first = 0, 0, 0, 0
    for label in labels:
        for p_ab, p_ba in zip(label.p_ab, label.p_ba, strict=True):
            for p in (p_ab, p_ba):
                if p is not None:
                    answers += 1
                    first += p > 0.5
            if p_ab is not None and p_ba is not None:
                both += 1
                inconsistent += (p_ab > 0.5) == (p_ba > 0.5)
    return {
        "inconsistent": inconsistent / both if both else 0.0,
        "first_slot": first / answers if answers else 0.0,
        "judgements": float(both),
    }


def to_preference_records(labels: Iterable[FeedbackLabel]) -> list[dict[str, Any]]:
    """Preference records of the labelled pairs; pairs without any readable answer are left out."""
    return [label.to_record() for label in labels if label.soft_label is not None]


def write_preferences(path: str | Path, labels: Iterable[FeedbackLabel]) -> int:
    """Write the labels as JSON Lines for ``load_preferences`` / the DPO trainer; returns rows."""
    records = to_preference_records(labels)
    write_jsonl(Path(path), records)
    return len(records)
