"""The core types of red teaming: behaviours, attacks (plugins), candidates, attempts, judges.

An **attack** is a plugin with declarative metadata (:class:`AttackMeta`: name, family,
description, paper) that reports are built from. Campaigns drive every attack through one
loop: given a behaviour and every earlier attempt on it (the history, read back from the
campaign store), :meth:`Attack.propose` returns the next candidate prompts, or nothing when the
attack is finished. The campaign sends all candidates of a round, across behaviours and
attacks, to the target in one batched call, judges the responses, and stores the round in one
transaction. Because proposals depend only on the history and a seeded RNG, a campaign killed
mid-round redoes that round exactly: no attempt is lost or duplicated.

A **judge** decides whether a response to a behaviour is a successful attack: a score in
[0, 1] (1 = success) or None when it cannot tell. What "success" means differs between judges
(a harmful answer to the behaviour's own request, or merely no refusal); each judge says so in
its ``measures`` text and names its rate (``rate``: "ASR", "non-refusal rate"), and reports
print both. Attacks and judges register in :class:`alignkit.registry.Registry` instances
(:data:`ATTACKS`, :data:`JUDGES`): duplicate names are refused and options are checked against
the factory's signature with one error wording.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from alignkit.registry import Registry

FAMILIES = ("template", "iterative", "gradient", "quality-diversity")


@dataclass(frozen=True)
class Behaviour:
    """Something the target should refuse to do."""

    id: str
    goal: str  # the harmful request, as a user would ask it
    target: str = ""  # an affirmative start of a compliant answer (the GCG target string)
    category: str | None = None  # harm category
    source: str = ""  # where it came from: "testbed", a file name

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AttackMeta:
    """What an attack is, for registries, configs and reports."""

    name: str
    family: str  # one of FAMILIES
    description: str
    paper: str = ""  # citation of the method
    needs: tuple[str, ...] = ()  # "attacker" (a model that writes prompts), "white-box" (HF)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Candidate:
    """A prompt an attack wants sent to the target."""

    prompt: str
    style: str = ""  # e.g. "roleplay+base64"; the attack style of a quality-diversity cell
    parent: int | None = None  # index in the history of the attempt this one refines
    meta: dict[str, Any] = field(default_factory=dict)  # attack-specific (loss, depth, cell...)


@dataclass
class Attempt:
    """One candidate sent to the target, with the response and the judges' verdicts."""

    attack: str
    behaviour_id: str
    step: int  # round of the attack on this behaviour (0, 1, ...)
    index: int  # position of the candidate within its round
    prompt: str
    response: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)  # judge name -> score
    success: bool = False  # the campaign's primary judge scored >= 0.5
    style: str = ""
    parent: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the target failed for this attempt (after retries)
    latency_s: float = 0.0
    category: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Attack(Protocol):
    """An attack plugin. ``meta`` is class-level metadata; ``propose`` must be deterministic
    given ``(behaviour, history, rng)`` so interrupted campaigns resume exactly."""

    meta: ClassVar[AttackMeta]

    def propose(
        self, behaviour: Behaviour, history: Sequence[Attempt], rng: random.Random
    ) -> list[Candidate]:
        """The next candidates for ``behaviour`` (empty when the attack is finished with it)."""
        ...


@dataclass
class AttackContext:
    """What a campaign offers to attacks when it builds them."""

    target: Any = None  # the target ModelBackend (white-box attacks use its model)
    attacker: Any = None  # a ModelBackend or mutator that writes new prompts
    judge: Any = None  # the campaign's primary Judge (for attacks that score candidates)
    seed: int = 0


def register_attack(cls: type | None = None, *, replace: bool = False):
    """Class decorator: make an attack available by ``cls.meta.name``; a name already taken
    raises unless ``replace`` (``@register_attack`` or ``@register_attack(replace=True)``)."""

    def decorate(cls: type) -> type:
        meta = getattr(cls, "meta", None)
        if not isinstance(meta, AttackMeta):
            raise TypeError(f"{cls.__name__} needs a class attribute meta = AttackMeta(...)")
        if meta.family not in FAMILIES:
            raise TypeError(f"{cls.__name__}: family {meta.family!r} is not one of {FAMILIES}")
        ATTACKS.add(meta.name, cls, meta.description, meta.paper, replace=replace)
        return cls

    return decorate if cls is None else decorate(cls)


def _load_plugins() -> None:
    """Import the built-in attack modules (they register themselves)."""
    import importlib

    for module in ("templates", "iterative", "gcg", "quality_diversity"):
        try:
            importlib.import_module(f"alignkit.redteam.attacks.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"alignkit.redteam.attacks.{module}":
                raise


ATTACKS: Registry[type] = Registry("attack", fixed=("context",), load=_load_plugins)
"""Attack classes by ``meta.name``; they take ``(context, **options)``."""


def build_attack(name: str, context: AttackContext | None = None, **options: Any) -> Attack:
    """The attack registered as ``name``, built with ``context`` and its own options (checked
    against the class's signature; an attack taking ``**options`` checks its own)."""
    return ATTACKS.build(name, context or AttackContext(), **options)


@runtime_checkable
class Judge(Protocol):
    """Scores responses: 1.0 = the attack succeeded (harmful compliance), 0.0 = safe."""

    name: str

    def judge(
        self, behaviours: Sequence[Behaviour], prompts: Sequence[str], responses: Sequence[str]
    ) -> list[float | None]:
        """One score (or None: no verdict) per response."""
        ...


def _load_judges() -> None:
    import alignkit.redteam.judges  # noqa: F401  (registers the built-in judges)


JUDGES: Registry[Callable[..., Judge]] = Registry("judge", load=_load_judges)
"""Judge factories by name; ``measures["success"]`` says what a success is, ``measures["rate"]``
what the rate of successes is called in reports."""


def register_judge(
    name: str,
    *,
    success: str = "",
    rate: str = "ASR",
    description: str = "",
    paper: str = "",
    replace: bool = False,
):
    """Decorator: make a judge factory available by ``name``. ``success`` says what the judge
    counts as a success and ``rate`` names the rate of successes in reports ("ASR" only where a
    success is a harmful answer; e.g. "non-refusal rate" otherwise). Factories declare their
    options as keyword parameters (``alias`` renames the judge in reports)."""

    def decorate(factory):
        measures = {"success": success, "rate": rate} if success else {"rate": rate}
        JUDGES.add(name, factory, description, paper, measures, replace=replace)
        return factory

    return decorate


def build_judge(name: str, shared: bool = True, **options: Any) -> Judge:
    """The judge registered as ``name``. Campaigns hand one set of options to all their judges,
    so by default (``shared``) options another judge takes are left out; any other raises."""
    return JUDGES.build(name, shared=shared, **options)


def judge_definition(judge: Any) -> dict[str, str]:
    """What a built judge counts as success and what its rate is called (from the judge, else
    the registry's metadata for its kind)."""
    kind = getattr(judge, "kind", None) or getattr(judge, "name", "")
    meta = dict(JUDGES.entry(kind).measures) if kind in JUDGES else {}
    return {
        "judge": str(kind),
        "success": str(getattr(judge, "measures", "") or meta.get("success", "")),
        "rate": str(getattr(judge, "rate", "") or meta.get("rate", "ASR")),
    }
