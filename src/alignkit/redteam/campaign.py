"""``RedTeaming``: attacks x behaviours against one target, resumable, with caps.

Each round asks every unfinished (attack, behaviour) pair for its next candidates (from the
stored history and an RNG seeded by the pair and the round), sends all of them to the target in
one batched call (:func:`~alignkit.redteam.target.query_target`: concurrent on a server,
batched locally, errors isolated per prompt), scores the replies with the primary judge (the
success decision) and any extra judges, and stores the round in one transaction. A pair is
finished when it succeeds (with ``early_stop``), spends its attempt budget, or its attack has
nothing more to propose. A campaign stops when every pair is finished or a cap (total queries,
wall time) is reached; running it again resumes exactly where the store left off.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError, ConfigError
from alignkit.models.base import GenerationConfig, ModelBackend
from alignkit.progress import make_progress
from alignkit.redteam.base import (
    Attack,
    AttackContext,
    Attempt,
    Behaviour,
    Candidate,
    Judge,
    build_attack,
    build_judge,
    judge_definition,
)
from alignkit.redteam.store import CampaignStore
from alignkit.redteam.target import query_target

AttackSpec = str | Attack | tuple[str, dict]


@dataclass
class CampaignSummary:
    """What one ``run()`` did (this run only) and why it stopped."""

    rounds: int = 0
    attempts: int = 0
    successes: int = 0
    errors: int = 0
    stopped: str = "finished"  # finished | max_queries | max_time
    total_attempts: int = 0  # in the store, earlier runs included
    done: dict[str, int] = field(default_factory=dict)  # finish reason -> pairs


@dataclass
class _Proposal:
    attack: str
    behaviour: Behaviour
    step: int
    index: int
    candidate: Candidate


class RedTeaming:
    """Run attacks on behaviours against ``target`` and keep every attempt in ``store``.

    ``RedTeaming("testbed", ["templates"], "testbed", store="runs/rt/campaign.sqlite").run()``
    ``attacks`` are registry names, ``(name, options)`` pairs or built attacks; ``judge`` is the
    primary judge (a registry name or a Judge), ``extra_judges`` are recorded beside it.
    """

    def __init__(
        self,
        target: str | ModelBackend,
        attacks: Sequence[AttackSpec],
        behaviours: Sequence[Behaviour] | str = "testbed",
        store: str | Path | CampaignStore = "runs/redteam/campaign.sqlite",
        judge: str | Judge = "testbed",
        extra_judges: Sequence[str | Judge] = (),
        judge_options: dict[str, Any] | None = None,
        attacker: Any = None,
        generation: GenerationConfig | None = None,
        max_attempts: int = 50,
        max_queries: int | None = None,
        max_time: float | None = None,
        early_stop: bool = True,
        seed: int = 0,
        n_behaviours: int | None = None,
        progress: bool | None = None,
        attack_behaviours: dict[str, int] | None = None,
    ) -> None:
        self.store = store if isinstance(store, CampaignStore) else CampaignStore(store)
        self.behaviours = _behaviours(behaviours, n_behaviours, seed)
        if not self.behaviours:
            raise ConfigError("the campaign has no behaviours")
        self.target = _backend(target)
        self.seed = seed
        options = judge_options or {}
        self.judge = build_judge(judge, **options) if isinstance(judge, str) else judge
        self.extra_judges = [
            build_judge(j, **options) if isinstance(j, str) else j for j in extra_judges
        ]
        self.threshold = getattr(self.judge, "threshold", 0.5)  # a 1-10 judge may set its own
        self.context = AttackContext(self.target, attacker, self.judge, seed)
        self.attacks = [self._attack(spec) for spec in attacks]
        if not self.attacks:
            raise ConfigError("the campaign has no attacks")
        self.generation = generation or GenerationConfig(max_new_tokens=64, temperature=0.0)
        self.max_attempts = max_attempts
        self.max_queries = max_queries
        self.max_time = max_time
        self.early_stop = early_stop
        self.progress = progress
        self.limits = dict(attack_behaviours or {})
        unknown = sorted(set(self.limits) - {a.meta.name for a in self.attacks})
        if unknown:
            raise ConfigError(f"attack_behaviours: {unknown} are not attacks of this campaign")

    def definitions(self) -> dict[str, dict[str, Any]]:
        """What each judge of the campaign counts as success, and its rate's name (reports)."""
        judges = [self.judge, *self.extra_judges]
        return {j.name: {**judge_definition(j), "primary": i == 0} for i, j in enumerate(judges)}

    def _attack(self, spec: AttackSpec) -> Attack:
        if isinstance(spec, str):
            return build_attack(spec, self.context)
        if isinstance(spec, tuple):
            name, options = spec
            return build_attack(name, self.context, **options)
        return spec

    # ------------------------------------------------------------------ one round

    def _next(self, attack: Attack, behaviour: Behaviour) -> list[_Proposal]:
        name = attack.meta.name
        if self.store.is_done(name, behaviour.id):
            return []
        history = self.store.history(name, behaviour.id)
        finished = self._finished(history)
        if finished is None:
            step = 1 + max(a.step for a in history) if history else 0
            rng = random.Random(f"{self.seed}|{name}|{behaviour.id}|{step}")
            candidates = attack.propose(behaviour, history, rng)
            room = self.max_attempts - len(history)
            if candidates:
                return [
                    _Proposal(name, behaviour, step, i, c) for i, c in enumerate(candidates[:room])
                ]
            finished = "exhausted"
        self.store.mark_done(name, behaviour.id, finished)
        return []

    def _finished(self, history: list[Attempt]) -> str | None:
        if self.early_stop and any(a.success for a in history):
            return "success"
        if len(history) >= self.max_attempts:
            return "budget"
        return None

    def _score(self, judge: Judge, props: list[_Proposal], texts: list[str]) -> list:
        try:
            return judge.judge(
                [p.behaviour for p in props], [p.candidate.prompt for p in props], texts
            )
        except AlignkitError as exc:
            return [f"judge error: {exc.message}"] * len(props)

    def _round(self, proposals: list[_Proposal]) -> list[Attempt]:
        replies = query_target(
            self.target, [p.candidate.prompt for p in proposals], self.generation
        )
        answered = [i for i, r in enumerate(replies) if r.text is not None]
        verdicts: dict[str, list] = {}
        for judge in [self.judge, *self.extra_judges]:
            texts = [replies[i].text for i in answered]
            scores = self._score(judge, [proposals[i] for i in answered], texts) if answered else []
            verdicts[judge.name] = [None] * len(proposals)
            for i, s in zip(answered, scores, strict=True):
                verdicts[judge.name][i] = s
        attempts = []
        for i, (p, reply) in enumerate(zip(proposals, replies, strict=True)):
            scores = {name: v[i] for name, v in verdicts.items()}
            errors = [s for s in scores.values() if isinstance(s, str)]
            scores = {k: (None if isinstance(s, str) else s) for k, s in scores.items()}
            primary = scores.get(self.judge.name)
            attempts.append(
                Attempt(
                    attack=p.attack,
                    behaviour_id=p.behaviour.id,
                    step=p.step,
                    index=p.index,
                    prompt=p.candidate.prompt,
                    response=reply.text,
                    scores=scores,
                    success=primary is not None and primary >= self.threshold,
                    style=p.candidate.style,
                    parent=p.candidate.parent,
                    meta=p.candidate.meta | ({"judge_errors": errors} if errors else {}),
                    error=reply.error,
                    latency_s=reply.latency_s,
                    category=p.behaviour.category,
                )
            )
        return attempts

    # ------------------------------------------------------------------ the loop

    def _targets(self, attack: Attack) -> list[Behaviour]:
        """The behaviours ``attack`` works on: all, or the first N of ``attack_behaviours``."""
        return self.behaviours[: self.limits.get(attack.meta.name)]

    def run(self) -> CampaignSummary:
        """Rounds until every (attack, behaviour) pair is finished or a cap is reached."""
        summary = CampaignSummary()
        self.store.set_meta("judges", self.definitions())
        start = time.monotonic()
        pairs = sum(len(self._targets(a)) for a in self.attacks)
        with _bar(self.progress, pairs) as bar:
            while True:
                proposals = [
                    p for a in self.attacks for b in self._targets(a) for p in self._next(a, b)
                ]
                bar(len(self.store.done()), self.store.count())
                if not proposals:
                    break
                if self.max_queries is not None:
                    proposals = _whole_rounds(proposals, self.max_queries - self.store.count())
                    if not proposals:
                        summary.stopped = "max_queries"
                        break
                attempts = self._round(proposals)
                self.store.add_round(attempts)
                summary.rounds += 1
                summary.attempts += len(attempts)
                summary.successes += sum(a.success for a in attempts)
                summary.errors += sum(a.error is not None for a in attempts)
                if self.max_time is not None and time.monotonic() - start >= self.max_time:
                    summary.stopped = "max_time"
                    break
        summary.total_attempts = self.store.count()
        for reason in self.store.done().values():
            summary.done[reason] = summary.done.get(reason, 0) + 1
        return summary


def _whole_rounds(proposals: list[_Proposal], room: int) -> list[_Proposal]:
    """The longest prefix of whole (attack, behaviour) rounds within ``room`` queries: a round
    is never cut, so a capped campaign resumes exactly as an uncapped one would have run."""
    kept: list[_Proposal] = []
    for _, group in itertools.groupby(proposals, key=lambda p: (p.attack, p.behaviour.id)):
        round_ = list(group)
        if len(kept) + len(round_) > room:
            break
        kept += round_
    return kept


class _bar:
    """A progress bar over (attack, behaviour) pairs finished, with the attempts so far."""

    def __init__(self, show: bool | None, total: int) -> None:
        import sys

        self.show = sys.stderr.isatty() if show is None else show
        self.total = total

    def __enter__(self):
        if not self.show:
            return lambda done, attempts: None
        self.progress = make_progress()
        self.progress.__enter__()
        task = self.progress.add_task("red teaming", total=self.total, info="")
        return lambda done, attempts: self.progress.update(
            task, completed=done, info=f"{attempts} attempts"
        )

    def __exit__(self, *exc) -> None:
        if self.show:
            self.progress.__exit__(*exc)


def _backend(target: str | ModelBackend) -> ModelBackend:
    if not isinstance(target, str):
        return target
    from alignkit.models import load_backend

    return load_backend(target)


def _behaviours(spec: Sequence[Behaviour] | str, n: int | None, seed: int) -> list[Behaviour]:
    if not isinstance(spec, str):
        return list(spec)
    from alignkit.redteam.behaviours import resolve_behaviours

    return resolve_behaviours(spec, n=n, seed=seed)
