"""``RedTeaming``: attacks x behaviours against one target, resumable, with caps.

Each round asks every unfinished (attack, behaviour) pair for its next candidates (from the
stored history and an RNG seeded by the pair and the round). Candidates are sent to the target
in batched calls (:func:`~alignkit.redteam.target.query_target`: concurrent on a server,
batched locally, errors isolated per prompt), the replies are scored with the primary judge (the
success decision) and any extra judges, and the attempts are stored in chunks as the round goes:
a chunk is flushed once ``chunk_size`` candidates are waiting or ``flush_seconds`` have passed,
and a white-box attack's pair (GCG: minutes of optimisation) is flushed on its own, so a killed
campaign loses at most one chunk. A pair's proposals depend only on its own history, so where a
round is cut into chunks changes nothing that is stored; the pairs of an interrupted round that
were stored are remembered (meta ``round_in_progress``, written with each chunk), and a rerun
first finishes that round with the other pairs: the rows are those of an uninterrupted run,
query caps included.

An attempt the target failed with an error that may go away (429, 5xx, no connection: after
the backend's own retries) holds its pair back: the attack is not asked for more candidates
until the attempt has an answer, so the history an attack sees, and everything it proposes
from it, is what a fault-free run would have. Such an attempt is sent again on the next round,
at most ``max_tries`` times per run in all (a rerun gives it ``max_tries`` more); the store
counts its tries. Errors that would repeat (a prompt the server rejects, a local model error)
are final and count as a try without a reply, as before. ``max_queries`` counts stored
attempts (sending one again adds none); as a held-back pair sits out rounds, a capped
campaign with faults may stop at another pair than a fault-free one would.

A pair is finished when it succeeds (with ``early_stop``), spends its attempt budget, or its
attack has nothing more to propose. A campaign stops when every pair is finished or a cap
(total queries, wall time: checked after each chunk) is reached, or when only pairs held back
by errors are left (``stopped="errored"``); running it again resumes exactly where the store
left off.
"""

from __future__ import annotations

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
from alignkit.redteam.behaviours import default_judge
from alignkit.redteam.store import CampaignStore
from alignkit.redteam.target import query_target

AttackSpec = str | Attack | tuple[str, dict]


ROUND_KEY = "round_in_progress"
"""Store meta: the (attack, behaviour) pairs of the unfinished round that are stored."""


@dataclass
class CampaignSummary:
    """What one ``run()`` did (this run only) and why it stopped."""

    rounds: int = 0
    attempts: int = 0  # new attempts stored
    successes: int = 0  # successes among the attempts sent (new and retried)
    errors: int = 0  # attempts sent (new and retried) that the target failed
    retried: int = 0  # errored attempts of earlier rounds or runs sent again
    recovered: int = 0  # ... of which got an answer
    stopped: str = "finished"  # finished | max_queries | max_time | errored
    total_attempts: int = 0  # in the store, earlier runs included
    errored: int = 0  # errored attempts in the store
    pending: int = 0  # ... of which may go away: a rerun sends them again
    done: dict[str, int] = field(default_factory=dict)  # finish reason -> pairs


@dataclass
class _Proposal:
    attack: str
    behaviour: Behaviour
    step: int
    index: int
    candidate: Candidate
    retry: bool = False  # sends a stored errored attempt again

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.attack, self.behaviour.id, self.step, self.index)


class RedTeaming:
    """Run attacks on behaviours against ``target`` and keep every attempt in ``store``.

    ``RedTeaming("testbed", ["templates"], "testbed", store="runs/rt/campaign.sqlite").run()``
    ``attacks`` are registry names, ``(name, options)`` pairs or built attacks; ``judge`` is the
    primary judge (a registry name or a Judge), ``extra_judges`` are recorded beside it.
    ``max_tries``: sends per run of an attempt the target failed with an error that may go
    away; ``chunk_size`` / ``flush_seconds``: how many candidates, or how many seconds, make a
    chunk that is queried, judged and stored before the round goes on.
    """

    def __init__(
        self,
        target: str | ModelBackend,
        attacks: Sequence[AttackSpec],
        behaviours: Sequence[Behaviour] | str = "testbed",
        store: str | Path | CampaignStore = "runs/redteam/campaign.sqlite",
        judge: str | Judge | None = None,
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
        max_tries: int = 3,
        chunk_size: int = 64,
        flush_seconds: float = 10.0,
    ) -> None:
        if max_tries < 1 or chunk_size < 1:
            raise ConfigError("max_tries and chunk_size must be at least 1")
        self.store = store if isinstance(store, CampaignStore) else CampaignStore(store)
        self.behaviours = _behaviours(behaviours, n_behaviours, seed)
        if not self.behaviours:
            raise ConfigError("the campaign has no behaviours")
        self.target = _backend(target)
        self.seed = seed
        options = judge_options or {}
        judge = default_judge(self.behaviours) if judge is None else judge
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
        self.max_tries = max_tries
        self.chunk_size = chunk_size
        self.flush_seconds = flush_seconds
        self._tries: dict[tuple[str, str, int, int], int] = {}  # sends in this run
        self._waiting: set[tuple[str, str]] = set()  # pairs held back by errors, no tries left
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
        """The pair's next candidates: its errored attempts to send again if it has any (the
        attack waits for their answers), else what the attack proposes from the history."""
        name = attack.meta.name
        errored = self.store.retryable(name, behaviour.id)
        if errored:
            return self._retries(name, behaviour, errored)
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

    def _retries(self, name: str, behaviour: Behaviour, errored: list[Attempt]) -> list[_Proposal]:
        """Errored attempts sent again, as they were proposed (those with tries left)."""
        out = []
        for a in errored:
            if self._tries.get((name, behaviour.id, a.step, a.index), 0) >= self.max_tries:
                self._waiting.add((name, behaviour.id))
                continue
            meta = {k: v for k, v in a.meta.items() if k != "judge_errors"}
            candidate = Candidate(a.prompt, a.style, a.parent, meta)
            out.append(_Proposal(name, behaviour, a.step, a.index, candidate, retry=True))
        return out

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

    def _query(self, proposals: list[_Proposal]) -> tuple[list[Attempt], list[bool]]:
        """Send, judge and build the attempts of ``proposals``, with their errors' transience."""
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
        return attempts, [r.transient for r in replies]

    # ------------------------------------------------------------------ the loop

    def _targets(self, attack: Attack) -> list[Behaviour]:
        """The behaviours ``attack`` works on: all, or the first N of ``attack_behaviours``."""
        return self.behaviours[: self.limits.get(attack.meta.name)]

    def run(self) -> CampaignSummary:
        """Rounds until every (attack, behaviour) pair is finished or a cap is reached."""
        summary = CampaignSummary()
        self.store.set_meta("judges", self.definitions())
        self._tries.clear()
        start = time.monotonic()
        pairs = sum(len(self._targets(a)) for a in self.attacks)
        stored = {tuple(p) for p in self.store.get_meta(ROUND_KEY) or []}
        with _bar(self.progress, pairs) as bar:
            while True:
                stop = _Round(self, summary, bar, start, stored).run()
                stored = set()
                if stop is not None:
                    summary.stopped = stop
                    break
        summary.total_attempts = self.store.count()
        errored = self.store.errored()
        summary.errored, summary.pending = errored["errored"], errored["transient"]
        for reason in self.store.done().values():
            summary.done[reason] = summary.done.get(reason, 0) + 1
        return summary


class _Round:
    """One round of a campaign: every pair's next candidates, queried, judged and stored in
    chunks. ``stored``: pairs of this round that an interrupted run already stored."""

    def __init__(self, campaign: RedTeaming, summary: CampaignSummary, bar, start, stored):
        self.c, self.summary, self.bar, self.start = campaign, summary, bar, start
        self.skip = stored
        self.flushed: list[tuple[str, str]] = sorted(stored)  # pairs of this round stored
        self.pending: list[_Proposal] = []
        self.last_flush = time.monotonic()

    def run(self) -> str | None:
        """Play the round; why the campaign stops (None: go on to the next round)."""
        c = self.c
        c._waiting.clear()
        count = c.store.count()
        self.bar(len(c.store.done()), count)
        room = None if c.max_queries is None else c.max_queries - count
        proposed = cut = False
        kept = 0  # new attempts of this run's part of the round (room counts the stored part)
        for attack in c.attacks:
            slow = "white-box" in attack.meta.needs  # minutes per pair: store it on its own
            for behaviour in c._targets(attack):
                if (attack.meta.name, behaviour.id) in self.skip:
                    continue
                if slow and self.pending and self._flush():
                    return "max_time"
                proposals = c._next(attack, behaviour)
                proposed |= bool(proposals)
                new = sum(not p.retry for p in proposals)
                if new and (cut or (room is not None and kept + new > room)):
                    # a pair's round is never cut, and the round stops at the first pair that
                    # does not fit: a capped campaign resumes as an uncapped one would run
                    cut = True
                    proposals = [p for p in proposals if p.retry]
                kept += new if not cut else 0
                self.pending += proposals
                due = len(self.pending) >= c.chunk_size
                due |= time.monotonic() - self.last_flush >= c.flush_seconds
                if self.pending and (slow or due) and self._flush():
                    return "max_time"
        if self._flush(last=True):
            return "max_time"
        if len(self.flushed) > len(self.skip):  # this run stored some of the round
            self.summary.rounds += 1
            return None
        if self.skip:  # an interrupted run stored all of the round that fits
            return None
        if proposed:  # nothing fits under max_queries
            return "max_queries"
        return "errored" if c._waiting else "finished"

    def _flush(self, last: bool = False) -> bool:
        """Query, judge and store the waiting candidates (with the round's progress, cleared
        after the round's last chunk); True when the campaign's time is up."""
        c, proposals = self.c, self.pending
        self.pending = []
        if proposals:
            attempts, transient = c._query(proposals)
            for p in proposals:
                pair = (p.attack, p.behaviour.id)
                if pair not in self.flushed:
                    self.flushed.append(pair)
            meta = {ROUND_KEY: [] if last else [list(p) for p in self.flushed]}
            c.store.add_round(attempts, transient, meta=meta)
            self._count(proposals, attempts)
            self.bar(len(c.store.done()), c.store.count())
        elif last:
            c.store.set_meta(ROUND_KEY, [])
        self.last_flush = time.monotonic()
        return c.max_time is not None and time.monotonic() - self.start >= c.max_time

    def _count(self, proposals: list[_Proposal], attempts: list[Attempt]) -> None:
        s = self.summary
        for p, a in zip(proposals, attempts, strict=True):
            self.c._tries[p.key] = self.c._tries.get(p.key, 0) + 1
            s.attempts += not p.retry
            s.retried += p.retry
            s.recovered += p.retry and a.error is None
            s.successes += a.success
            s.errors += a.error is not None


class _bar:
    """A progress bar over (attack, behaviour) pairs finished, with the attempts so far."""

    def __init__(self, show: bool | None, total: int) -> None:
        self.show = True if show is None else show  # plain lines when not on a terminal
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
