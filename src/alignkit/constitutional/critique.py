"""Critique-and-revise loops of Constitutional AI (Bai et al. 2022), batched across prompts.

Every step of every prompt (initial response, critique, revision) runs as one backend call for
all prompts still in play, so the loop is fast on a local model and concurrent on a server.
Each step is recorded; :meth:`CAIRecord.to_dict` gives the columns of the open CAI recipes
(``init_prompt`` ... ``revision_response``, ``messages``, ``chosen``, ``rejected``) plus
``prompt``, ``principle_id``, ``round`` and the full step history.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from alignkit.constitutional.constitution import Constitution, Principle, default_constitution
from alignkit.errors import ConfigError, DataError
from alignkit.evaluation.rundir import write_jsonl
from alignkit.models.base import GenerationConfig, ModelBackend
from alignkit.testbed import formats as F

NO_CHANGE_PHRASES = (
    F.NO_CHANGE,
    "no change is needed",
    "no changes needed",
    "no changes are necessary",
    "nothing needs to change",
)


def is_no_change(critique: str, phrases: Sequence[str] = NO_CHANGE_PHRASES) -> bool:
    """Whether a critique's verdict is that the response needs no change."""
    text = " ".join(critique.lower().split())
    return any(" ".join(p.lower().split()) in text for p in phrases)


def similarity(a: str, b: str) -> float:
    """How alike two responses are, 0..1 (difflib ratio)."""
    return difflib.SequenceMatcher(None, a, b).ratio()


def as_backend(model: ModelBackend | str) -> ModelBackend:
    """A backend, loading a model string (``testbed``, ``hf:PATH``, ``openai:M@URL``) if given."""
    if not isinstance(model, str):
        return model
    from alignkit.models import load_backend

    return load_backend(model)


@dataclass
class CAIStep:
    """One critique (and, unless the response was left alone, one revision) of one prompt."""

    round: int
    principle_id: str
    critic_prompt: str
    critic_response: str
    revision_prompt: str = ""
    revision_response: str = ""
    revised: bool = False
    critiques: list[str] = field(default_factory=list)  # multi-agent: one per critic
    flags: list[bool] = field(default_factory=list)  # multi-agent: which critics flagged


@dataclass
class CAIRecord:
    """The whole history of one prompt: initial response, then one step per round."""

    init_prompt: str
    init_response: str
    steps: list[CAIStep] = field(default_factory=list)
    stop_reason: str = "rounds"

    @property
    def final_response(self) -> str:
        """The latest revision, or the initial response when none was made."""
        for step in reversed(self.steps):
            if step.revised:
                return step.revision_response
        return self.init_response

    @property
    def rounds(self) -> int:
        return len(self.steps)

    def to_dict(self) -> dict:
        """One JSONL row; the top-level critic/revision columns are from the last step."""
        last = self.steps[-1] if self.steps else None
        final = self.final_response
        return {
            "init_prompt": self.init_prompt,
            "init_response": self.init_response,
            "critic_prompt": last.critic_prompt if last else "",
            "critic_response": last.critic_response if last else "",
            "revision_prompt": last.revision_prompt if last else "",
            "revision_response": final,
            "prompt": self.init_prompt,
            "messages": [
                {"role": "user", "content": self.init_prompt},
                {"role": "assistant", "content": final},
            ],
            "chosen": final,
            "rejected": self.init_response,
            "principle_id": last.principle_id if last else "",
            "round": self.rounds,
            "stop_reason": self.stop_reason,
            "steps": [asdict(s) for s in self.steps],
        }


def write_records(path: str | Path, records: Sequence[CAIRecord]) -> Path:
    """Write records as JSONL (``datasets.load_dataset("json", ...)`` and ``load_preferences``)."""
    path = Path(path)
    write_jsonl(path, [record.to_dict() for record in records])
    return path


def _texts(backend: ModelBackend, prompts: list[str], config: GenerationConfig) -> list[str]:
    """One backend call for ``prompts`` (none when empty); completions stripped."""
    if not prompts:
        return []
    return [c.text.strip() for c in backend.generate(prompts, config)]


class ConstitutionalAI:
    """Generate, then ``rounds`` times critique and revise every response under a sampled principle.

    ``generation`` configures the initial responses (sampled by default, so a helpful-only
    model shows its harmful completions); ``critique_generation`` configures critiques and
    revisions (greedy by default). Principles are drawn per prompt index and round from
    ``seed``, so a run is reproducible whatever the batch composition; set
    :attr:`principle_keys` (one stable key per prompt, e.g. its id) to draw them per key
    instead of per position, as a run split into resumable chunks does.
    """

    principle_keys: Sequence[str] | None = None

    def __init__(
        self,
        model: ModelBackend | str,
        constitution: Constitution | None = None,
        rounds: int = 1,
        seed: int = 0,
        generation: GenerationConfig | None = None,
        critique_generation: GenerationConfig | None = None,
    ) -> None:
        if rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {rounds}")
        self.model = as_backend(model)
        self.constitution = constitution or default_constitution()
        self.rounds = rounds
        self.seed = seed
        self.generation = generation or GenerationConfig(temperature=1.0, seed=seed)
        self.critique_generation = critique_generation or GenerationConfig(temperature=0.0)

    # -- building blocks -------------------------------------------------------------------
    def principle(self, index: int, round_: int) -> Principle:
        """The principle for prompt ``index`` in round ``round_`` (1-based), seeded."""
        key = index if self.principle_keys is None else self.principle_keys[index]
        return self.constitution.sample(random.Random(f"{self.seed}:{key}:{round_}"))

    def initial(self, prompts: Sequence[str], responses: Sequence[str] | None) -> list[CAIRecord]:
        prompts = list(prompts)
        if not prompts:
            raise DataError("no prompts to run Constitutional AI on")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise DataError(f"prompt {i}: must be a non-empty string")
        if responses is None:
            responses = _texts(self.model, prompts, self.generation)
        elif len(responses) != len(prompts):
            raise DataError(f"{len(responses)} responses given for {len(prompts)} prompts")
        return [CAIRecord(p, r) for p, r in zip(prompts, responses, strict=True)]

    def critique(
        self, critic: ModelBackend, records: list[CAIRecord], principles: list[Principle]
    ) -> tuple[list[str], list[str]]:
        """Critique prompts and critiques for ``records`` (one call)."""
        prompts = [
            F.critique_prompt(r.init_prompt, r.final_response, p.critique_request)
            for r, p in zip(records, principles, strict=True)
        ]
        return prompts, _texts(critic, prompts, self.critique_generation)

    def revise(
        self, records: list[CAIRecord], critiques: list[str], principles: list[Principle]
    ) -> tuple[list[str], list[str]]:
        """Revision prompts and revisions for ``records`` (one call to the reviser)."""
        prompts = [
            F.revision_prompt(r.init_prompt, r.final_response, c, p.revision_request)
            for r, c, p in zip(records, critiques, principles, strict=True)
        ]
        return prompts, _texts(self.reviser, prompts, self.critique_generation)

    @property
    def reviser(self) -> ModelBackend:
        return self.model

    # -- the loop --------------------------------------------------------------------------
    def step(self, records: list[CAIRecord], indices: list[int], round_: int) -> list[CAIStep]:
        """Critique and revise ``records`` (prompt numbers ``indices``); appends the steps."""
        principles = [self.principle(i, round_) for i in indices]
        critic_prompts, critiques = self.critique(self.model, records, principles)
        revision_prompts, revisions = self.revise(records, critiques, principles)
        steps = []
        for rec, p, cp, c, rp, rv in zip(
            records, principles, critic_prompts, critiques, revision_prompts, revisions, strict=True
        ):
            step = CAIStep(round_, p.id, cp, c, rp, rv, revised=True)
            rec.steps.append(step)
            steps.append(step)
        return steps

    def run(
        self, prompts: Sequence[str], responses: Sequence[str] | None = None
    ) -> list[CAIRecord]:
        """Run the loop; ``responses`` skips generation when initial responses are at hand."""
        records = self.initial(prompts, responses)
        indices = list(range(len(records)))
        for round_ in range(1, self.rounds + 1):
            self.step(records, indices, round_)
        return records


class IterativeConstitutionalAI(ConstitutionalAI):
    """Critique and revise until each prompt converges, at most ``max_rounds`` rounds.

    A prompt stops when its critique's verdict is "no change" (``no_change_phrases``; it is
    then not revised), when its revision is at least ``similarity_threshold`` alike to the
    response it revised, or after ``max_rounds``. Stopped prompts leave later batches.
    """

    def __init__(
        self,
        model: ModelBackend | str,
        constitution: Constitution | None = None,
        max_rounds: int = 4,
        similarity_threshold: float = 0.95,
        no_change_phrases: Sequence[str] = NO_CHANGE_PHRASES,
        seed: int = 0,
        generation: GenerationConfig | None = None,
        critique_generation: GenerationConfig | None = None,
    ) -> None:
        super().__init__(model, constitution, max_rounds, seed, generation, critique_generation)
        if not 0.0 < similarity_threshold <= 1.0:
            raise ConfigError(f"similarity_threshold must be in (0, 1], got {similarity_threshold}")
        self.similarity_threshold = similarity_threshold
        self.no_change_phrases = tuple(no_change_phrases)

    def flagged(self, steps: list[CAIStep]) -> list[bool]:
        """Which critiqued responses need a revision."""
        return [not is_no_change(s.critic_response, self.no_change_phrases) for s in steps]

    def critique_step(
        self, records: list[CAIRecord], indices: list[int], round_: int
    ) -> tuple[list[CAIStep], list[Principle]]:
        """Critique every active record (one call) and append unrevised steps."""
        principles = [self.principle(i, round_) for i in indices]
        critic_prompts, critiques = self.critique(self.model, records, principles)
        steps = [
            CAIStep(round_, p.id, cp, c)
            for p, cp, c in zip(principles, critic_prompts, critiques, strict=True)
        ]
        for rec, s in zip(records, steps, strict=True):
            rec.steps.append(s)
        return steps, principles

    def run(
        self, prompts: Sequence[str], responses: Sequence[str] | None = None
    ) -> list[CAIRecord]:
        records = self.initial(prompts, responses)
        active = list(range(len(records)))
        for round_ in range(1, self.rounds + 1):
            if not active:
                break
            batch = [records[i] for i in active]
            steps, principles = self.critique_step(batch, active, round_)
            to_revise = [k for k, flag in enumerate(self.flagged(steps)) if flag]
            still = []
            revising = set(to_revise)
            for k, rec in enumerate(batch):
                if k not in revising:
                    rec.stop_reason = "no_change"
            before = [batch[k].final_response for k in to_revise]
            rev_prompts, revisions = self.revise(
                [batch[k] for k in to_revise],
                [steps[k].critic_response for k in to_revise],
                [principles[k] for k in to_revise],
            )
            for k, old, rp, rv in zip(to_revise, before, rev_prompts, revisions, strict=True):
                steps[k].revision_prompt, steps[k].revision_response = rp, rv
                steps[k].revised = True
                if similarity(old, rv) >= self.similarity_threshold:
                    batch[k].stop_reason = "converged"
                elif round_ == self.rounds:
                    batch[k].stop_reason = "max_rounds"
                else:
                    still.append(active[k])
            active = still
        return records


class MultiAgentConstitutionalAI(ConstitutionalAI):
    """Separate generator, critics and reviser (any backends), with an aggregation rule.

    Each critic critiques every response under the round's principle (one call per critic);
    a critic flags a response unless its verdict is "no change". ``aggregation="union"``
    revises when any critic flags, ``"majority"`` when more than half do. The reviser sees the
    flagging critics' critiques joined. Unflagged responses are kept as they are.
    """

    def __init__(
        self,
        generator: ModelBackend | str,
        critics: Sequence[ModelBackend | str],
        reviser: ModelBackend | str,
        constitution: Constitution | None = None,
        aggregation: Literal["union", "majority"] = "union",
        rounds: int = 1,
        no_change_phrases: Sequence[str] = NO_CHANGE_PHRASES,
        seed: int = 0,
        generation: GenerationConfig | None = None,
        critique_generation: GenerationConfig | None = None,
    ) -> None:
        super().__init__(generator, constitution, rounds, seed, generation, critique_generation)
        if not critics:
            raise ConfigError("MultiAgentConstitutionalAI needs at least one critic")
        if aggregation not in ("union", "majority"):
            raise ConfigError(f"aggregation must be 'union' or 'majority', got {aggregation!r}")
        self.critics = [as_backend(c) for c in critics]
        self._reviser = as_backend(reviser)
        self.aggregation = aggregation
        self.no_change_phrases = tuple(no_change_phrases)

    @property
    def reviser(self) -> ModelBackend:
        return self._reviser

    def decide(self, flags: Sequence[bool]) -> bool:
        """Whether the critics' flags call for a revision under the aggregation rule."""
        if self.aggregation == "union":
            return any(flags)
        return sum(flags) * 2 > len(flags)

    def step(self, records: list[CAIRecord], indices: list[int], round_: int) -> list[CAIStep]:
        principles = [self.principle(i, round_) for i in indices]
        per_critic = [self.critique(c, records, principles) for c in self.critics]
        critic_prompts = per_critic[0][0]
        steps = []
        for k, p in enumerate(principles):
            critiques = [texts[k] for _, texts in per_critic]
            flags = [not is_no_change(c, self.no_change_phrases) for c in critiques]
            joined = "\n".join(c for c, f in zip(critiques, flags, strict=True) if f)
            step = CAIStep(round_, p.id, critic_prompts[k], joined or critiques[0])
            step.critiques, step.flags = critiques, flags
            steps.append(step)
        chosen = [k for k, s in enumerate(steps) if self.decide(s.flags)]
        rev_prompts, revisions = self.revise(
            [records[k] for k in chosen],
            [steps[k].critic_response for k in chosen],
            [principles[k] for k in chosen],
        )
        for k, rp, rv in zip(chosen, rev_prompts, revisions, strict=True):
            steps[k].revision_prompt, steps[k].revision_response = rp, rv
            steps[k].revised = True
        for rec, s in zip(records, steps, strict=True):
            rec.steps.append(s)
            if not s.revised:
                rec.stop_reason = "no_change"
        return steps
