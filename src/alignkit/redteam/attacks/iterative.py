"""Iterative attacker attacks: PAIR (parallel refinement streams) and TAP (a pruned tree).

Both ask an attacker (a :class:`~alignkit.redteam.mutators.Mutator`: an attacker model, or
the rule-based mutator when no model can play attacker, as on the testbed) for new prompts,
given the target's replies and the campaign judge's scores so far. They keep no state of
their own: every round is derived from the stored history of the behaviour (each attempt
carries its stream / tree depth in ``meta`` and its parent as an index into the history), so
a campaign that is killed and rerun proposes exactly the same round again.

Options shared by both: ``max_queries`` (target queries per behaviour), ``attacker``
(``"rules"`` or a model string; default: the campaign's attacker, else the rule-based one),
``judge_name`` (the score to read from ``Attempt.scores``; default the campaign's primary
judge). An attack finishes a behaviour on its first success.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, ClassVar

from alignkit.errors import ConfigError
from alignkit.redteam.base import (
    AttackContext,
    AttackMeta,
    Attempt,
    Behaviour,
    Candidate,
    register_attack,
)
from alignkit.redteam.mutators import (
    MutationRequest,
    Mutator,
    Parent,
    ask_on_topic,
    build_mutator,
    goal_recoverable,
    mutate_all,
)


def _positive(name: str, **values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} attack: {key} must be a whole number >= 1, got {value!r}")


class _Iterative:
    """What PAIR and TAP share: the attacker, scores from the history, parent chains."""

    def __init__(self, context: AttackContext | None, attacker: Any, judge_name: str | None):
        self.context = context or AttackContext()
        spec = attacker if attacker is not None else self.context.attacker
        self.mutator: Mutator = build_mutator("rules" if spec is None else spec)
        judge = self.context.judge
        self.judge_name = judge_name or getattr(judge, "name", None)

    def score(self, attempt: Attempt) -> float | None:
        """The attempt's score from the primary judge (success counts as 1 without one)."""
        value = attempt.scores.get(self.judge_name) if self.judge_name else None
        if value is None and self.judge_name is None:
            known = [s for s in attempt.scores.values() if s is not None]
            value = max(known) if known else None
        if value is None and attempt.success:
            return 1.0
        return value

    def chain(self, history: Sequence[Attempt], index: int) -> list[Parent]:
        """The attempts from the root to ``history[index]`` (oldest first), as parents."""
        out: list[Parent] = []
        seen: set[int] = set()
        at: int | None = index
        while at is not None and 0 <= at < len(history) and at not in seen:
            seen.add(at)
            a = history[at]
            out.append((a.prompt, a.response, self.score(a)))
            at = a.parent
        return out[::-1]

    def finished(self, history: Sequence[Attempt], rounds: int, max_queries: int) -> bool:
        last_step = max((a.step for a in history), default=-1)
        return (
            any(a.success for a in history)
            or len(history) >= max_queries
            or last_step + 1 >= rounds
        )


@register_attack
class PAIRAttack(_Iterative):
    """PAIR: ``n_streams`` independent refinement streams of ``n_iterations`` rounds each.

    Round 0 asks the attacker for one prompt per stream; each later round refines every
    stream's last attempt, showing the attacker that stream's prompts, replies and scores.
    """

    meta: ClassVar[AttackMeta] = AttackMeta(
        name="pair",
        family="iterative",
        description=(
            "Prompt Automatic Iterative Refinement: an attacker refines its prompt over "
            "several rounds in parallel streams, from the target's replies and the judge's "
            "scores."
        ),
        paper=(
            'Chao et al. 2023, "Jailbreaking Black Box Large Language Models in Twenty Queries"'
        ),
        needs=("attacker",),
    )

    def __init__(
        self,
        context: AttackContext | None = None,
        n_streams: int = 4,
        n_iterations: int = 5,
        max_queries: int = 20,
        attacker: Any = None,
        judge_name: str | None = None,
    ) -> None:
        _positive("pair", n_streams=n_streams, n_iterations=n_iterations, max_queries=max_queries)
        super().__init__(context, attacker, judge_name)
        self.n_streams, self.n_iterations, self.max_queries = n_streams, n_iterations, max_queries

    def propose(
        self, behaviour: Behaviour, history: Sequence[Attempt], rng: random.Random
    ) -> list[Candidate]:
        if self.finished(history, self.n_iterations, self.max_queries):
            return []
        step = 1 + max((a.step for a in history), default=-1)
        last: dict[int, int] = {}  # stream -> index in history of its latest attempt
        for i, a in enumerate(history):
            last[a.meta.get("stream", a.index)] = i
        streams = list(range(self.n_streams))
        if not history:  # one request for all first prompts, so they differ from each other
            first = mutate_all(
                self.mutator, [MutationRequest(behaviour.goal, [], n=len(streams))], rng
            )
            outputs = [first[0][s : s + 1] for s in streams]
        else:
            requests = [
                MutationRequest(behaviour.goal, self.chain(history, last[s]) if s in last else [])
                for s in streams
            ]
            outputs = mutate_all(self.mutator, requests, rng)
        room = self.max_queries - len(history)
        candidates = [
            Candidate(
                prompts[0],
                parent=last.get(s),
                meta={"stream": s, "depth": step, "attacker": self.mutator.name},
            )
            for s, prompts in zip(streams, outputs, strict=True)
            if prompts
        ]
        return candidates[:room]


@register_attack
class TAPAttack(_Iterative):
    """TAP: a tree of attack prompts, grown by the attacker and pruned twice per level.

    Each level, every kept leaf gets ``branching_factor`` children from the attacker;
    children that no longer ask for the goal are pruned before they reach the target
    (``prune_off_topic``); after the judge has scored them, only the ``width`` best leaves
    grow in the next level, up to ``depth`` levels. The on-topic check asks the campaign's
    LLM judge (or an attacker model) yes/no; with neither, a prompt is on topic when the
    goal can still be recovered from it (verbatim or through a converter).
    """

    meta: ClassVar[AttackMeta] = AttackMeta(
        name="tap",
        family="iterative",
        description=(
            "Tree of Attacks with Pruning: an attacker branches each prompt into several "
            "refinements, drops off-topic ones before querying, and keeps only the "
            "best-scored leaves at each depth."
        ),
        paper=(
            'Mehrotra et al. 2023, "Tree of Attacks: Jailbreaking Black-Box LLMs Automatically"'
        ),
        needs=("attacker",),
    )

    def __init__(
        self,
        context: AttackContext | None = None,
        branching_factor: int = 3,
        width: int = 4,
        depth: int = 5,
        max_queries: int = 50,
        prune_off_topic: bool = True,
        attacker: Any = None,
        judge_name: str | None = None,
    ) -> None:
        _positive(
            "tap", branching_factor=branching_factor, width=width, depth=depth,
            max_queries=max_queries,
        )  # fmt: skip
        super().__init__(context, attacker, judge_name)
        self.branching_factor, self.width, self.depth = branching_factor, width, depth
        self.max_queries, self.prune_off_topic = max_queries, prune_off_topic

    def leaves(self, history: Sequence[Attempt]) -> list[int | None]:
        """The history indices that grow next: the root (None) on the first level, then the
        ``width`` best-scored attempts of the latest level (answered before failed queries,
        ties: earlier first)."""
        if not history:
            return [None]
        step = max(a.step for a in history)
        level = [i for i, a in enumerate(history) if a.step == step]
        level.sort(key=lambda i: (history[i].response is None, -(self.score(history[i]) or 0), i))
        return level[: self.width]

    def on_topic(self, goal: str, prompts: list[str]) -> list[bool]:
        """TAP's first pruning: does each prompt still ask for ``goal``?"""
        judge_backend = getattr(self.context.judge, "backend", None)
        if judge_backend is not None and getattr(self.context.judge, "scale", None):
            return ask_on_topic(judge_backend, goal, prompts)
        checker = getattr(self.mutator, "on_topic", None)
        if checker is not None:
            return checker(goal, prompts)
        return [goal_recoverable(goal, p) for p in prompts]

    def propose(
        self, behaviour: Behaviour, history: Sequence[Attempt], rng: random.Random
    ) -> list[Candidate]:
        if self.finished(history, self.depth, self.max_queries):
            return []
        step = 1 + max((a.step for a in history), default=-1)
        leaves = self.leaves(history)
        requests = [
            MutationRequest(
                behaviour.goal,
                [] if leaf is None else self.chain(history, leaf),
                n=self.branching_factor,
            )
            for leaf in leaves
        ]
        children = [
            (leaf, prompt)
            for leaf, prompts in zip(leaves, mutate_all(self.mutator, requests, rng), strict=True)
            for prompt in prompts
        ]
        if self.prune_off_topic and children:
            keep = self.on_topic(behaviour.goal, [p for _, p in children])
            pruned = len(children) - sum(keep)
            children = [c for c, k in zip(children, keep, strict=True) if k]
        else:
            pruned = 0
        room = self.max_queries - len(history)
        return [
            Candidate(
                prompt,
                parent=leaf,
                meta={
                    "depth": step,
                    "branch": b,
                    "pruned_off_topic": pruned,
                    "attacker": self.mutator.name,
                },
            )
            for b, (leaf, prompt) in enumerate(children[:room])
        ]
